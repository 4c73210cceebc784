"""Runs: status with progress and ETA, the newest active run, metric curves, the log tail,
the runs table and the equivalent command line."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import func
from sqlmodel import col, select

from teachlab.db import Metric, Round, Run, read_session
from teachlab.db.tables import utcnow
from teachlab.errors import NotFoundError
from teachlab.settings import get_settings
from teachlab.views.common import ACTIVE_RUN, CURVE_METRICS, aware, clip, seconds_between

RUN_COLUMNS = ["id", "kind", "round", "status", "progress", "message", "requested_by", "created"]


@dataclass(frozen=True)
class RunStatus:
    run: Run
    fraction: float | None
    elapsed_s: float | None
    eta_s: float | None
    child: Run | None  # the stage a round run is in now


def eta_seconds(done: int, total: int, elapsed_s: float | None) -> float | None:
    """Remaining time at the pace so far; None before the first item or without a total."""
    if elapsed_s is None or total <= 0 or done <= 0 or done >= total:
        return None
    return elapsed_s * (total - done) / done


def latest_run(study_id: int) -> Run | None:
    """The study's newest active top-level run, else its newest run (what the page shows)."""
    with read_session() as session:
        base = select(Run).where(Run.study_id == study_id, col(Run.parent_id).is_(None))
        run = session.exec(
            base.where(col(Run.status).in_(ACTIVE_RUN)).order_by(col(Run.id).desc())
        ).first()
        return run or session.exec(base.order_by(col(Run.id).desc())).first()


def run_status(run_id: int, now: datetime | None = None) -> RunStatus:
    with read_session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"Run #{run_id} does not exist; pick a run from the list.")
        child = session.exec(
            select(Run).where(Run.parent_id == run_id).order_by(col(Run.id).desc())
        ).first()
    end = run.finished_at or (now or utcnow())
    elapsed = seconds_between(run.started_at, end)
    fraction = run.progress_done / run.progress_total if run.progress_total > 0 else None
    eta = (
        eta_seconds(run.progress_done, run.progress_total, elapsed)
        if run.status == "running"
        else None
    )
    return RunStatus(run, fraction, elapsed, eta, child)


def run_tree_ids(run_id: int) -> list[int]:
    with read_session() as session:
        kids = session.exec(select(Run.id).where(Run.parent_id == run_id)).all()
    return [run_id, *(k for k in kids if k is not None)]


def metrics_rows(run_id: int, names: tuple[str, ...] = CURVE_METRICS) -> list[dict[str, Any]]:
    """Metric rows of a run and its child stages: {run, kind, step, name, value}."""
    ids = run_tree_ids(run_id)
    with read_session() as session:
        rows = session.exec(
            select(Metric, Run.kind)
            .join(Run, col(Run.id) == Metric.run_id)
            .where(col(Metric.run_id).in_(ids), col(Metric.name).in_(names))
            .order_by(col(Metric.run_id), col(Metric.name), col(Metric.step))
        ).all()
    return [
        {"run": m.run_id, "kind": kind, "step": m.step, "name": m.name, "value": m.value}
        for m, kind in rows
    ]


def metrics_count(run_id: int) -> int:
    """How many metric rows a run and its child stages have written (a cheap change check)."""
    ids = run_tree_ids(run_id)
    with read_session() as session:
        return int(
            session.exec(
                select(func.count()).select_from(Metric).where(col(Metric.run_id).in_(ids))
            ).one()
        )


def log_file(run: Run) -> Path | None:
    """The run's log, only if it lies inside the runs folder (the path comes from the DB)."""
    raw = (run.provenance or {}).get("log") or run.log_path
    if not raw:
        return None
    path = Path(raw).resolve()
    runs_dir = get_settings().runs_dir.resolve()
    return path if path.is_relative_to(runs_dir) and path.is_file() else None


def log_tail(run: Run, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last lines of the run's log (read from the end: logs of long runs grow large)."""
    path = log_file(run)
    if path is None:
        return ""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        data = fh.read()
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def runs_frame(study_id: int, limit: int = 30) -> pd.DataFrame:
    with read_session() as session:
        rows = session.exec(
            select(Run, Round.index)
            .join(Round, col(Round.id) == Run.round_id, isouter=True)
            .where(Run.study_id == study_id)
            .order_by(col(Run.id).desc())
            .limit(limit)
        ).all()
    return pd.DataFrame(
        [
            [
                r.id,
                r.kind if r.parent_id is None else f"  └ {r.kind}",
                index,
                r.status,
                f"{r.progress_done}/{r.progress_total}",
                clip(r.message, 60),
                r.requested_by or "",
                f"{aware(r.created_at):%Y-%m-%d %H:%M}",
            ]
            for r, index in rows
        ],
        columns=RUN_COLUMNS,
    )


def run_options(study_id: int, limit: int = 30) -> list[tuple[str, int]]:
    with read_session() as session:
        rows = session.exec(
            select(Run)
            .where(Run.study_id == study_id, col(Run.parent_id).is_(None))
            .order_by(col(Run.id).desc())
            .limit(limit)
        ).all()
    return [(f"#{r.id} {r.kind} ({r.status})", r.id) for r in rows]  # type: ignore[misc]


def cli_command(study_name: str, kind: str) -> str:
    """The command line that runs the same stage in the foreground."""
    study = shlex.quote(study_name)
    if kind == "round":
        return f"teachlab round run --study {study}"
    return f"teachlab run stage {shlex.quote(kind)} --study {study}"
