"""What the read queries share: filter sentinels, small formatting helpers, rounds, the
study's task examples and its scoring mode."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlmodel import Session, col, select

from teachlab.db import Round, Study, queries, read_session
from teachlab.errors import ConfigError, TeachlabError
from teachlab.rounds import checked_task, load_round
from teachlab.settings import get_settings

ALL = "all"  # the filter value that means "no filter"
DRAFT_STATUSES = ("ok", "rejected", "duplicate")
ACTIVE_RUN = ("queued", "running", "interrupted")
CURVE_METRICS = ("loss", "rewards/margins", "rewards/accuracies", "mean_token_accuracy")


def clip(text: str | None, n: int = 80) -> str:
    """One line of at most ``n`` characters (for table cells)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def aware(dt: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were written in UTC.
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def as_id(value: object, what: str = "Round") -> int | None:
    """A row id from a widget (a dropdown may hold typed text); None when nothing is chosen."""
    if value is None or value == "" or value == 0:
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not an id; pick one from the list.") from None


def given(value: str | None) -> bool:
    return bool(value) and value != ALL


# ---------------------------------------------------------------- studies and rounds


def round_options(study_id: int) -> list[tuple[str, int]]:
    """(label, round id) for a study's rounds, newest first."""
    with read_session() as session:
        rows = session.exec(
            select(Round).where(Round.study_id == study_id).order_by(col(Round.index).desc())
        ).all()
    return [(f"Round {r.index} ({r.status})", r.id) for r in rows]  # type: ignore[misc]


def study_of_round(round_id: int) -> Study:
    """The study a round belongs to (NotFoundError when the round is gone)."""
    return load_round(round_id).study


@lru_cache(maxsize=8)
def _examples(task_ref: str, data_dir: str, fingerprint: str | None) -> tuple[Any, ...] | None:
    try:
        # A task whose data changed since the study was made is refused: indices point elsewhere.
        return checked_task(task_ref, fingerprint).examples
    except TeachlabError:
        return None


def task_examples(study: Study) -> tuple[Any, ...] | None:
    """The study's task examples (probe inputs, gold answers), or None if the data is missing."""
    data_dir = str(get_settings().data_dir)
    return _examples(study.task_ref, data_dir, study.splits.get("task_fingerprint"))


def scoring_mode(study: Study, session: Session, round_id: int) -> str | None:
    """The mode whose probe results a page shows: the study's own when stored, else any."""
    return queries.scoring_mode(session, round_id, (study.config or {}).get("scorer"))


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    start, end = aware(start), aware(end)
    return (end - start).total_seconds() if start and end else None
