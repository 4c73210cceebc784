"""The `teachlab` command line: serve the app, fetch models and data, manage studies and runs.

Errors from TeachLab print one clear line and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Annotated, Any

import typer

from teachlab.errors import TeachlabError

app = typer.Typer(
    help="TeachLab: teacher drafts, student scores, you review, DPO aligns, SFT distils.\n\n"
    "Start with `teachlab data fetch`, `teachlab models fetch`, then `teachlab serve` "
    "or `teachlab demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Bundled and cached models.", no_args_is_help=True)
data_app = typer.Typer(help="Task data (BIG-bench, uploads).", no_args_is_help=True)
study_app = typer.Typer(help="Create, list and inspect studies.", no_args_is_help=True)
round_app = typer.Typer(help="Run a whole teaching round.", no_args_is_help=True)
run_app = typer.Typer(help="Runs (jobs): submit, watch, cancel, resume.", no_args_is_help=True)


@app.callback()
def _prepare() -> None:
    """Every command sees an up-to-date study database (migrated in place when older)."""
    from teachlab.db import init_db

    init_db()


app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(study_app, name="study")
app.add_typer(round_app, name="round")
app.add_typer(run_app, name="run")


def _mount_export() -> None:
    from teachlab.export_cli import export_app

    app.add_typer(export_app, name="export", help="Export curated data; import it back.")


_mount_export()


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _quiet_library_bars() -> None:
    """Hide the libraries' own progress bars (weights loading, dataset maps): one line of ours
    per stage says the same, and theirs would break it up."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


def _echo_progress(done: int, total: int, message: str) -> None:
    width = 30
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    typer.echo(f"\r[{bar}] {done}/{total} {message[:60]:<60}", nl=False, err=True)
    if total and done >= total:
        typer.echo("", err=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    worker: Annotated[bool, typer.Option(help="Start the job worker with the app.")] = True,
) -> None:
    """Start the web app (and its job worker).

    Example: teachlab serve --port 7860
    """
    from pages import launch

    launch(host=host, port=port, start_worker=worker)


