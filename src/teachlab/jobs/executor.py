"""Execute one run in this process: claim it, heartbeat, dispatch to its stage, record the end.

Used by the worker's child process (`teachlab run exec ID`) and by the CLI's foreground runs.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from teachlab.db import Run
from teachlab.errors import TeachlabError
from teachlab.jobs import runs
from teachlab.jobs.context import Cancelled
from teachlab.settings import get_settings

log = logging.getLogger("teachlab.jobs")

StageFn = Callable[["RunContext", Run], dict[str, Any]]


class RunContext:
    """The StageContext of a recorded run: progress and logs go to the database and a file."""

    def __init__(
        self,
        run: Run,
        heartbeat: runs.Heartbeat,
        db_path: Path | None,
        echo: Callable[[int, int, str], None] | None = None,
    ):
        self.run = run
        self.run_id = run.id
        self.seed = run.seed
        self.db_path = db_path
        self._hb = heartbeat
        self._echo = echo
        self._last_progress = 0.0
        self.run_dir = get_settings().runs_dir / f"run-{run.id:05d}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "log.txt"

    def progress(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        # Throttle database writes; the last step of a stage is always written.
        if now - self._last_progress >= 0.5 or done >= total:
            self._last_progress = now
            runs.set_progress(self.run.id, done, total, message, self.db_path)  # type: ignore[arg-type]
        if self._echo:
            self._echo(done, total, message)

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")
        log.info("run %s: %s", self.run_id, message)

    def check_cancelled(self) -> None:
        if self._hb.cancelled.is_set() or runs.heartbeat(self.run.id, self.db_path):  # type: ignore[arg-type]
            self._hb.cancelled.set()
            raise Cancelled()

    def child(self, run: Run) -> RunContext:
        return RunContext(run, self._hb, self.db_path, self._echo)


def stage_functions() -> Mapping[str, StageFn]:
    from teachlab import pipeline

    return pipeline.STAGES


def execute(
    run_id: int,
    db_path: Path | None = None,
    echo: Callable[[int, int, str], None] | None = None,
) -> Run:
    """Run a queued (or interrupted) run to its end in this process; returns the final row."""
    run = runs.claim(run_id, db_path)
    if run is None:
        return runs.get_run(run_id, db_path)
    with runs.Heartbeat(run_id, db_path) as hb:
        ctx = RunContext(run, hb, db_path, echo)
        runs.update_provenance(run_id, {"log": str(ctx.log_path)}, db_path)
        ctx.log(f"{run.kind} started (attempt {run.attempts}, seed {run.seed})")
        try:
            result = stage_functions()[run.kind](ctx, run)
        except Cancelled:
            ctx.log("cancelled")
            runs.finish(run_id, "cancelled", db_path=db_path)
        except TeachlabError as exc:
            ctx.log(f"failed: {exc}")
            runs.finish(run_id, "failed", error=str(exc), db_path=db_path)
        except Exception as exc:
            ctx.log("failed with an unexpected error:\n" + traceback.format_exc())
            runs.finish(
                run_id,
                "failed",
                error=f"{type(exc).__name__}: {exc} (the full trace is in the run's log)",
                db_path=db_path,
            )
        else:
            ctx.log("succeeded")
            runs.finish(run_id, "succeeded", result=result, db_path=db_path)
    return runs.get_run(run_id, db_path)
