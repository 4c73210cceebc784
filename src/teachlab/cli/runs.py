"""`teachlab round run`, `teachlab run …`, `teachlab check` and `teachlab demo`: stages run in
the foreground here, or handed to the worker, through the same launch path as the pages."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from teachlab.cli.common import cli_user, echo_progress, quiet_library_bars, table
from teachlab.errors import NotFoundError

round_app = typer.Typer(help="Run a whole teaching round.", no_args_is_help=True)
run_app = typer.Typer(help="Runs (jobs): submit, watch, cancel, resume.", no_args_is_help=True)

Override = Annotated[
    bool,
    typer.Option(help="Go ahead although the round's signal check says stop (recorded)."),
]


def stage_names() -> str:
    from teachlab.stages import STAGES

    return ", ".join(s.name for s in STAGES.values() if s.launchable)


def run_foreground(study_ref: str, kind: str, override: bool = False) -> int:
    """Launch ``kind`` on the study's current round and carry it out here; the exit code."""
    from teachlab.stages.launch import execute_here, launch

    launched = launch(
        study_ref, kind, requested_by="cli", override_by=cli_user() if override else None
    )
    gate, rnd, run = launched.gate, launched.round, launched.run
    if gate.level is not None and kind != "check":
        typer.echo(
            f"Signal check of round {rnd.index}: {gate.level}"
            + (f" (overridden by {gate.overridden_by})" if gate.overridden_by else "")
            + (f" — {gate.figures()}" if gate.figures() else ""),
            err=True,
        )
        for reason in gate.reasons:
            typer.echo(f"  - {reason}", err=True)
    typer.echo(f"Run #{run.id}: {kind} on study {study_ref!r}, round {rnd.index}", err=True)
    quiet_library_bars()
    final = execute_here(run.id, echo=echo_progress)  # type: ignore[arg-type]
    typer.echo(f"Run #{final.id} {final.status}" + (f": {final.error}" if final.error else ""))
    return 0 if final.status == "succeeded" else 1


@round_app.command("run")
def round_run(
    study: Annotated[str, typer.Option(help="Study id or name.")],
    override: Override = False,
) -> None:
    """Run every stage of the study's current round in the foreground.

    Example: teachlab round run --study demo
    """
    raise typer.Exit(run_foreground(study, "round", override=override))


@run_app.command("stage")
def run_stage(
    kind: Annotated[str, typer.Argument(help="The stage: " + stage_names() + ".")],
    study: Annotated[str, typer.Option(help="Study id or name.")],
    override: Override = False,
) -> None:
    """Run one stage of the current round in the foreground.

    Example: teachlab run stage score --study demo
    """
    raise typer.Exit(run_foreground(study, kind, override=override))


def check(
    study: Annotated[str, typer.Option(help="Study id or name.")],
) -> None:
    """Signal check: is the student above chance, are draft scores reliable, does the label
    explain the score? Run it before spending compute.

    Example: teachlab check --study demo
    """
    from teachlab.rounds import current_round, row_id
    from teachlab.stages.gate import gate_for, latest_check
    from teachlab.studies import get_study

    code = run_foreground(study, "check")
    round_id = row_id(current_round(row_id(get_study(study))))
    found = latest_check(round_id)
    if found is not None:
        typer.echo(f"verdict: {found.level}")
        figures = gate_for(round_id).figures()
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
    typer.echo(table(rows))


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
    from teachlab.jobs.queue import enqueue
    from teachlab.stages.launch import execute_here

    runs.prepare_resume(run_id)
    if foreground:
        quiet_library_bars()
        final = execute_here(run_id, echo=echo_progress)
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
    from teachlab.stages.launch import execute_here

    final = execute_here(run_id)
    raise typer.Exit(0 if final.status in ("succeeded", "cancelled") else 1)


def demo(
    name: Annotated[str, typer.Option(help="Name of the demo study.")] = "demo",
) -> None:
    """Create the demo study (if missing), run its signal check (if the round has none), then
    one whole round on the bundled models.

    Example: teachlab demo
    """
    from teachlab.rounds import current_round, row_id
    from teachlab.stages.gate import latest_check
    from teachlab.studies import create_demo_study, get_study

    try:
        study = get_study(name)
    except NotFoundError:
        study = create_demo_study(name)
        typer.echo(f"Created study {study.name!r} on {study.task_ref}", err=True)
    if latest_check(row_id(current_round(row_id(study)))) is None:
        code = run_foreground(study.name, "check")
        if code:
            raise typer.Exit(code)
    raise typer.Exit(run_foreground(study.name, "round"))
