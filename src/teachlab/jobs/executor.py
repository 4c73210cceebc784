"""Execute one run in this process: claim it, heartbeat, dispatch to its stage, record the end.

Used by the worker's child process (`teachlab run exec ID`) and by the CLI's foreground runs.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

from teachlab.db import Run
from teachlab.errors import JobError, TeachlabError
from teachlab.jobs import runs
from teachlab.jobs.context import Cancelled, StageTable
from teachlab.settings import get_settings

log = logging.getLogger("teachlab.jobs")


class RunContext:
    """The StageContext of a recorded run: progress and logs go to the database and a file."""

    def __init__(
        self,
        run: Run,
        heartbeat: runs.Heartbeat,
        stages: StageTable,
        echo: Callable[[int, int, str], None] | None = None,
    ):
        self.run = run
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
        now = time.monotonic()
        # Throttle database writes; the last step of a stage is always written.
        if now - self._last_progress >= 0.5 or done >= total:
            self._last_progress = now
            runs.set_progress(self.run.id, done, total, message)  # type: ignore[arg-type]
        if self._echo:
            self._echo(done, total, message)

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")
        log.info("run %s: %s", self.run_id, message)

    def check_cancelled(self) -> None:
        if self._hb.cancelled.is_set() or runs.heartbeat(self.run.id):  # type: ignore[arg-type]
            self._hb.cancelled.set()
            raise Cancelled()


def execute(
    run_id: int,
    stages: StageTable,
    echo: Callable[[int, int, str], None] | None = None,
) -> Run:
    """Run a queued (or interrupted) run to its end in this process; returns the final row.

    ``stages`` is the stage table (``teachlab.stages.STAGES``): the run's kind names its entry.
    """
    run = runs.claim(run_id)
    if run is None:
        return runs.get_run(run_id)
    with runs.Heartbeat(run_id) as hb:
        ctx = RunContext(run, hb, stages, echo)
        runs.update_provenance(run_id, {"log": str(ctx.log_path)})
        ctx.log(f"{run.kind} started (attempt {run.attempts}, seed {run.seed})")
        try:
            stage = stages.get(run.kind)
            if stage is None:
                raise JobError(
                    f"Run #{run_id} is of kind {run.kind!r}, which this TeachLab does not know; "
                    f"known: {', '.join(stages)}."
                )
            result = stage.run(ctx, run)
        except Cancelled:
            ctx.log("cancelled")
            runs.finish(run_id, "cancelled")
        except TeachlabError as exc:
            ctx.log(f"failed: {exc}")
            runs.finish(run_id, "failed", error=str(exc))
        except Exception as exc:
            ctx.log("failed with an unexpected error:\n" + traceback.format_exc())
            runs.finish(
                run_id,
                "failed",
                error=f"{type(exc).__name__}: {exc} (the full trace is in the run's log)",
            )
        else:
            ctx.log("succeeded")
            runs.finish(run_id, "succeeded", result=result)
    return runs.get_run(run_id)
