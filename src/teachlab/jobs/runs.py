"""Run records: the database, not the queue, is the record of what ran.

A run is inserted as ``queued``, claimed by exactly one executor (a conditional UPDATE that
also takes a new lease generation), kept alive by a heartbeat, and finished as succeeded /
failed / cancelled. Every write about a running run — heartbeat, progress, provenance, finish —
is fenced: it updates the row only while this executor's lease is the current one, and raises
``LeaseLost`` when it matches nothing, so a paused or partitioned executor whose run was taken
over stops at once instead of running beside the new owner.

A run whose heartbeat is older than ``STALE_AFTER_S`` is treated as interrupted everywhere:
the reaper (in the worker, every few seconds) marks it so and queues it again; claim takes it
over directly; resume, cancel and the "one active run per study" check see it as stopped.
Stages skip what is already stored, so a resumed run loses at most the item in flight. At
most one top-level run of a study runs at a time (a round's stages run inside it).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from teachlab.db import Run, read_session, write_session
from teachlab.db.tables import utcnow
from teachlab.errors import JobError, NotFoundError

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 2.0
STALE_AFTER_S = 10.0  # five missed beats: the executor is gone (killed, paused, partitioned)
MAX_ATTEMPTS = 3
_PACKAGES = ("teachlab", "torch", "transformers", "trl", "peft", "gradio", "sqlmodel", "datasets")


class LeaseLost(Exception):
    """This executor no longer holds its run: another one took it over. Stop, write nothing
    (not even a checkpoint: the new owner writes in the same run folder)."""


@dataclass(frozen=True)
class Lease:
    """The right to write a running run: its id and the generation taken when it was claimed."""

    run_id: int
    generation: int


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


def _stale_cutoff(stale_after_s: float = STALE_AFTER_S) -> datetime:
    return utcnow() - timedelta(seconds=stale_after_s)


def _live(cutoff: datetime) -> Any:
    """SQL: the run is queued, or running with a fresh heartbeat."""
    return or_(
        col(Run.status) == "queued",
        (col(Run.status) == "running") & (col(Run.heartbeat_at) >= cutoff),
    )


def _blocking(
    session: Session, study_id: int, *, besides: int | None = None, queued: bool = True
) -> Run | None:
    """Another live top-level run of the study (one at a time: they write the same rows):
    running with a fresh heartbeat, or (``queued``) waiting to run."""
    cutoff = _stale_cutoff()
    live = (
        _live(cutoff)
        if queued
        else (col(Run.status) == "running") & (col(Run.heartbeat_at) >= cutoff)
    )
    query = select(Run).where(Run.study_id == study_id, col(Run.parent_id).is_(None), live)
    if besides is not None:
        query = query.where(col(Run.id) != besides)
    return session.exec(query.order_by(col(Run.id))).first()


def _refuse(clash: Run) -> JobError:
    return JobError(
        f"Run #{clash.id} ({clash.kind}) is still {clash.status} for this study; "
        "wait for it, or cancel it on the Runs page (`teachlab run cancel "
        f"{clash.id}`), before starting another."
    )


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
    reap(requeue=False)  # a run whose executor died does not block the study
    with write_session() as session:
        if parent_id is None:
            clash = _blocking(session, study_id)
            if clash is not None:
                raise _refuse(clash)
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


def claim(run_id: int) -> tuple[Run, Lease] | None:
    """Take a queued, interrupted or stale running run for this process, with a new lease.

    None when someone else holds it, it is finished, or another top-level run of its study is
    running (the run waits in its state until that one ends).
    """
    now = utcnow()
    cutoff = _stale_cutoff()
    with write_session() as session:
        run = session.get(Run, run_id)
        if run is None:
            return None
        # Another top-level run of the study at work: this one waits (a round's own stages
        # run inside their round, which is the top-level run).
        if _blocking(session, run.study_id, besides=run.parent_id or run_id, queued=False):
            return None
        result = session.execute(
            update(Run)
            .where(
                col(Run.id) == run_id,
                or_(
                    col(Run.status).in_(("queued", "interrupted")),
                    (col(Run.status) == "running") & (col(Run.heartbeat_at) < cutoff),
                ),
            )
            .values(
                status="running",
                worker=worker_id(),
                heartbeat_at=now,
                started_at=now,
                attempts=Run.attempts + 1,
                lease=Run.lease + 1,
                error=None,
            )
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            return None
        session.expire_all()
        run = session.get(Run, run_id)
        assert run is not None
        return run, Lease(run_id, run.lease)


def _fenced(session: Session, lease: Lease, **values: Any) -> None:
    """Update the run only while ``lease`` is its current one; LeaseLost otherwise."""
    result = session.execute(
        update(Run)
        .where(
            col(Run.id) == lease.run_id,
            col(Run.lease) == lease.generation,
            col(Run.status) == "running",
        )
        .values(**values)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise LeaseLost(
            f"Run #{lease.run_id} is no longer held by this process (lease {lease.generation}); "
            "another executor took it over or it was stopped."
        )


def hold(session: Session, lease: Lease) -> None:
    """Renew ``lease`` inside ``session``'s write transaction (BEGIN IMMEDIATE: no takeover can
    commit in between), so what the session writes next commits only while the lease holds."""
    _fenced(session, lease, heartbeat_at=utcnow())


def heartbeat(lease: Lease) -> bool:
    """Refresh the lease; returns True when cancellation was requested (LeaseLost if lost)."""
    with write_session() as session:
        _fenced(session, lease, heartbeat_at=utcnow())
        run = session.get(Run, lease.run_id)
        return bool(run and run.cancel_requested)


def set_progress(lease: Lease, done: int, total: int, message: str = "") -> None:
    with write_session() as session:
        _fenced(
            session,
            lease,
            progress_done=done,
            progress_total=total,
            message=message[:500],
            heartbeat_at=utcnow(),
        )


def finish(
    lease: Lease,
    status: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """Record a held run's end (LeaseLost when this process no longer holds it)."""
    if status not in (*FINAL, "interrupted"):
        raise ValueError(status)
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if result is not None:
        values["result"] = result
    with write_session() as session:
        _fenced(session, lease, **values)


