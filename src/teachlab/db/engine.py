"""SQLite engines and sessions for the study store.

Facts designed by (see the project's reliability notes): WAL mode, ``synchronous=FULL``
(annotations are irreplaceable), foreign keys on every connection, a busy timeout, and
``BEGIN IMMEDIATE`` for every write transaction so a second writer waits instead of failing
with "database is locked". Reads use a separate engine with deferred transactions so they
never queue behind writers. One session per handler call; engines are per process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from teachlab.settings import get_settings

BUSY_TIMEOUT_MS = 15_000

_engines: dict[tuple[int, str, bool], Engine] = {}
_lock = threading.Lock()


def _make_engine(path: Path, write: bool) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        pool_pre_ping=False,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def engine_for(path: Path | None = None, *, write: bool = True) -> Engine:
    """The process's engine for a database file (created lazily, never shared across fork)."""
    path = (path or get_settings().db_path).resolve()
    key = (os.getpid(), str(path), write)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = _engines[key] = _make_engine(path, write)
        return engine


def dispose_all() -> None:
    """Close every engine of this process (tests; before exec of a worker)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def write_session(path: Path | None = None) -> Iterator[Session]:
    """A session whose transaction starts with BEGIN IMMEDIATE; commits on success."""
    with Session(engine_for(path, write=True), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_session(path: Path | None = None) -> Iterator[Session]:
    """A read-only session (deferred transaction; never blocks writers in WAL mode)."""
    # Closing (not rolling back) ends the transaction without expiring loaded rows, so
    # callers can use them after the block.
    with Session(engine_for(path, write=False), expire_on_commit=False) as session:
        yield session
