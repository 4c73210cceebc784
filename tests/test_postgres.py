"""PostgreSQL as the study database (TEACHLAB_DATABASE_URL): the same migrations and tables,
writers serialised across processes, clear refusals of a wrong URL, and a killed executor's run
taken over and finished with no step lost or done twice. The lease tests (test_leases.py) run
on both engines too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect
from sqlmodel import select

from teachlab.db import Metric, Round, Run, Store, Study, get_store, read_session, write_session
from teachlab.db.store import head_revision
from teachlab.errors import ConfigError, StorageError
from teachlab.jobs import runs
from teachlab.settings import Settings

pytestmark = pytest.mark.postgres
HERE = Path(__file__).resolve().parent


def test_migrations_reach_head_and_match_the_models_and_sqlite(pg_url: str, storage: Path) -> None:
    store = get_store()
    assert store.engine_name == "postgresql" and store.revision() == head_revision()
    command.check(store.alembic_config())  # raises where tables and migrations disagree
    sqlite = Store(storage / "same.db").migrate()

    def columns(of: Store) -> dict[str, set[str]]:
        found = inspect(of.engine())
        return {t: {c["name"] for c in found.get_columns(t)} for t in found.get_table_names()}

    assert columns(store) == columns(sqlite)


def test_concurrent_read_modify_writes_lose_no_update(pg_url: str) -> None:
    """Eight threads add one to a counter 25 times each, every time reading it first: the write
    lock serialises them, as BEGIN IMMEDIATE does on SQLite."""
    with write_session() as s:
        study = Study(name="counter", task_ref="bigbench:x", teacher="t", student="s")
        s.add(study)
        s.flush()
        study_id = study.id

    def bump() -> None:
        for _ in range(25):
            with write_session() as s:
                row = s.get(Study, study_id)
                assert row is not None
                row.seed += 1
                s.add(row)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with read_session() as s:
        assert s.get(Study, study_id).seed == 200  # type: ignore[union-attr]


def test_a_wrong_or_unreachable_database_url_is_refused_clearly(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from teachlab.db.store import reset
    from teachlab.settings import get_settings

    with pytest.raises(ConfigError, match="names a 'mysql' database"):
        Settings(database_url="mysql://u:p@h/db")
    with pytest.raises(ConfigError, match="is not a URL"):
        Settings(database_url="teachlab.db")
    port = postgres_server.rsplit(":", 1)[1].split("/")[0]
    for url, reason in (
        ("postgresql://teachlab:secret@127.0.0.1:1/x", "refused"),
        (f"postgresql://teachlab:secret@127.0.0.1:{port}/no_such_db", "does not exist"),
    ):
        monkeypatch.setenv("TEACHLAB_DATABASE_URL", url)
        get_settings.cache_clear()
        with pytest.raises(StorageError, match="Could not reach the study database") as refused:
            get_store().migrate()
        assert reason in str(refused.value) and "secret" not in str(refused.value)
        assert "teachlab:***@127.0.0.1" in str(refused.value)
        reset()


def test_a_killed_executors_run_is_taken_over_with_no_step_lost_or_done_twice(
    pg_url: str,
) -> None:
    """Two executors on one PostgreSQL database: the first is SIGKILLed mid-stage; once its
    lease is stale the second takes the run over, skips the steps already stored, finishes."""
    import time

    with write_session() as s:
        study = Study(name="takeover", task_ref="bigbench:x", teacher="t", student="s")
        s.add(study)
        s.flush()
        rnd = Round(study_id=study.id, index=0, teacher="t", student="s")  # type: ignore[arg-type]
        s.add(rnd)
        s.flush()
        study_id, round_id = study.id, rnd.id
    run = runs.create_run(study_id, "check", round_id=round_id)  # type: ignore[arg-type]
    env = {**os.environ, "TEACHLAB_DATABASE_URL": pg_url}

    def executor(steps: int, interval: float) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                str(HERE / "slowstage.py"),
                str(run.id),
                str(steps),
                str(interval),
                "resume",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    first = executor(40, 0.1)
    deadline = time.monotonic() + 120
    while runs.get_run(run.id).progress_done < 10:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the first executor made no progress"
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    early = executor(40, 0.01)  # while the dead executor's lease still looks alive
    out, _ = early.communicate(timeout=60)
    assert f"run {run.id}: succeeded" not in out.decode()
    assert runs.get_run(run.id).attempts == 1  # type: ignore[arg-type]
    time.sleep(runs.STALE_AFTER_S + 1)
    second = executor(40, 0.01)
    out, _ = second.communicate(timeout=120)
    assert f"run {run.id}: succeeded" in out.decode(), out.decode()
    with read_session() as s:
        rows = s.exec(select(Metric).where(Metric.run_id == run.id)).all()
        final = s.get(Run, run.id)
    steps = sorted(m.step for m in rows)
    assert steps == list(range(1, 41))  # every step once: none lost, none twice
    writers = {m.name for m in rows}
    assert writers == {f"pid{first.pid}", f"pid{second.pid}"}
    assert final is not None and final.status == "succeeded" and final.attempts == 2


def test_a_server_that_goes_away_reads_as_a_storage_error_not_a_bug(pg_url: str) -> None:
    """A query on a connection the server dropped: one clear line at every boundary."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from teachlab.errors import explain

    with read_session() as s:
        raw = s.connection().connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        other = psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
        other.execute("SELECT pg_terminate_backend(%s)", (raw.info.backend_pid,))
        other.close()
        with pytest.raises(OperationalError) as dropped:
            s.exec(select(Study)).all()
    explained = explain(dropped.value)
    assert isinstance(explained, StorageError)
    assert "did not answer" in str(explained) and "TEACHLAB_DATABASE_URL" in str(explained)
    with read_session() as s:  # the pool checks connections: the next session just works
        assert s.exec(select(Study)).all() == []