def update_provenance(lease: Lease, extra: dict[str, Any]) -> None:
    with write_session() as session:
        run = session.get(Run, lease.run_id)
        if run is None or run.lease != lease.generation or run.status != "running":
            raise LeaseLost(f"Run #{lease.run_id} is no longer held by this process.")
        run.provenance = {**run.provenance, **extra}
        session.add(run)


def stop_unheld(run_id: int, status: str, *, worker: str, error: str | None = None) -> bool:
    """End a running run whose executor process is known to be gone (the worker watched it
    exit): only while that process (``worker``, host:pid) still holds it. True if ended."""
    with write_session() as session:
        result = session.execute(
            update(Run)
            .where(col(Run.id) == run_id, col(Run.status) == "running", col(Run.worker) == worker)
            .values(status=status, finished_at=utcnow(), error=error)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def request_cancel(run_id: int) -> Run:
    """Ask a run to stop. A queued, interrupted or stale one is cancelled at once; a running
    one at its next check."""
    reap(requeue=False)
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
                if child.status in ("queued", "interrupted"):
                    child.status = "cancelled"
                    child.finished_at = utcnow()
                session.add(child)
        return run


def prepare_resume(run_id: int) -> Run:
    """Put a failed, cancelled or interrupted run back in the queue (same row, same seed).

    A run whose executor died without a word (stale heartbeat) counts as interrupted; a run
    is not resumed while another top-level run of its study is live.
    """
    reap(requeue=False)
    with write_session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"Run #{run_id} does not exist.")
        if run.status in ACTIVE:
            raise JobError(
                f"Run #{run_id} is {run.status} (its executor is alive); only a stopped run "
                "can be resumed. Cancel it first to start it over."
            )
        if run.status == "succeeded":
            raise JobError(f"Run #{run_id} already succeeded; start a new run instead.")
        if run.parent_id is None:
            clash = _blocking(session, run.study_id, besides=run_id)
            if clash is not None:
                raise _refuse(clash)
        run.status = "queued"
        run.cancel_requested = False
        run.error = None
        run.finished_at = None
        session.add(run)
        return run


def reap(stale_after_s: float = STALE_AFTER_S, *, requeue: bool = True) -> list[int]:
    """Runs whose executor died (stale heartbeat) become interrupted; returns the top-level
    ones to queue again (none when ``requeue`` is off: the caller only wants the truth)."""
    cutoff = _stale_cutoff(stale_after_s)
    again: list[int] = []
    with read_session() as session:  # the common case, nothing stale, takes no write lock
        if (
            session.exec(
                select(Run.id).where(Run.status == "running", col(Run.heartbeat_at) < cutoff)
            ).first()
            is None
        ):
            return again
    with write_session() as session:
        stale = session.exec(
            select(Run).where(Run.status == "running", col(Run.heartbeat_at) < cutoff)
        ).all()
        for run in stale:
            run.status = "interrupted"
            run.message = f"executor {run.worker} stopped answering; resume it to go on"
            if run.cancel_requested:
                run.status = "cancelled"
                run.finished_at = utcnow()
            elif run.attempts >= MAX_ATTEMPTS:
                run.status = "failed"
                run.error = f"gave up after {run.attempts} attempts (the executor kept dying)"
                run.finished_at = utcnow()
            elif run.parent_id is None and requeue:
                again.append(run.id)  # type: ignore[arg-type]
            session.add(run)
    return again


def list_runs(study_id: int | None = None, limit: int = 50) -> list[Run]:
    with read_session() as session:
        query = select(Run).order_by(col(Run.id).desc()).limit(limit)
        if study_id is not None:
            query = query.where(Run.study_id == study_id)
        return list(session.exec(query).all())


class Heartbeat:
    """A background thread that keeps a run's lease alive and notices cancellation, or that
    the lease was lost (then the run must stop at once)."""

    def __init__(self, lease: Lease, interval: float = HEARTBEAT_S):
        self.lease, self.interval = lease, interval
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        name = f"hb-{lease.run_id}"
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval * 2)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if heartbeat(self.lease):
                    self.cancelled.set()
            except LeaseLost:
                self.lost.set()
                return
            except Exception:  # a busy database must not kill the run; try next beat
                continue


def elapsed(start: datetime | None, end: datetime | None = None) -> float | None:
    if start is None:
        return None
    end = end or utcnow()
    if start.tzinfo is None and end.tzinfo is not None:
        end = end.replace(tzinfo=None)
    return (end - start).total_seconds()
