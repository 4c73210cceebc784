"""Run records: claim once, finish with a state, cancel, resume, and recover lost work.

Stages here are small functions patched into the stage table (the job machinery is what is
under test); the real stages are killed and resumed in tests/test_round.py.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from builders import study

from teachlab.db import Run, write_session
from teachlab.db.tables import utcnow
from teachlab.errors import DataError, JobError
from teachlab.jobs import Cancelled, Stage, queue, runs
from teachlab.jobs.executor import execute
from teachlab.stages import STAGES, stage_named


@pytest.fixture
def study_id(db_path: Path) -> int:
    return study().id  # type: ignore[return-value]


TABLE: dict[str, Stage] = {}


def patch_stage(monkeypatch: pytest.MonkeyPatch, fn: Any) -> None:
    """Hand the runner a table whose "check" stage is ``fn``."""
    monkeypatch.setitem(TABLE, "check", Stage("check", fn, "a test stage"))


def test_a_study_runs_one_top_level_job_at_a_time(study_id: int) -> None:
    runs.create_run(study_id, "draft")
    with pytest.raises(JobError, match="still queued"):
        runs.create_run(study_id, "score")


def test_unknown_stage_is_refused(study_id: int) -> None:
    with pytest.raises(JobError, match="choose one of"):
        stage_named("teleport")
    assert "teleport" not in STAGES


def test_only_one_executor_claims_a_run(study_id: int) -> None:
    run = runs.create_run(study_id, "check")
    winners: list[object] = []
    threads = [
        threading.Thread(target=lambda: winners.append(runs.claim(run.id))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(w is not None for w in winners) == 1
    assert runs.get_run(run.id).attempts == 1


def test_success_records_result_progress_and_provenance(
    study_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stage(ctx: Any, run: Run) -> dict[str, Any]:
        for i in range(3):
            ctx.progress(i + 1, 3, f"item {i}")
        ctx.log("hello from the stage")
        return {"items": 3}

    patch_stage(monkeypatch, stage)
    run = runs.create_run(study_id, "check", seed=7)
    final = execute(run.id, TABLE)
    assert final.status == "succeeded" and final.result == {"items": 3}
    assert (final.progress_done, final.progress_total) == (3, 3)
    assert final.provenance["packages"]["torch"].startswith("2.")
    assert "hello from the stage" in Path(final.provenance["log"]).read_text()
    assert final.seed == 7 and final.started_at and final.finished_at


def test_user_error_fails_with_its_message(study_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def stage(ctx: Any, run: Run) -> dict[str, Any]:
        raise DataError("The task file is empty; upload one with examples.")

    patch_stage(monkeypatch, stage)
    final = execute(runs.create_run(study_id, "check").id, TABLE)
    assert (
        final.status == "failed"
        and final.error == "The task file is empty; upload one with examples."
    )


def test_bug_fails_with_type_and_keeps_the_trace_in_the_log(
    study_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_stage(monkeypatch, lambda ctx, run: {}["missing"])
    final = execute(runs.create_run(study_id, "check").id, TABLE)
    assert final.status == "failed" and final.error.startswith("KeyError")
    assert "Traceback" in Path(final.provenance["log"]).read_text()


def test_cancel_stops_a_running_stage_at_its_next_check(
    study_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def stage(ctx: Any, run: Run) -> dict[str, Any]:
        for i in range(100):
            if i == 2:
                runs.request_cancel(run.id)  # as if from the Runs page
            ctx.check_cancelled()
            seen.append(i)
        return {}

    patch_stage(monkeypatch, stage)
    final = execute(runs.create_run(study_id, "check").id, TABLE)
    assert final.status == "cancelled" and seen == [0, 1]


def test_cancel_of_a_queued_run_is_immediate(study_id: int) -> None:
    run = runs.create_run(study_id, "check")
    assert runs.request_cancel(run.id).status == "cancelled"
    with pytest.raises(JobError, match="already cancelled"):
        runs.request_cancel(run.id)


def test_resume_requeues_a_stopped_run_and_refuses_finished_ones(
    study_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def stage(ctx: Any, run: Run) -> dict[str, Any]:
        calls.append(run.attempts)
        if len(calls) == 1:
            raise Cancelled()
        return {"ok": True}

    patch_stage(monkeypatch, stage)
    run = runs.create_run(study_id, "check")
    assert execute(run.id, TABLE).status == "cancelled"
    runs.prepare_resume(run.id)
    final = execute(run.id, TABLE)
    assert final.status == "succeeded" and calls == [1, 2]
    with pytest.raises(JobError, match="already succeeded"):
        runs.prepare_resume(run.id)


def test_reaper_interrupts_runs_whose_worker_died(study_id: int) -> None:
    fresh = runs.create_run(study_id, "check")
    runs.claim(fresh.id)
    stale = runs.create_run(study_id, "draft", parent_id=fresh.id)
    runs.claim(stale.id)
    doomed = runs.create_run(study_id, "score", parent_id=fresh.id)
    runs.claim(doomed.id)
    with write_session() as session:
        for run_id, attempts in ((stale.id, 1), (doomed.id, runs.MAX_ATTEMPTS)):
            row = session.get(Run, run_id)
            row.heartbeat_at = utcnow() - timedelta(minutes=5)
            row.attempts = attempts
            session.add(row)
    runs.reap()
    assert runs.get_run(fresh.id).status == "running"
    assert runs.get_run(stale.id).status == "interrupted"
    failed = runs.get_run(doomed.id)
    assert failed.status == "failed" and "gave up" in failed.error


def test_recover_enqueues_runs_the_queue_lost(study_id: int) -> None:
    # A run committed to the database whose enqueue never happened (the app died in between).
    run = runs.create_run(study_id, "check")
    assert queue.recover() == [run.id]
    pending = [t.args[0] for t in queue.get_huey().pending()]
    assert pending == [run.id]
    assert queue.recover() == []  # already in the queue: not enqueued twice
