"""The queries over drafts, probe results and runs that stages, views and exports share.

Each builder returns a ``select`` for the caller to run in its own session (so a page can
compose several in one read); the few helpers that need rows take that session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from teachlab.db.tables import Draft, ProbeResult, Run

BASELINE = None  # the draft id of zero-shot (no demonstration) probe results


def _ids(value: int | Sequence[int]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


def drafts(
    round_id: int | Sequence[int],
    *,
    kind: str | None = None,
    phase: str | None = None,
    status: str | None = None,
    scored: bool | None = None,
    order: str = "oldest",
) -> SelectOfScalar[Draft]:
    """Drafts of one round (or several), filtered; ``order`` oldest, newest or best (highest
    score first) first."""
    ids = _ids(round_id)
    query = select(Draft).where(
        Draft.round_id == ids[0] if len(ids) == 1 else col(Draft.round_id).in_(ids)
    )
    if kind is not None:
        query = query.where(Draft.kind == kind)
    if phase is not None:
        query = query.where(Draft.phase == phase)
    if status is not None:
        query = query.where(Draft.status == status)
    if scored is not None:
        score = col(Draft.score)
        query = query.where(score.is_not(None) if scored else score.is_(None))
    if order == "best":
        return query.order_by(col(Draft.score).desc(), col(Draft.id))
    return query.order_by(col(Draft.id).desc() if order == "newest" else col(Draft.id))


def questions(session: Session, round_id: int, phase: str | None = None) -> dict[int | None, Draft]:
    """A round's question drafts by id (every status: rationales point to their question), so
    ``questions(...).get(draft.parent_id)`` is a rationale's question."""
    return {d.id: d for d in session.exec(drafts(round_id, kind="question", phase=phase))}


def probe_results(
    *,
    round_id: int | None = None,
    draft_ids: Sequence[int] | None = None,
    mode: str | None = None,
    baseline: bool | None = None,
) -> SelectOfScalar[ProbeResult]:
    """Probe results by round, drafts and mode; ``baseline`` True: zero-shot rows only, False:
    draft rows only. Ordered by draft, mode and probe position."""
    query = select(ProbeResult)
    if round_id is not None:
        query = query.where(ProbeResult.round_id == round_id)
    if draft_ids is not None:
        query = query.where(col(ProbeResult.draft_id).in_(list(draft_ids)))
    if mode is not None:
        query = query.where(ProbeResult.mode == mode)
    if baseline is not None:
        draft = col(ProbeResult.draft_id)
        query = query.where(draft.is_(None) if baseline else draft.is_not(None))
    return query.order_by(
        col(ProbeResult.draft_id), col(ProbeResult.mode), col(ProbeResult.probe_index)
    )


def scored_draft_ids(round_id: int, mode: str) -> Any:
    """The ids of drafts with stored probe results in ``mode`` (None: the baseline)."""
    return (
        select(ProbeResult.draft_id)
        .where(ProbeResult.round_id == round_id, ProbeResult.mode == mode)
        .distinct()
    )


def scoring_mode(session: Session, round_id: int, wanted: str | None) -> str | None:
    """The scoring mode whose results a page shows: the study's own when stored, else any."""
    modes = set(
        session.exec(
            select(ProbeResult.mode).where(ProbeResult.round_id == round_id).distinct()
        ).all()
    )
    if wanted in modes:
        return wanted
    return sorted(modes)[0] if modes else None


def latest_run(round_id: int, kind: str, status: str | None = "succeeded") -> SelectOfScalar[Run]:
    """A round's runs of one kind, newest first (only those in ``status`` unless None)."""
    query = select(Run).where(Run.round_id == round_id, Run.kind == kind)
    if status is not None:
        query = query.where(Run.status == status)
    return query.order_by(col(Run.id).desc())
