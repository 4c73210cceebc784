"""The study across rounds: evaluations, DPO margins, score distributions, pair counts,
stage times and signal checks, as plain rows for the charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from teachlab.db import Draft, Evaluation, Metric, Pair, Round, Run, read_session
from teachlab.db.tables import SignalCheck
from teachlab.views.common import seconds_between


def _study_rounds(session: Session, study_id: int) -> dict[int, int]:
    return {r.id: r.index for r in session.exec(select(Round).where(Round.study_id == study_id))}  # type: ignore[misc]


def evaluation_rows(study_id: int, db_path: Path | None = None) -> list[dict[str, Any]]:
    """Student accuracy per round: {round, model, shots, accuracy, ci_low, ci_high, n}."""
    with read_session(db_path) as session:
        rounds = _study_rounds(session, study_id)
        evals = session.exec(
            select(Evaluation)
            .where(col(Evaluation.round_id).in_(list(rounds)))
            .order_by(col(Evaluation.id))
        ).all()
    return [
        {
            "round": rounds[e.round_id],
            "model": e.model,
            "shots": e.shots,
            "accuracy": e.accuracy,
            "ci_low": e.ci_low,
            "ci_high": e.ci_high,
            "n": e.n,
        }
        for e in evals
    ]


def dpo_margin_rows(study_id: int, db_path: Path | None = None) -> list[dict[str, Any]]:
    """Teacher DPO reward margins per align run: {run, round, step, value}."""
    with read_session(db_path) as session:
        rounds = _study_rounds(session, study_id)
        rows = session.exec(
            select(Metric, Run.round_id)
            .join(Run, col(Run.id) == Metric.run_id)
            .where(Run.study_id == study_id, Run.kind == "align", Metric.name == "rewards/margins")
            .order_by(col(Metric.run_id), col(Metric.step))
        ).all()
    return [
        {
            "run": m.run_id,
            "round": rounds.get(rid) if rid is not None else None,
            "step": m.step,
            "value": m.value,
        }
        for m, rid in rows
    ]


def score_rows(study_id: int, db_path: Path | None = None) -> list[dict[str, Any]]:
    """Every scored draft of the study: {round, kind, score}."""
    with read_session(db_path) as session:
        rows = session.exec(
            select(Round.index, Draft.kind, Draft.score)
            .join(Round, col(Round.id) == Draft.round_id)
            .where(
                Round.study_id == study_id, Draft.phase == "draft", col(Draft.score).is_not(None)
            )
        ).all()
    return [{"round": i, "kind": k, "score": float(s)} for i, k, s in rows if s is not None]


def pair_count_rows(study_id: int, db_path: Path | None = None) -> list[dict[str, Any]]:
    """Pairs per round by source (auto | human) and status: {round, source, status, count}."""
    with read_session(db_path) as session:
        rows = session.exec(
            select(Round.index, Pair.source, Pair.status, func.count())
            .join(Round, col(Round.id) == Pair.round_id)
            .where(Round.study_id == study_id)
            .group_by(col(Round.index), col(Pair.source), col(Pair.status))
        ).all()
    return [{"round": i, "source": src, "status": st, "count": n} for i, src, st, n in rows]


def stage_time_rows(study_id: int, db_path: Path | None = None) -> list[dict[str, Any]]:
    """Wall time of each finished stage run (the last attempt): {run, round, kind, seconds}."""
    with read_session(db_path) as session:
        rows = session.exec(
            select(Run, Round.index)
            .join(Round, col(Round.id) == Run.round_id, isouter=True)
            .where(
                Run.study_id == study_id,
                Run.kind != "round",
                col(Run.started_at).is_not(None),
                col(Run.finished_at).is_not(None),
            )
            .order_by(col(Run.id))
        ).all()
    return [
        {
            "run": r.id,
            "round": i,
            "kind": r.kind,
            "status": r.status,
            "seconds": seconds_between(r.started_at, r.finished_at),
        }
        for r, i in rows
    ]


def signal_checks(study_id: int, db_path: Path | None = None) -> list[dict[str, Any]]:
    """The newest signal check of each round: {round, level, reasons}."""
    with read_session(db_path) as session:
        rounds = _study_rounds(session, study_id)
        rows = session.exec(
            select(SignalCheck)
            .where(col(SignalCheck.round_id).in_(list(rounds)))
            .order_by(col(SignalCheck.id))
        ).all()
    latest = {c.round_id: c for c in rows}
    return [
        {"round": rounds[rid], "level": c.level, "reasons": list(c.reasons)}
        for rid, c in sorted(latest.items(), key=lambda kv: rounds[kv[0]])
    ]
