"""The study store: where the database is, and how sessions on it are opened and migrated.

Facts designed by (see the project's reliability notes): WAL mode, ``synchronous=FULL``
(annotations are irreplaceable), foreign keys on every connection, a busy timeout, and
``BEGIN IMMEDIATE`` for every write transaction so a second writer waits instead of failing
with "database is locked". Reads use a separate engine with deferred transactions so they
never queue behind writers. One session per handler call; engines are per process (never
shared across ``fork``).

PostgreSQL (``TEACHLAB_DATABASE_URL``, for several workers and machines on one database) keeps
the same guarantee: each write transaction first takes one advisory lock, so writers are
serialised as BEGIN IMMEDIATE serialises them, and ``lock_timeout`` plays the busy timeout.

Code asks for ``read_session()`` / ``write_session()``: sessions on the process's store, the
one the settings name. A ``Store`` made for another file serves the few places (migration
tests, tools) that open a database other than the configured one.
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
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from teachlab.errors import StorageError
from teachlab.settings import get_settings

BUSY_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_S = 10
# PostgreSQL: every write transaction first takes this transaction-level advisory lock, so
# writers are serialised exactly as SQLite's BEGIN IMMEDIATE serialises them (each
# read-modify-write in the code relies on that), across processes and machines alike.
WRITE_LOCK = 0x7EAC4_1AB
MIGRATIONS = Path(__file__).parent / "migrations"

_lock = threading.RLock()  # migrate() holds it while it opens an engine
_engines: dict[tuple[int, str, bool], Engine] = {}
_migrated: set[str] = set()


def _make_engine(url: str, write: bool) -> Engine:
    if url.startswith("sqlite:"):
        return _sqlite_engine(url, write)
    return _postgres_engine(url, write)


def _sqlite_engine(url: str, write: bool) -> Engine:
    engine = create_engine(
        url,
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


def _postgres_engine(url: str, write: bool) -> Engine:
    engine = create_engine(
        url,
        pool_pre_ping=True,  # a server restarted under a long-lived worker
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            # The busy timeout's counterpart: a lock held past it fails instead of hanging.
            "options": f"-c lock_timeout={BUSY_TIMEOUT_MS}",
        },
    )
    if write:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")

    return engine


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class Store:
    """One study database: its location, its engines, sessions on it, its schema version.

    Made from a SQLite file's path (``Store(path)``) or any database URL (``Store.at(url)``).
    """

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        if url is None and path is None:
            raise ValueError("a Store needs a path or a url")
        self.path = Path(path).resolve() if path is not None else None
        self.url = url or f"sqlite:///{self.path}"

    @classmethod
    def at(cls, url: str) -> Store:
        if url.startswith("sqlite:///"):
            return cls(Path(url.removeprefix("sqlite:///")))
        return cls(url=url)

    @property
    def engine_name(self) -> str:
        return "sqlite" if self.path is not None else "postgresql"

    def __repr__(self) -> str:
        return f"Store({shown_url(self.url)!r})"

    def engine(self, *, write: bool = True) -> Engine:
        """This process's engine (created lazily; a forked child makes its own)."""
        key = (os.getpid(), self.url, write)
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                if self.path is not None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                engine = _engines[key] = _make_engine(self.url, write)
            return engine

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction holds the write lock (SQLite: BEGIN IMMEDIATE;
        PostgreSQL: an advisory lock); commits on success."""
        with Session(self.engine(write=True), expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (deferred transaction; never blocks writers in WAL mode)."""
        # Closing (not rolling back) ends the transaction without expiring loaded rows, so
        # callers can use them after the block.
        with Session(self.engine(write=False), expire_on_commit=False) as session:
            yield session

    # -- schema ---------------------------------------------------------------------------------

    def alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url)
        return cfg

    def migrate(self, revision: str = "head") -> Store:
        """Create or upgrade the database in place; cheap after the first call per process."""
        from alembic import command

        key = f"{os.getpid()}:{self.url}@{revision}"
        with _lock:
            if key not in _migrated:
                cfg = self.alembic_config()
                try:
                    with self.engine().begin() as conn:
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, revision)
                except OperationalError as exc:
                    if self.path is not None:
                        raise
                    raise StorageError(
                        f"Could not reach the study database at {shown_url(self.url)} "
                        f"({str(exc.orig).strip().splitlines()[0]}); check "
                        "TEACHLAB_DATABASE_URL (user, password, host, port, database name) and "
                        "that the server is up and accepts connections from this machine."
                    ) from exc
                _migrated.add(key)
        return self

    def revision(self) -> str | None:
        """The schema revision the database is at (None when empty)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine().connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest schema revision the code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(Store(Path("x.db")).alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"No migrations found in {MIGRATIONS}")
    return head


def get_store() -> Store:
    """The process's store: the database the settings name (they may change in tests)."""
    return Store.at(get_settings().db_url)


@contextmanager
def read_session() -> Iterator[Session]:
    """A read-only session on the process's store."""
    with get_store().read() as session:
        yield session


@contextmanager
def write_session() -> Iterator[Session]:
    """A write session (BEGIN IMMEDIATE, committed on success) on the process's store."""
    with get_store().write() as session:
        yield session


def init_db() -> Store:
    """Bring the process's store to the current schema (cheap after the first call)."""
    return get_store().migrate()


def reset() -> None:
    """Close every engine of this process and forget what was migrated (tests, tools)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()
