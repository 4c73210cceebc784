"""The work queue: huey on its own SQLite file carries run ids to the worker (one file per
machine when the database is shared: ``queue_path``).

The queue is only a carrier. huey's SQLite storage is at-most-once (a task is removed before
it runs), so the worker re-enqueues what the database says is unfinished at start-up and
every minute. Each run executes in a child process started with a list-form Popen of the
project's own CLI, in the worker's process group, which the app stops as a whole: no orphans.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from huey import SqliteHuey, crontab
from sqlmodel import col, select

from teachlab.db import Run, init_db, read_session
from teachlab.jobs import runs
from teachlab.settings import get_settings

log = logging.getLogger("teachlab.jobs")
CHILD_POLL_S = 1.0
CANCEL_GRACE_S = 20.0
REAP_EVERY_S = 2.0


@lru_cache(maxsize=4)
def _huey_for(path: str) -> tuple[SqliteHuey, Any]:
    huey = SqliteHuey(name="teachlab", filename=path, results=False, utc=True)
    run_task = huey.task(name="run")(_run_task)
    huey.periodic_task(crontab(minute="*"), name="reap")(_reap_task)
    return huey, run_task


def queue_path() -> Path:
    """This machine's queue file. With SQLite one machine does all the work: ``queue.db`` in
    storage. With a shared database (PostgreSQL) the storage folder is shared by every
    machine's workers, and SQLite must not be shared over a network file system: each machine
    gets its own file, and each worker fills it from the database (``recover``), which stays
    the one record of what is to run (a run two machines both queue is claimed by one)."""
    settings = get_settings()
    if settings.database_url is None:
        return settings.storage / "queue.db"
    return settings.storage / "queues" / f"{socket.gethostname()}.db"


def _queue() -> tuple[SqliteHuey, Any]:
    path = queue_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return _huey_for(str(path.resolve()))


def get_huey() -> SqliteHuey:
    return _queue()[0]


def enqueue(run_id: int) -> None:
    _queue()[1](run_id)


def _child_command(run_id: int) -> list[str]:
    return [sys.executable, "-m", "teachlab", "run", "exec", str(run_id)]


def _run_task(run_id: int) -> None:
    """Execute a run in a child process and watch it; runs inside the worker."""
    settings = get_settings()
    child_log = settings.runs_dir / f"run-{run_id:05d}" / "stdout.txt"
    child_log.parent.mkdir(parents=True, exist_ok=True)
    with child_log.open("ab") as out:
        proc = subprocess.Popen(
            _child_command(run_id),
            stdout=out,
            stderr=subprocess.STDOUT,
            # Same process group as the worker: stopping the worker's group stops its runs.
            # Passive OpenMP waiting: spinning threads starve everything else on a shared CPU.
            env={
                "OMP_WAIT_POLICY": "PASSIVE",
                **os.environ,
                "TEACHLAB_STORAGE": str(settings.storage),
            },
        )
        child = f"{socket.gethostname()}:{proc.pid}"  # the lease owner it claims as
        cancel_seen: float | None = None
        while proc.poll() is None:
            time.sleep(CHILD_POLL_S)
            try:
                run = runs.get_run(run_id)
            except Exception:
                continue
            if run.cancel_requested and cancel_seen is None:
                cancel_seen = time.monotonic()
            if cancel_seen and time.monotonic() - cancel_seen > CANCEL_GRACE_S:
                # The stage did not stop at a check point in time: stop its process group.
                _stop(proc)
                runs.stop_unheld(run_id, "cancelled", worker=child)
    # The child died without recording an end (killed, out of memory): resume it, unless
    # another executor holds the run by now (then it is that one's to finish).
    if runs.stop_unheld(
        run_id, "interrupted", worker=child, error=f"process exited with code {proc.returncode}"
    ):
        run = runs.get_run(run_id)
        if run.attempts < runs.MAX_ATTEMPTS and not run.cancel_requested:
            enqueue(run_id)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def recover() -> list[int]:
    """Re-enqueue what the database says is unfinished but the queue has lost."""
    requeue = runs.reap()
    pending: set[int] = set()
    for task in get_huey().pending():
        if task.args:
            pending.add(int(task.args[0]))
    with read_session() as session:
        queued = session.exec(
            select(Run.id).where(
                col(Run.status).in_(("queued", "interrupted")),
                col(Run.parent_id).is_(None),
                col(Run.cancel_requested).is_(False),
            )
        ).all()
    todo = sorted({*requeue, *(int(r) for r in queued if r is not None)} - pending)
    for run_id in todo:
        enqueue(run_id)
    return todo


def _reap_task() -> None:
    recover()


def _exit_with_parent(parent_pid: int) -> None:
    """A worker started by the app stops (with its runs) when the app is gone, however it ended."""

    def watch() -> None:
        while True:
            time.sleep(2.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                log.info("the app (pid %s) is gone; stopping the worker", parent_pid)
                os.killpg(os.getpgrp(), signal.SIGTERM)
                return

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def run_worker() -> None:
    """The worker process: recover lost runs, then consume the queue (one run at a time)."""
    parent = os.environ.get("TEACHLAB_WORKER_PARENT")
    if parent and parent.isdigit():
        _exit_with_parent(int(parent))
    init_db()
    recovered = recover()
    if recovered:
        log.info("re-queued runs %s", recovered)
    threading.Thread(target=_reap_often, daemon=True, name="reaper").start()
    # Poll at least once a second (huey backs off to 10 s when idle): a run re-queued by the
    # reaper is taken over within seconds.
    consumer = get_huey().create_consumer(
        workers=1, worker_type="thread", periodic=True, max_delay=1.0
    )
    consumer.run()


def _reap_often() -> None:
    """Take over runs whose executor died within seconds (huey's periodic tasks run at most
    once a minute): a stale run is queued again here, and claimed by the next free worker."""
    while True:
        time.sleep(REAP_EVERY_S)
        try:
            found = recover()
        except Exception:  # a busy or vanished database: try again at the next tick
            log.exception("recovering lost runs failed")
            continue
        if found:
            log.info("re-queued runs %s", found)


class WorkerProcess:
    """The worker as a child of the app (`teachlab serve`): started and stopped with it."""

    def __init__(self, storage: Path):
        self.storage = storage
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.proc and self.proc.poll() is None:
                return
            log_path = self.storage / "worker.log"
            self.storage.mkdir(parents=True, exist_ok=True)
            out = log_path.open("ab")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "teachlab", "worker"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={
                    **os.environ,
                    "TEACHLAB_STORAGE": str(self.storage),
                    "TEACHLAB_WORKER_PARENT": str(os.getpid()),
                },
            )

    def alive(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    def stop(self) -> None:
        with self._lock:
            if self.proc and self.proc.poll() is None:
                _kill_group(self.proc)
            self.proc = None
