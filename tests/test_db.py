"""The study store: migrations from empty and from an older version, pragmas, one writer path."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from sqlmodel import select

from teachlab.db import Round, Store, Study, read_session, write_session
from teachlab.db.store import head_revision, reset


def test_empty_database_migrates_to_head(storage: Path) -> None:
    store = Store(storage / "a.db").migrate()
    path = store.path
    assert store.revision() == head_revision()
    tables = {
        r[0]
        for r in sqlite3.connect(path).execute("select name from sqlite_master where type='table'")
    }
    for name in (
        "study",
        "round",
        "draft",
        "proberesult",
        "pair",
        "annotationevent",
        "run",
        "metric",
        "evaluation",
        "signalcheck",
    ):
        assert name in tables


def test_migrations_match_the_models(storage: Path) -> None:
    store = Store(storage / "a.db").migrate()
    # Raises when the SQLModel tables and the migration scripts disagree.
    command.check(store.alembic_config())


def test_older_database_upgrades_in_place_keeping_rows(storage: Path) -> None:
    path = storage / "old.db"
    store = Store(path).migrate("0001")
    assert store.revision() == "0001"
    # Rows as the 0001 schema has them (today's models have columns it lacks).
    with store.engine().begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO study (name, description, task_ref, teacher, student, backend, seed, "
            "config, splits, guidelines, created_at, archived) VALUES ('kept', '', 'bigbench:x', "
            "'t', 's', 'transformers', 0, '{\"n_probe\": 4}', '{}', '', '2026-01-01', 0)"
        )
        conn.exec_driver_sql(
            'INSERT INTO round (study_id, "index", teacher, student, status, created_at) '
            "VALUES (1, 0, 't', 's', 'open', '2026-01-01')"
        )
    reset()
    store.migrate()
    assert store.revision() == head_revision()
    with store.read() as session:
        kept = session.exec(select(Study)).one()
    assert kept.name == "kept" and kept.config == {"n_probe": 4}
    assert "signalcheck" in {
        r[0] for r in sqlite3.connect(path).execute("select name from sqlite_master")
    }


def test_connections_use_wal_full_sync_and_foreign_keys(db_path: Path) -> None:
    with Store(db_path).engine().connect() as conn:
        assert conn.exec_driver_sql("pragma journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("pragma synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("pragma foreign_keys").scalar() == 1


def test_foreign_keys_are_enforced(db_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), write_session() as session:
        session.add(Round(study_id=999, teacher="t", student="s"))


def test_many_threads_write_without_database_locked(db_path: Path) -> None:
    """Read-then-write transactions from many threads: BEGIN IMMEDIATE makes them wait, not fail."""
    with write_session() as session:
        session.add(Study(name="c", task_ref="x", teacher="t", student="s", seed=0))
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(20):
                with write_session() as session:
                    study = session.exec(select(Study)).one()
                    study.seed += 1
                    session.add(study)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with read_session() as session:
        assert session.exec(select(Study)).one().seed == 160
