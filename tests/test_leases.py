"""Fenced run leases: a run's writes are accepted only from the executor that holds it now.

Stale runs (a dead executor) count as interrupted for resume, cancel and the one-run-per-study
check; a taken-over executor stops at once; the baseline cannot be stored twice.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from teachlab.db import ProbeResult, Round, Run, Study, read_session, write_session
from teachlab.db.tables import utcnow
from teachlab.errors import JobError
from teachlab.jobs import Stage, runs
from teachlab.jobs.executor import execute
from teachlab.jobs.runs import Lease, LeaseLost


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def study_round(request: pytest.FixtureRequest, storage: Path) -> tuple[int, int]:
    """A study and its round, on SQLite and on PostgreSQL (each lease test runs on both)."""
    request.getfixturevalue("pg_url" if request.param == "postgres" else "db_path")
    with write_session() as s:
        study = Study(name="leases", task_ref="bigbench:x", teacher="t", student="s")
        s.add(study)
        s.flush()
        rnd = Round(study_id=study.id, index=0, teacher="t", student="s")  # type: ignore[arg-type]
        s.add(rnd)
        s.flush()
        return study.id, rnd.id  # type: ignore[return-value]


def age(run_id: int, seconds: float) -> None:
    """Make a running run's last heartbeat ``seconds`` old (its executor went quiet)."""
    with write_session() as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.heartbeat_at = utcnow() - timedelta(seconds=seconds)
        s.add(run)


def test_every_claim_takes_a_new_generation_and_old_leases_write_nothing(
    study_round: tuple[int, int],
) -> None:
    study, rnd = study_round
    run = runs.create_run(study, "check", round_id=rnd)
    claimed = runs.claim(run.id)  # type: ignore[arg-type]
    assert claimed is not None
    first = claimed[1]
    assert runs.claim(run.id) is None  # held, fresh: nobody else gets it  # type: ignore[arg-type]
    runs.set_progress(first, 1, 4, "one")
    age(run.id, runs.STALE_AFTER_S + 5)  # type: ignore[arg-type]
    taken = runs.claim(run.id)  # a stale run is taken over directly  # type: ignore[arg-type]
    assert taken is not None
    second = taken[1]
    assert second.generation == first.generation + 1
    for write in (
        lambda: runs.set_progress(first, 3, 4, "from the old owner"),
        lambda: runs.heartbeat(first),
        lambda: runs.update_provenance(first, {"old": True}),
        lambda: runs.finish(first, "failed", error="old owner"),
    ):
        with pytest.raises(LeaseLost):
            write()
    row = runs.get_run(run.id)  # type: ignore[arg-type]
    assert (row.status, row.progress_done, row.message, row.error) == ("running", 1, "one", None)
    assert "old" not in row.provenance
    runs.finish(second, "succeeded")
    assert runs.get_run(run.id).status == "succeeded"  # type: ignore[arg-type]


def test_a_stage_that_lost_its_lease_stops_and_records_nothing(
    study_round: tuple[int, int],
) -> None:
    """Split brain: while the first executor was paused, another took the run over."""
    study, rnd = study_round
    run = runs.create_run(study, "check", round_id=rnd)
    seen: list[str] = []

    def paused_then_resumed(ctx: Any, run: Run) -> dict[str, Any]:
        ctx.progress(1, 3, "before the pause")
        age(run.id, runs.STALE_AFTER_S + 5)  # type: ignore[arg-type]
        assert runs.claim(run.id) is not None  # the other executor  # type: ignore[arg-type]
        time.sleep(0.6)  # the pause outlasts the progress throttle, so the next write is real
        seen.append("resumed")
        ctx.progress(2, 3, "after the pause")  # fenced: raises, the stage stops here
        seen.append("kept going")
        return {"done": True}

    final = execute(run.id, {"check": Stage("check", paused_then_resumed, "")})  # type: ignore[arg-type]
    assert seen == ["resumed"]
    assert final.status == "running" and final.message == "before the pause"  # the new owner's
    assert final.result == {} and final.attempts == 2


def test_a_stale_run_counts_as_interrupted_for_resume_cancel_and_new_runs(
    study_round: tuple[int, int],
) -> None:
    """A foreground run killed with SIGKILL leaves a running row nobody heartbeats."""
    study, rnd = study_round
    dead = runs.create_run(study, "score", round_id=rnd)
    assert runs.claim(dead.id) is not None  # type: ignore[arg-type]
    with pytest.raises(JobError, match="still running"):
        runs.create_run(study, "pairs", round_id=rnd)
    with pytest.raises(JobError, match="only a stopped run can be resumed"):
        runs.prepare_resume(dead.id)  # type: ignore[arg-type]
    age(dead.id, runs.STALE_AFTER_S + 1)  # type: ignore[arg-type]
    resumed = runs.prepare_resume(dead.id)  # no worker needed  # type: ignore[arg-type]
    assert resumed.status == "queued"
    claimed = runs.claim(dead.id)  # type: ignore[arg-type]
    assert claimed is not None and claimed[0].attempts == 2
    age(dead.id, runs.STALE_AFTER_S + 1)  # type: ignore[arg-type]
    assert runs.request_cancel(dead.id).status == "cancelled"  # at once: nobody to ask  # type: ignore[arg-type]
    runs.create_run(study, "pairs", round_id=rnd)  # the study is free again


