"""Launching a stage on a study's current round: the one path the pages and the CLI share.

The stage is looked up in the table, the signal gate is asked (an override is recorded), the
run is recorded, then handed to the worker's queue or executed here in the foreground.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from teachlab.db import Round, Run
from teachlab.errors import JobError
from teachlab.jobs import runs
from teachlab.rounds import current_round, row_id
from teachlab.stages import STAGES, stage_named
from teachlab.stages.gate import Gate, ensure_may_launch
from teachlab.studies import get_study


@dataclass(frozen=True)
class Launched:
    run: Run
    round: Round
    gate: Gate


def launch(
    study_ref: int | str,
    kind: str,
    *,
    requested_by: str,
    override_by: str | None = None,
    config: dict[str, Any] | None = None,
    demo_mode: bool = False,
) -> Launched:
    """Record a queued run of ``kind`` on the study's current round (not yet carried out)."""
    stage = stage_named(kind)
    if demo_mode and stage.heavy:
        raise JobError(
            f"The {kind} stage is switched off in this public demo (it trains models for "
            "minutes); run TeachLab locally to use it."
        )
    if demo_mode:
        from teachlab import demo

        demo.check_runs(requested_by)
    study = get_study(study_ref)
    rnd = current_round(row_id(study))
    gate = ensure_may_launch(row_id(rnd), stage, override_by=override_by)
    run = runs.create_run(
        row_id(study),
        kind,
        round_id=rnd.id,
        config=config or {},
        seed=study.seed,
        requested_by=requested_by,
    )
    return Launched(run, rnd, gate)


def submit(study_ref: int | str, kind: str, **kw: Any) -> Launched:
    """Launch a run and hand it to the worker's queue (the record comes first)."""
    from teachlab.jobs.queue import enqueue

    launched = launch(study_ref, kind, **kw)
    enqueue(row_id(launched.run))
    return launched


def execute_here(run_id: int, echo: Callable[[int, int, str], None] | None = None) -> Run:
    """Carry out a recorded run in this process (foreground CLI runs, the worker's child)."""
    from teachlab.jobs.executor import execute

    return execute(run_id, STAGES, echo)


def launch_experiment(ref: int | str, *, requested_by: str) -> Launched:
    """Record the run of an experiment (on its first seed's first task's study), or hand back
    the one not finished yet, so a second launch resumes instead of starting over."""
    from sqlmodel import col, select

    from teachlab.db import Run, read_session
    from teachlab.experiments import store

    exp = store.load_experiment(ref)
    anchor = exp.anchor(exp.spec.seeds[0])
    rnd = current_round(row_id(anchor))
    runs.reap(requeue=False)  # a run whose executor died (stale heartbeat) is interrupted
    with read_session() as session:
        earlier = session.exec(
            select(Run)
            .where(Run.kind == "experiment", Run.study_id == anchor.id)
            .order_by(col(Run.id).desc())
        ).first()
    if earlier is not None and earlier.status != "succeeded":
        if earlier.status not in ("queued", "running"):
            runs.prepare_resume(row_id(earlier))
        return Launched(runs.get_run(row_id(earlier)), rnd, gate_for_round(rnd))
    run = runs.create_run(
        row_id(anchor),
        "experiment",
        round_id=rnd.id,
        config={"experiment": exp.id},
        seed=exp.spec.seeds[0],
        requested_by=requested_by,
    )
    return Launched(run, rnd, gate_for_round(rnd))


def gate_for_round(rnd: Round) -> Gate:
    from teachlab.stages.gate import gate_for

    return gate_for(row_id(rnd))
