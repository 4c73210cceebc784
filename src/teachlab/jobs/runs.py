"""Run records: the database, not the queue, is the record of what ran.

A run is inserted as ``queued``, claimed by exactly one executor (a conditional UPDATE),
kept alive by a heartbeat, and finished as succeeded / failed / cancelled. A reaper turns
runs whose heartbeat went stale (a killed worker) into ``interrupted`` and queues them
again; stages skip what is already stored, so a resumed run loses at most the item in flight.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import threading
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from teachlab.db import Run, read_session, write_session
from teachlab.db.tables import utcnow
from teachlab.errors import JobError, NotFoundError
from teachlab.jobs.context import Cancelled

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 5.0
STALE_AFTER_S = 45.0
MAX_ATTEMPTS = 3
_PACKAGES = ("teachlab", "torch", "transformers", "trl", "peft", "gradio", "sqlmodel", "datasets")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_revision() -> str | None:
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def create_run(
    study_id: int,
    kind: str,
    *,
    round_id: int | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    parent_id: int | None = None,
    requested_by: str | None = None,
) -> Run:
    """Insert a queued run (the caller checks ``kind`` against the stage table and enqueues
    it). Refuses a second active top-level run of the study."""
    with write_session() as session:
        if parent_id is None:
            clash = session.exec(
                select(Run).where(
                    Run.study_id == study_id,
                    col(Run.status).in_(ACTIVE),
                    col(Run.parent_id).is_(None),
                )
            ).first()
            if clash is not None:
                raise JobError(
                    f"Run #{clash.id} ({clash.kind}) is still {clash.status} for this study; "
                    "wait for it, or cancel it on the Runs page (`teachlab run cancel "
                    f"{clash.id}`), before starting another."
                )
        run = Run(
            study_id=study_id,
            round_id=round_id,
            parent_id=parent_id,
            kind=kind,
            config=config or {},
            seed=seed,
            requested_by=requested_by,
            provenance={"packages": package_versions(), "git_revision": git_revision()},
        )
        session.add(run)
        session.flush()
        return run


def get_run(run_id: int) -> Run:
    with read_session() as session:
        run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"Run #{run_id} does not exist; list runs with `teachlab run list`.")
    return run


def claim(run_id: int) -> Run | None:
    """Mark a queued or interrupted run running for this process; None if someone else has it."""
    now = utcnow()
    with write_session() as session:
        result = session.execute(
            update(Run)
            .where(col(Run.id) == run_id, col(Run.status).in_(("queued", "interrupted")))
            .values(
                status="running",
                worker=worker_id(),
                heartbeat_at=now,
                started_at=now,
                attempts=Run.attempts + 1,
                error=None,
            )
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            return None
        return session.get(Run, run_id)


def heartbeat(run_id: int) -> bool:
    """Refresh the lease; returns True when cancellation was requested."""
    with write_session() as session:
        session.execute(
            update(Run)
            .where(col(Run.id) == run_id, col(Run.status) == "running")
            .values(heartbeat_at=utcnow())
        )
        run = session.get(Run, run_id)
        return bool(run and run.cancel_requested)


def set_progress(run_id: int, done: int, total: int, message: str = "") -> None:
    with write_session() as session:
        session.execute(
            update(Run)
            .where(col(Run.id) == run_id)
            .values(
                progress_done=done,
                progress_total=total,
                message=message[:500],
                heartbeat_at=utcnow(),
            )
        )


def finish(
    run_id: int,
    status: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    if status not in (*FINAL, "interrupted"):
        raise ValueError(status)
    with write_session() as session:
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if result is not None:
            values["result"] = result
        session.execute(update(Run).where(col(Run.id) == run_id).values(**values))


def update_provenance(run_id: int, extra: dict[str, Any]) -> None:
    with write_session() as session:
        run = session.get(Run, run_id)
        if run is not None:
            run.provenance = {**run.provenance, **extra}
            session.add(run)


def request_cancel(run_id: int) -> Run:
    """Ask a run to stop. A queued run is cancelled at once; a running one at its next check."""
    with write_session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"Run #{run_id} does not exist.")
        if run.status in FINAL:
            raise JobError(f"Run #{run_id} already {run.status}; nothing to cancel.")
        run.cancel_requested = True
        if run.status in ("queued", "interrupted"):
            run.status = "cancelled"
            run.finished_at = utcnow()
        session.add(run)
        for child in session.exec(select(Run).where(Run.parent_id == run_id)).all():
            if child.status not in FINAL:
                child.cancel_requested = True
                session.add(child)
        return run


def prepare_resume(run_id: int) -> Run:
    """Put a failed, cancelled or interrupted run back in the queue (same row, same seed)."""
    with write_session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"Run #{run_id} does not exist.")
        if run.status in ACTIVE:
            raise JobError(f"Run #{run_id} is {run.status}; only a stopped run can be resumed.")
        if run.status == "succeeded":
            raise JobError(f"Run #{run_id} already succeeded; start a new run instead.")
        run.status = "queued"
        run.cancel_requested = False
        run.error = None
        run.finished_at = None
        session.add(run)
        return run


def reap(stale_after_s: float = STALE_AFTER_S) -> list[int]:
    """Runs whose worker died (stale heartbeat) become interrupted; returns those to re-queue."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    requeue: list[int] = []
    with write_session() as session:
        stale = session.exec(
            select(Run).where(Run.status == "running", col(Run.heartbeat_at) < cutoff)
        ).all()
        for run in stale:
            run.status = "interrupted"
            run.message = f"worker {run.worker} stopped answering; will resume"
            if run.cancel_requested:
                run.status = "cancelled"
                run.finished_at = utcnow()
            elif run.attempts >= MAX_ATTEMPTS:
                run.status = "failed"
                run.error = f"gave up after {run.attempts} attempts (the worker kept dying)"
                run.finished_at = utcnow()
            elif run.parent_id is None:
                requeue.append(run.id)  # type: ignore[arg-type]
            session.add(run)
    return requeue


def list_runs(study_id: int | None = None, limit: int = 50) -> list[Run]:
    with read_session() as session:
        query = select(Run).order_by(col(Run.id).desc()).limit(limit)
        if study_id is not None:
            query = query.where(Run.study_id == study_id)
        return list(session.exec(query).all())


class Heartbeat:
    """A background thread that keeps a run's lease alive and notices cancellation."""

    def __init__(self, run_id: int, interval: float = HEARTBEAT_S):
        self.run_id, self.interval = run_id, interval
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"hb-{run_id}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval * 2)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if heartbeat(self.run_id):
                    self.cancelled.set()
            except Exception:  # a busy database must not kill the run; try next beat
                continue


def elapsed(start: datetime | None, end: datetime | None = None) -> float | None:
    if start is None:
        return None
    end = end or utcnow()
    if start.tzinfo is None and end.tzinfo is not None:
        end = end.replace(tzinfo=None)
    return (end - start).total_seconds()


def assert_not_cancelled(hb: Heartbeat) -> None:
    if hb.cancelled.is_set():
        raise Cancelled()