@app.command()
def worker() -> None:
    """Run the job worker in the foreground (the app starts one itself).

    Example: teachlab worker
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from teachlab.jobs.queue import run_worker

    run_worker()


@models_app.command("fetch")
def models_fetch(
    refs: Annotated[
        list[str] | None, typer.Argument(help="Model references (default: bundled).")
    ] = None,
) -> None:
    """De-quantise bundled models once and cache them (fast loads afterwards).

    Example: teachlab models fetch bundled:smollm2-135m-instruct
    """
    from teachlab import models

    for ref in refs or [models.BUNDLED_PREFIX + n for n in models.BUNDLED]:
        start = time.perf_counter()
        cached = models.parse_ref(ref).kind == "bundled" and models.is_cached(models.parse_ref(ref))
        path = models.fetch(ref)
        note = "cached" if cached else f"ready in {time.perf_counter() - start:.1f} s"
        typer.echo(f"{ref}: {note} ({path})")


@models_app.command("list")
def models_list() -> None:
    """List bundled models and whether they are installed and cached.

    Example: teachlab models list
    """
    from teachlab import models

    typer.echo(_table(models.list_models()))


@data_app.command("fetch")
def data_fetch() -> None:
    """Download the BIG-bench task files (once) into the storage folder.

    Example: teachlab data fetch
    """
    from teachlab.tasks import fetch_bigbench, list_bigbench

    start = time.perf_counter()
    path = fetch_bigbench()
    typer.echo(
        f"BIG-bench: {len(list_bigbench())} tasks in {path} ({time.perf_counter() - start:.1f} s)"
    )


@data_app.command("list")
def data_list(
    contains: Annotated[str, typer.Option(help="Only names containing this text.")] = "",
) -> None:
    """List the tasks available to studies.

    Example: teachlab data list --contains date
    """
    from teachlab.tasks import list_bigbench

    names = [n for n in list_bigbench() if contains in n]
    if not names:
        typer.echo("(none: run `teachlab data fetch`)" if not contains else "(no match)")
    for name in names:
        typer.echo(f"bigbench:{name}")


def _parse_sets(sets: list[str] | None) -> dict[str, Any]:
    from teachlab.config import StudyConfig
    from teachlab.errors import ConfigError

    out: dict[str, Any] = {}
    defaults = StudyConfig().to_dict()
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: use key=value, for example --set n_questions=16.")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"--set {key}: unknown setting; known: {', '.join(sorted(defaults))}."
            )
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif kind is list:
            out[key] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            try:
                out[key] = kind(value)
            except ValueError as exc:
                raise ConfigError(f"--set {key}={value!r}: expected {kind.__name__}.") from exc
    return out


@study_app.command("create")
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
        config=_parse_sets(set_),
    )
    typer.echo(f"Created study #{study.id} {study.name!r} on {study.task_ref}")


@study_app.command("list")
def study_list() -> None:
    """List studies.

    Example: teachlab study list
    """
    from teachlab.studies import list_studies

    rows = [s.__dict__ for s in list_studies()]
    typer.echo(
        _table(
            rows,
            [
                "id",
                "name",
                "task_ref",
                "teacher",
                "student",
                "rounds",
                "drafts",
                "pairs",
                "last_run",
            ],
        )
    )


@study_app.command("show")
def study_show(study: Annotated[str, typer.Argument(help="Study id or name.")]) -> None:
    """Show a study's configuration, splits and rounds.

    Example: teachlab study show demo
    """
    from teachlab.studies import get_study, rounds

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
            for r in rounds(s.id)  # type: ignore[arg-type]
        ],
    }
    typer.echo(json.dumps(info, indent=2, default=str))


def _cli_user() -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


def _run_foreground(
    study_ref: str, kind: str, config: dict[str, Any] | None = None, override: bool = False
) -> int:
    from teachlab.gate import ensure_may_launch
    from teachlab.jobs import runs
    from teachlab.jobs.executor import execute
    from teachlab.studies import current_round, get_study

    study = get_study(study_ref)
    rnd = current_round(study.id)  # type: ignore[arg-type]
    gate = ensure_may_launch(
        rnd.id,  # type: ignore[arg-type]
        kind,
        override_by=_cli_user() if override else None,
    )
    if gate.level is not None and kind != "check":
        typer.echo(
            f"Signal check of round {rnd.index}: {gate.level}"
            + (f" (overridden by {gate.overridden_by})" if gate.overridden_by else "")
            + (f" — {gate.figures()}" if gate.figures() else ""),
            err=True,
        )
        for reason in gate.reasons:
            typer.echo(f"  - {reason}", err=True)
    run = runs.create_run(
        study.id,  # type: ignore[arg-type]
        kind,
        round_id=rnd.id,
        config=config or {},
        seed=study.seed,
        requested_by="cli",
    )
    typer.echo(f"Run #{run.id}: {kind} on study {study.name!r}, round {rnd.index}", err=True)
    _quiet_library_bars()
    final = execute(run.id, echo=_echo_progress)  # type: ignore[arg-type]
    typer.echo(f"Run #{final.id} {final.status}" + (f": {final.error}" if final.error else ""))
    return 0 if final.status == "succeeded" else 1


@round_app.command("run")
def round_run(
    study: Annotated[str, typer.Option(help="Study id or name.")],
    override: Annotated[
        bool,
        typer.Option(help="Go ahead although the round's signal check says stop (recorded)."),
    ] = False,
) -> None:
    """Run every stage of the study's current round in the foreground.

    Example: teachlab round run --study demo
    """
    raise typer.Exit(_run_foreground(study, "round", override=override))


@run_app.command("stage")
def run_stage(
    kind: Annotated[
        str,
        typer.Argument(help="draft, score, pairs, align, regenerate, distill, evaluate, check."),
    ],
    study: Annotated[str, typer.Option(help="Study id or name.")],
    override: Annotated[
        bool,
        typer.Option(help="Go ahead although the round's signal check says stop (recorded)."),
    ] = False,
) -> None:
    """Run one stage of the current round in the foreground.

    Example: teachlab run stage score --study demo
    """
    raise typer.Exit(_run_foreground(study, kind, override=override))


@app.command()
def check(
    study: Annotated[str, typer.Option(help="Study id or name.")],
) -> None:
    """Signal check: is the student above chance, are draft scores reliable, does the label
    explain the score? Run it before spending compute.

    Example: teachlab check --study demo
    """
    from teachlab.check import latest_check
    from teachlab.gate import gate_for
    from teachlab.studies import current_round, get_study

    code = _run_foreground(study, "check")
    round_id = current_round(get_study(study).id).id  # type: ignore[arg-type]
    found = latest_check(round_id)  # type: ignore[arg-type]
    if found is not None:
        typer.echo(f"verdict: {found.level}")
        figures = gate_for(round_id).figures()  # type: ignore[arg-type]
        if figures:
            typer.echo(figures)
        for reason in found.reasons:
            typer.echo(f"- {reason}")
    raise typer.Exit(code)


@run_app.command("list")
def run_list(study: Annotated[str | None, typer.Option(help="Study id or name.")] = None) -> None:
    """List recent runs.

    Example: teachlab run list --study demo
    """
    from teachlab.jobs import runs
    from teachlab.studies import get_study

    study_id = get_study(study).id if study else None
    rows = [
        {
            "id": r.id,
            "study": r.study_id,
            "kind": r.kind,
            "status": r.status,
            "progress": f"{r.progress_done}/{r.progress_total}",
            "message": r.message[:50],
            "error": (r.error or "")[:60],
        }
        for r in runs.list_runs(study_id)
    ]
    typer.echo(_table(rows))


@run_app.command("cancel")
def run_cancel(run_id: int) -> None:
    """Ask a run to stop (it stops at its next check point).

    Example: teachlab run cancel 12
    """
    from teachlab.jobs import runs

    run = runs.request_cancel(run_id)
    typer.echo(f"Run #{run.id}: cancel requested ({run.status})")


@run_app.command("resume")
def run_resume(
    run_id: int,
    foreground: Annotated[bool, typer.Option(help="Run here instead of in the worker.")] = False,
) -> None:
    """Resume a failed, cancelled or interrupted run; finished work is not redone.

    Example: teachlab run resume 12 --foreground
    """
    from teachlab.jobs import runs
    from teachlab.jobs.executor import execute
    from teachlab.jobs.queue import enqueue

    runs.prepare_resume(run_id)
    if foreground:
        _quiet_library_bars()
        final = execute(run_id, echo=_echo_progress)
        typer.echo(f"Run #{run_id} {final.status}" + (f": {final.error}" if final.error else ""))
        raise typer.Exit(0 if final.status == "succeeded" else 1)
    enqueue(run_id)
    typer.echo(f"Run #{run_id} queued again")


@run_app.command("exec", hidden=True)
def run_exec(run_id: int) -> None:
    """Execute a queued run in this process (used by the worker)."""
    # Model work yields to the web app: on 2 cores a run at normal priority pushes handler
    # p95 latency from ~250 ms to ~600 ms (benchmarks/handler_latency.py).
    os.nice(10)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from teachlab.jobs.executor import execute

    final = execute(run_id)
    raise typer.Exit(0 if final.status in ("succeeded", "cancelled") else 1)


@app.command()
def demo(
    name: Annotated[str, typer.Option(help="Name of the demo study.")] = "demo",
) -> None:
    """Create the demo study (if missing), run its signal check (if the round has none), then
    one whole round on the bundled models.

    Example: teachlab demo
    """
    from teachlab.check import latest_check
    from teachlab.errors import NotFoundError
    from teachlab.studies import create_demo_study, current_round, get_study

    try:
        study = get_study(name)
    except NotFoundError:
        study = create_demo_study(name)
        typer.echo(f"Created study {study.name!r} on {study.task_ref}", err=True)
    if latest_check(current_round(study.id).id) is None:  # type: ignore[arg-type]
        code = _run_foreground(study.name, "check")
        if code:
            raise typer.Exit(code)
    raise typer.Exit(_run_foreground(study.name, "round"))


def main() -> None:
    try:
        app()
    except TeachlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
