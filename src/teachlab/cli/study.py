"""`teachlab study …`: create, list and inspect studies."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from teachlab.cli.common import parse_sets, table

app = typer.Typer(help="Create, list and inspect studies.", no_args_is_help=True)


@app.command("create")
def study_create(
    name: Annotated[str, typer.Argument(help="A short unique name.")],
    task: Annotated[str, typer.Option(help="bigbench:<name>, upload:<name> or file:<path>.")],
    teacher: Annotated[str | None, typer.Option(help="Teacher model reference.")] = None,
    student: Annotated[str | None, typer.Option(help="Student model reference.")] = None,
    backend: Annotated[str, typer.Option(help="transformers, openai or vllm.")] = "transformers",
    seed: Annotated[int, typer.Option(help="Seed for splits, sampling and training.")] = 0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A study setting, key=value (repeatable).")
    ] = None,
) -> None:
    """Create a study.

    Example: teachlab study create dates --task bigbench:date_understanding --set n_questions=16
    """
    from teachlab.studies import create_study

    study = create_study(
        name,
        task,
        teacher=teacher,
        student=student,
        backend=backend,
        seed=seed,
        config=parse_sets(set_),
    )
    typer.echo(f"Created study #{study.id} {study.name!r} on {study.task_ref}")


@app.command("list")
def study_list() -> None:
    """List studies.

    Example: teachlab study list
    """
    from teachlab.studies import list_studies

    rows = [s.__dict__ for s in list_studies()]
    columns = ["id", "name", "task_ref", "teacher", "student", "rounds", "drafts", "pairs"]
    typer.echo(table(rows, [*columns, "last_run"]))


@app.command("show")
def study_show(study: Annotated[str, typer.Argument(help="Study id or name.")]) -> None:
    """Show a study's configuration, splits and rounds.

    Example: teachlab study show demo
    """
    from teachlab.rounds import rounds, row_id
    from teachlab.studies import get_study

    s = get_study(study)
    info = {
        "id": s.id,
        "name": s.name,
        "task": s.task_ref,
        "teacher": s.teacher,
        "student": s.student,
        "backend": s.backend,
        "seed": s.seed,
        "splits": {k: (len(v) if isinstance(v, list) else v) for k, v in s.splits.items()},
        "config": s.config,
        "rounds": [
            {
                "index": r.index,
                "teacher_adapter": r.teacher_adapter,
                "student_adapter": r.student_adapter,
                "status": r.status,
            }
            for r in rounds(row_id(s))
        ],
    }
    typer.echo(json.dumps(info, indent=2, default=str))
