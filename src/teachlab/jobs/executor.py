"""Execute one run in this process: claim it, heartbeat, dispatch to its stage, record the end.

Used by the worker's child process (`teachlab run exec ID`) and by the CLI's foreground runs.
Every write about the run is fenced by the lease taken at the claim: when another executor
takes the run over (this one was paused or cut off past the stale limit), the next heartbeat,
progress write or check raises ``LeaseLost`` and this executor stops without writing more.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlmodel import Session

from teachlab.db import Run, write_session
from teachlab.errors import JobError, TeachlabError, explain
from teachlab.jobs import runs
from teachlab.jobs.context import Cancelled, StageTable
from teachlab.jobs.runs import Lease, LeaseLost
from teachlab.settings import get_settings

log = logging.getLogger("teachlab.jobs")


class RunContext:
    """The StageContext of a recorded run: progress and logs go to the database and a file."""

    def __init__(
        self,
        run: Run,
        lease: Lease,
        heartbeat: runs.Heartbeat,
        stages: StageTable,
        echo: Callable[[int, int, str], None] | None = None,
    ):
        self.run = run
        self.lease = lease
        self.stages = stages  # the table this run was handed (a round runs its stages)
        self.run_id = run.id
        self.seed = run.seed
        self._hb = heartbeat
        self._echo = echo
        self._last_progress = 0.0
        self.run_dir = get_settings().runs_dir / f"run-{run.id:05d}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "log.txt"

    def progress(self, done: int, total: int, message: str = "") -> None:
        if self._hb.lost.is_set():
            raise LeaseLost(f"Run #{self.run_id} was taken over by another executor.")
        now = time.monotonic()
        # Throttle database writes; the last step of a stage is always written.
        if now - self._last_progress >= 0.5 or done >= total:
            self._last_progress = now
            runs.set_progress(self.lease, done, total, message)
        if self._echo:
            self._echo(done, total, message)

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")
        log.info("run %s: %s", self.run_id, message)

    def check_cancelled(self) -> None:
        if self._hb.lost.is_set():
            raise LeaseLost(f"Run #{self.run_id} was taken over by another executor.")
        if self._hb.cancelled.is_set() or runs.heartbeat(self.lease):
            self._hb.cancelled.set()
            raise Cancelled()

    def provenance(self, extra: dict[str, Any]) -> None:
        """Record model and adapter hashes (and the like) with the run."""
        runs.update_provenance(self.lease, extra)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write session that first renews this executor's lease in the same transaction:
        the stage's rows commit only while the run is still ours (LeaseLost otherwise)."""
        with write_session() as session:
            runs.hold(session, self.lease)
            yield session


class ResourceMeter:
    """Peak resident memory of this process while a run executes (sampled twice a second) and
    its wall time; GPU time is the wall time when the run used a CUDA device."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss")

    def _sample(self) -> None:
        import psutil

        self.peak = max(self.peak, psutil.Process().memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ResourceMeter:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval * 2)
        self._sample()

    def figures(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
        torch = sys.modules.get("torch")
        on_gpu = bool(
            torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
        )
        return {
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(self.peak / 2**20, 1),
            "gpu_seconds": round(seconds, 2) if on_gpu else None,
        }


def execute(
    run_id: int,
    stages: StageTable,
    echo: Callable[[int, int, str], None] | None = None,
) -> Run:
    """Run a queued (or interrupted) run to its end in this process; returns the final row.

    ``stages`` is the stage table (``teachlab.stages.STAGES``): the run's kind names its entry.
    """
    claimed = runs.claim(run_id)
    if claimed is None:
        return runs.get_run(run_id)
    run, lease = claimed
    with runs.Heartbeat(lease) as hb:
        ctx = RunContext(run, lease, hb, stages, echo)
        try:
            ctx.provenance({"log": str(ctx.log_path)})
            ctx.log(f"{run.kind} started (attempt {run.attempts}, seed {run.seed})")
            with ResourceMeter() as meter:
                _run_stage(ctx, run, lease, stages, meter)
        except LeaseLost as exc:
            # Another executor holds the run now: it records what happens next, not us.
            ctx.log(f"stopped: {exc}")
    return runs.get_run(run_id)


def _run_stage(
    ctx: RunContext, run: Run, lease: Lease, stages: StageTable, meter: ResourceMeter
) -> None:
    try:
        stage = stages.get(run.kind)
        if stage is None:
            raise JobError(
                f"Run #{run.id} is of kind {run.kind!r}, which this TeachLab does not know; "
                f"known: {', '.join(stages)}."
            )
        result = stage.run(ctx, run)
    except LeaseLost:
        raise
    except Cancelled:
        ctx.log("cancelled")
        runs.finish(lease, "cancelled")
    except TeachlabError as exc:
        ctx.log(f"failed: {exc}")
        runs.finish(lease, "failed", error=str(exc))
    except Exception as exc:
        ctx.log("failed with an unexpected error:\n" + traceback.format_exc())
        known = explain(exc)
        runs.finish(
            lease,
            "failed",
            error=str(known)
            if known
            else f"{type(exc).__name__}: {exc} (the full trace is in the run's log)",
        )
    else:
        ctx.log("succeeded")
        # What this attempt spent, kept with the run (an experiment's costs are read from it).
        ctx.provenance({"resources": meter.figures()})
        runs.finish(lease, "succeeded", result=result)
