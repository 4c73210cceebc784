"""The study store: SQLite through SQLModel, migrated by Alembic."""

from __future__ import annotations

from teachlab.db.store import Store, get_store, init_db, read_session, write_session
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
    "Store",
    "Study",
    "get_store",
    "init_db",
    "read_session",
    "write_session",
]
