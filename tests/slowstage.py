"""A stand-in executor for the fault tests: `python tests/slowstage.py RUN_ID STEPS INTERVAL
[resume]` claims RUN_ID and runs a "check" stage that writes one Metric row per step (named after
its process id) through the run's fenced session, then reports progress, STEPS times; with
``resume`` it skips the steps an earlier attempt stored.

It is the real runner, leases and database; only the work is a sleep, so kills and pauses can
be timed exactly and what each process wrote can be told apart.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def slow_stage(steps: int, interval: float, resume: bool = False) -> Any:
    from sqlmodel import select

    from teachlab.db import Metric, read_session

    def stage(ctx: Any, run: Any) -> dict[str, Any]:
        me = f"pid{os.getpid()}"
        done: set[int] = set()
        if resume:  # as real stages do: what an earlier attempt stored is not done again
            with read_session() as session:
                done = set(session.exec(select(Metric.step).where(Metric.run_id == run.id)))
        for step in range(1, steps + 1):
            if step in done:
                continue
            ctx.check_cancelled()
            with ctx.write() as session:
                session.add(Metric(run_id=run.id, step=step, name=me, value=float(step)))
            ctx.progress(step, steps, f"{me} step {step}")
            time.sleep(interval)
        return {"writer": me, "steps": steps}

    return stage


def main() -> int:
    from teachlab.jobs import Stage
    from teachlab.jobs.executor import execute

    run_id, steps, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    resume = sys.argv[4:] == ["resume"]
    table = {"check": Stage("check", slow_stage(steps, interval, resume), "a timed stand-in")}
    final = execute(run_id, table)
    print(f"run {run_id}: {final.status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
