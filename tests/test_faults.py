"""The fault suite (``pytest -m faults``): crashes, pauses and takeovers of real processes on the
real database. docs/reliability.md reports its figures; set TEACHLAB_TEST_FAULT_REPORT to a folder
to have each test write its figures there as JSON.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from teachlab.db import Metric, Round, Study, read_session, write_session
from teachlab.jobs import runs
from tests.conftest import fault_report

pytestmark = pytest.mark.faults
HERE = Path(__file__).resolve().parent


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def new_round(name: str = "faults") -> tuple[int, int]:
    with write_session() as s:
        study = Study(name=name, task_ref="bigbench:not-fetched", teacher="t", student="s")
        s.add(study)
        s.flush()
        rnd = Round(study_id=study.id, index=0, teacher="t", student="s")  # type: ignore[arg-type]
        s.add(rnd)
        s.flush()
        return study.id, rnd.id  # type: ignore[return-value]


def slow_executor(run_id: int, steps: int = 400, interval: float = 0.1) -> subprocess.Popen[bytes]:
    """The real runner in another process, on a stage that writes one row per step."""
    return subprocess.Popen(
        [sys.executable, str(HERE / "slowstage.py"), str(run_id), str(steps), str(interval)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def writers(run_id: int) -> dict[str, list[int]]:
    """The steps each process wrote for the run (the stand-in names its rows by pid)."""
    with read_session() as s:
        rows = s.exec(select(Metric).where(Metric.run_id == run_id)).all()
    out: dict[str, list[int]] = {}
    for m in rows:
        out.setdefault(m.name, []).append(m.step)
    return {k: sorted(v) for k, v in out.items()}


def stopped(proc: subprocess.Popen[bytes]) -> str:
    out, _ = proc.communicate(timeout=60)
    return out.decode(errors="replace")


def pause_holding_no_lock(proc: subprocess.Popen[bytes], db: Path) -> None:
    """SIGSTOP ``proc`` at a moment it holds no write transaction: a process paused inside one
    blocks every SQLite writer until it resumes (SQLite cannot take a lock from its holder), and
    that is not the split brain under test. Resumed and paused again until the lock is free."""
    for _ in range(50):
        os.kill(proc.pid, signal.SIGSTOP)
        conn = sqlite3.connect(db, timeout=0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return
        except sqlite3.OperationalError:  # paused mid-write: let it finish, try again
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.03)
        finally:
            conn.close()
    raise AssertionError("the executor held the write lock at every one of 50 pauses")


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_paused_executor_that_lost_its_lease_writes_nothing_more(db_path: Path) -> None:
    """Split brain: pause an executor past the stale limit, let another take the run over and
    finish it, then let the first one go on: it stops at once, writes no row, records no end."""
    study, rnd = new_round()
    run = runs.create_run(study, "check", round_id=rnd)
    first = slow_executor(run.id)  # type: ignore[arg-type]
    wait_for(lambda: runs.get_run(run.id).progress_done >= 3, 120, "the first executor's steps")  # type: ignore[arg-type]
    pause_holding_no_lock(first, db_path)
    paused_at = time.monotonic()
    before = writers(run.id)  # type: ignore[arg-type]
    wait_for(lambda: time.monotonic() - paused_at > runs.STALE_AFTER_S + 1, 30, "the stale limit")
    second = slow_executor(run.id, steps=5, interval=0.05)  # type: ignore[arg-type]
    assert "succeeded" in stopped(second)
    os.kill(first.pid, signal.SIGCONT)
    output = stopped(first)
    after = writers(run.id)  # type: ignore[arg-type]
    final = runs.get_run(run.id)  # type: ignore[arg-type]
    first_name = f"pid{first.pid}"
    assert after[first_name] == before[first_name]  # not one row after it was taken over
    assert after[f"pid{second.pid}"] == [1, 2, 3, 4, 5]
    assert final.status == "succeeded" and final.result["writer"] == f"pid{second.pid}"
    assert final.attempts == 2 and f"run {run.id}: succeeded" in output
    assert integrity(db_path) == "ok"
    fault_report(
        "split_brain",
        {
            "first_rows_before_pause": len(before[first_name]),
            "first_rows_after_resume": len(after[first_name]) - len(before[first_name]),
            "final_status": final.status,
            "final_writer": "second executor",
            "attempts": final.attempts,
        },
    )


def test_a_killed_foreground_run_is_taken_over_by_a_worker_within_15_s(db_path: Path) -> None:
    study, rnd = new_round()
    run = runs.create_run(study, "check", round_id=rnd)
    executor = slow_executor(run.id)  # type: ignore[arg-type]
    wait_for(lambda: runs.get_run(run.id).progress_done >= 2, 120, "the run's first steps")  # type: ignore[arg-type]
    worker = subprocess.Popen(  # it leaves the run alone while its heartbeat is fresh
        [sys.executable, "-m", "teachlab", "worker"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(8)  # the worker is up and idle
        assert runs.get_run(run.id).attempts == 1  # type: ignore[arg-type]
        executor.kill()
        executor.wait()
        killed = datetime.now(UTC)
        wait_for(lambda: runs.get_run(run.id).attempts >= 2, 60, "a worker to take the run over")  # type: ignore[arg-type]
        taken = runs.get_run(run.id)  # type: ignore[arg-type]
        started = taken.started_at.replace(tzinfo=UTC)  # type: ignore[union-attr]
        takeover_s = (started - killed).total_seconds()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    assert 0 < takeover_s <= 15, takeover_s
    fault_report(
        "takeover", {"stale_after_s": runs.STALE_AFTER_S, "takeover_s": round(takeover_s, 1)}
    )


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "teachlab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_sigkilled_foreground_run_blocks_nothing_once_stale(db_path: Path) -> None:
    """The reported sequence: a foreground run killed with SIGKILL, no worker; then resume,
    cancel and a new stage each get a clear answer and do what they say."""
    study, rnd = new_round()
    first = runs.create_run(study, "check", round_id=rnd)
    executor = slow_executor(first.id)  # type: ignore[arg-type]
    wait_for(lambda: runs.get_run(first.id).progress_done >= 2, 120, "the run's first steps")  # type: ignore[arg-type]
    executor.kill()
    executor.wait()
    early = cli("run", "resume", str(first.id))
    assert early.returncode == 1 and "its executor is alive" in early.stderr  # not stale yet
    time.sleep(runs.STALE_AFTER_S + 1)
    resumed = cli("run", "resume", str(first.id))  # queued again: no worker needed to accept it
    assert resumed.returncode == 0 and f"Run #{first.id} queued again" in resumed.stdout
    cancelled = cli("run", "cancel", str(first.id))
    assert cancelled.returncode == 0 and "(cancelled)" in cancelled.stdout
    second = runs.create_run(study, "check", round_id=rnd)  # the study is free
    executor = slow_executor(second.id, steps=3, interval=0.05)  # type: ignore[arg-type]
    assert "succeeded" in stopped(executor)
    for out in (early, resumed, cancelled):
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 1


# ---------------------------------------------------------------- kill points in real stages

KILL_TASK = "bigbench:sports_understanding"
SMOL = "bundled:smollm2-135m-instruct"  # teacher and student: the fastest pair to kill often
KILL_CONFIG = {
    "n_questions": 6,
    "questions_per_call": 2,
    "n_rationales": 2,
    "n_probe": 8,
    "n_test": 16,
    "n_tailored": 4,
    "dpo_max_steps": 6,
    "dpo_batch_size": 2,
    "sft_max_steps": 6,
    "sft_batch_size": 2,
    "save_steps": 1,
    "eval_shots": 1,
    "pair_metric": "margin",
    "max_new_tokens": 96,
    # Questions drafted field by field: a 135M teacher asked for whole questions (aligned on a
    # handful of pairs) can write no parseable tailored question at all, and leave distil
    # nothing to train on, which is not what this test is about.
    "scaffold": True,
}
# Kills per stage: at least 20 in all (with room for a stage that finishes before its last
# kill lands), spread over every stage that computes.
KILLS = {
    "draft": 5,
    "score": 5,
    "pairs": 0,
    "align": 4,
    "regenerate": 3,
    "distill": 3,
    "evaluate": 2,
}


def stage_rows(kind: str, run_id: int, round_id: int) -> dict[Any, Any]:
    """What a stage has stored so far, by row id, with the content that must never change."""
    from teachlab.db import Draft, Evaluation, ProbeResult

    with read_session() as s:
        if kind in ("draft", "regenerate"):
            phase = "draft" if kind == "draft" else "tailored"
            return {
                d.id: (d.idem_key, d.raw_output, d.status)
                for d in s.exec(
                    select(Draft).where(Draft.round_id == round_id, Draft.phase == phase)
                )
            }
        if kind == "score":
            return {
                r.id: (r.draft_id, r.probe_index, r.correct, r.margin)
                for r in s.exec(select(ProbeResult).where(ProbeResult.round_id == round_id))
            }
        if kind == "evaluate":
            return {
                e.id: (e.model, e.shots, e.accuracy)
                for e in s.exec(select(Evaluation).where(Evaluation.round_id == round_id))
            }
        return {  # align, distill: logged steps
            m.id: (m.name, m.step)
            for m in s.exec(select(Metric).where(Metric.run_id == run_id, Metric.name == "loss"))
        }


def complete_checkpoints(run_id: int) -> list[int]:
    from teachlab.settings import get_settings

    folder = get_settings().runs_dir / f"run-{run_id:05d}" / "checkpoints"
    return sorted(int(p.parent.name.split("-")[1]) for p in folder.glob("checkpoint-*/.complete"))


@pytest.mark.slow
@pytest.mark.timeout(3000)  # 20+ process starts with model loads: 10 minutes on a quiet machine
def test_sigkill_at_random_points_of_every_stage_loses_nothing(db_path: Path) -> None:
    """Each stage of a round is killed with SIGKILL at random moments once it has stored
    something, then resumed, until it finishes: every row stored before a kill is still there,
    unchanged (so none was lost or recomputed), training resumes from its newest complete
    checkpoint with no step logged twice, and the database passes its integrity check."""
    import random

    from teachlab.rounds import current_round
    from teachlab.stages.launch import launch
    from teachlab.studies import create_study
    from tests.conftest import bigbench_available

    if not bigbench_available("sports_understanding"):
        pytest.skip("run `teachlab data fetch` first")
    rng = random.Random(20261204)
    study = create_study("kills", KILL_TASK, teacher=SMOL, student=SMOL, config=KILL_CONFIG)
    round_id = current_round(study.id).id  # type: ignore[arg-type]
    kills: list[dict[str, Any]] = []
    stages: dict[str, dict[str, Any]] = {}
    for kind, wanted in KILLS.items():
        run_id = launch(study.id, kind, requested_by="faults").run.id  # type: ignore[arg-type]
        snapshots: list[dict[Any, Any]] = []
        attempts = 0
        started = time.monotonic()
        while True:
            attempts += 1
            before = stage_rows(kind, run_id, round_id)
            proc = subprocess.Popen(
                [sys.executable, "-m", "teachlab", "run", "exec", str(run_id)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            done_killing = sum(k["stage"] == kind for k in kills) >= wanted
            if done_killing:
                proc.wait(timeout=900)
                break
            # Kill once this attempt has stored something new, a random moment later.
            end = time.monotonic() + 600
            while proc.poll() is None and time.monotonic() < end:
                if len(stage_rows(kind, run_id, round_id)) > len(before):
                    break
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is not None:  # finished before the kill: nothing left to kill
                break
            snapshot = stage_rows(kind, run_id, round_id)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if runs.get_run(run_id).status == "succeeded":  # it finished as the kill landed
                break
            checkpoints = complete_checkpoints(run_id)
            # What `teachlab run resume` does once the dead run is seen as stale.
            runs.reap(stale_after_s=0, requeue=False)
            runs.prepare_resume(run_id)
            kills.append(
                {
                    "stage": kind,
                    "attempt": attempts,
                    "stored_at_kill": len(snapshot),
                    "checkpoints_at_kill": checkpoints,
                    "integrity": integrity(db_path),
                }
            )
            snapshots.append(snapshot)
        final = runs.get_run(run_id)
        assert final.status == "succeeded", (kind, final.error)
        after = stage_rows(kind, run_id, round_id)
        lost = sum(1 for snap in snapshots for row_id in snap if row_id not in after)
        changed = sum(
            1 for snap in snapshots for row_id, row in snap.items() if after.get(row_id) != row
        )
        assert lost == 0 and changed == 0, (kind, lost, changed)
        if kind in ("align", "distill"):
            steps = sorted(step for _, step in after.values())
            assert steps == list(range(1, len(steps) + 1)), steps  # no step logged twice
            newest = max(
                (c for k in kills if k["stage"] == kind for c in k["checkpoints_at_kill"]),
                default=None,
            )
            if newest is not None:
                assert final.result["resumed_from"] >= newest
        stages[kind] = {
            "kills": sum(k["stage"] == kind for k in kills),
            "attempts": attempts,
            "rows": len(after),
            "lost": lost,
            "changed": changed,
            "seconds": round(time.monotonic() - started, 1),
            "resumed_from": (final.result or {}).get("resumed_from"),
        }
    assert len(kills) >= 20, f"only {len(kills)} kills landed"
    assert all(k["integrity"] == "ok" for k in kills)
    assert integrity(db_path) == "ok"
    fault_report("kill_points", {"kills": len(kills), "stages": stages, "each": kills})