def test_resume_waits_for_another_live_run_of_the_study(study_round: tuple[int, int]) -> None:
    study, rnd = study_round
    old = runs.create_run(study, "score", round_id=rnd)
    lease = runs.claim(old.id)[1]  # type: ignore[arg-type,index]
    runs.finish(lease, "failed", error="boom")
    new = runs.create_run(study, "score", round_id=rnd)
    assert runs.claim(new.id) is not None  # type: ignore[arg-type]
    with pytest.raises(JobError, match=f"Run #{new.id} \\(score\\) is still running"):
        runs.prepare_resume(old.id)  # type: ignore[arg-type]


def test_a_run_waits_while_another_top_level_run_of_its_study_runs(
    study_round: tuple[int, int],
) -> None:
    study, rnd = study_round
    interrupted = runs.create_run(study, "score", round_id=rnd)
    assert runs.claim(interrupted.id) is not None  # type: ignore[arg-type]
    age(interrupted.id, runs.STALE_AFTER_S + 1)  # type: ignore[arg-type]
    assert runs.reap(requeue=False) == []
    assert runs.get_run(interrupted.id).status == "interrupted"  # type: ignore[arg-type]
    other = runs.create_run(study, "pairs", round_id=rnd)  # allowed: the old one is stopped
    other_lease = runs.claim(other.id)[1]  # type: ignore[arg-type,index]
    assert runs.claim(interrupted.id) is None  # a worker resuming it now would clash  # type: ignore[arg-type]
    runs.finish(other_lease, "succeeded")
    assert runs.claim(interrupted.id) is not None  # type: ignore[arg-type]


def test_the_reaper_queues_stale_top_level_runs_only(study_round: tuple[int, int]) -> None:
    study, rnd = study_round
    parent = runs.create_run(study, "round", round_id=rnd)
    child = runs.create_run(study, "draft", round_id=rnd, parent_id=parent.id)
    for run in (parent, child):
        assert runs.claim(run.id) is not None  # type: ignore[arg-type]
        age(run.id, runs.STALE_AFTER_S + 1)  # type: ignore[arg-type]
    assert runs.reap() == [parent.id]
    assert {runs.get_run(r.id).status for r in (parent, child)} == {"interrupted"}  # type: ignore[arg-type]


def test_the_baseline_is_stored_once_per_round_probe_and_mode(
    study_round: tuple[int, int],
) -> None:
    _, rnd = study_round

    def baseline() -> ProbeResult:
        return ProbeResult(draft_id=None, round_id=rnd, probe_index=3, mode="loglik")

    with write_session() as s:
        s.add(baseline())
    with pytest.raises(IntegrityError), write_session() as s:
        s.add(baseline())
    with write_session() as s:  # another mode is another baseline
        s.add(ProbeResult(draft_id=None, round_id=rnd, probe_index=3, mode="generate"))
    with read_session() as s:
        assert len(s.exec(select(ProbeResult)).all()) == 2


def test_an_old_lease_object_cannot_write_a_new_run(db_path: Path) -> None:
    """A lease names its run and generation; a made-up one matches nothing."""
    with pytest.raises(LeaseLost):
        runs.set_progress(Lease(987654, 1), 1, 1, "nobody")


def test_a_stages_rows_commit_only_while_its_lease_holds(study_round: tuple[int, int]) -> None:
    """Rows written through ``ctx.write()`` renew the lease in the same transaction: after a
    takeover the old executor's write raises and leaves no row."""
    from teachlab.db import Metric

    study, rnd = study_round
    run = runs.create_run(study, "check", round_id=rnd)
    outcome: list[str] = []

    def writes_across_a_takeover(ctx: Any, run: Run) -> dict[str, Any]:
        with ctx.write() as s:
            s.add(Metric(run_id=run.id, step=1, name="mine", value=1.0))
        age(run.id, runs.STALE_AFTER_S + 5)  # type: ignore[arg-type]
        assert runs.claim(run.id) is not None  # type: ignore[arg-type]
        try:
            with ctx.write() as s:
                s.add(Metric(run_id=run.id, step=2, name="mine", value=2.0))
        except LeaseLost:
            outcome.append("refused")
            raise
        return {}

    execute(run.id, {"check": Stage("check", writes_across_a_takeover, "")})  # type: ignore[arg-type]
    assert outcome == ["refused"]
    with read_session() as s:
        assert [m.step for m in s.exec(select(Metric))] == [1]
