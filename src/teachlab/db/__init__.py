"""The study store: SQLite through SQLModel, migrated by Alembic."""

from __future__ import annotations

from teachlab.db.engine import dispose_all, engine_for, read_session, write_session
from teachlab.db.migrate import init_db
from teachlab.db.tables import (
    AnnotationEvent,
    Draft,
    Evaluation,
    Metric,
    Pair,
    ProbeResult,
    Round,
    Run,
    SignalCheck,
    Study,
)

__all__ = [
    "AnnotationEvent",
    "Draft",
    "Evaluation",
    "Metric",
    "Pair",
    "ProbeResult",
    "Round",
    "Run",
    "SignalCheck",
    "Study",
    "dispose_all",
    "engine_for",
    "init_db",
    "read_session",
    "write_session",
]
