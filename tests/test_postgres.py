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
from tests.conftest import bigbench_available, fault_report

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


@pytest.mark.slow
@pytest.mark.skipif(
    not bigbench_available("sports_understanding"), reason="run `teachlab data fetch` first"
)
def test_two_workers_share_the_database_and_one_finishes_what_a_killed_one_began(
    pg_url: str, storage: Path
) -> None:
    """Two `teachlab worker` processes on one PostgreSQL database and one shared storage
    folder: the one drafting is SIGKILLed (with its run's process) mid-stage; the other takes
    the run over once its lease is stale and finishes it, redoing no teacher call that was
    stored and changing none of what the first one wrote."""
    import time

    from teachlab.db import Draft
    from teachlab.jobs.queue import queue_path
    from teachlab.stages.launch import submit
    from teachlab.studies import create_study

    config = {
        "n_questions": 6,
        "questions_per_call": 1,
        "n_rationales": 1,
        "n_probe": 8,
        "n_test": 12,
        "scaffold": True,
    }
    study = create_study("shared", "bigbench:sports_understanding", config=config)
    assert queue_path().parent.name == "queues"  # this machine's own queue file
    workers = [worker() for _ in range(2)]
    try:
        run = submit(study.id, "draft", requested_by="test").run  # type: ignore[arg-type]

        def stored() -> list[Draft]:
            with read_session() as s:
                return list(s.exec(select(Draft).where(Draft.round_id == run.round_id)).all())

        deadline = time.monotonic() + 300
        while len({d.idem_key for d in stored()}) < 2:
            assert time.monotonic() < deadline, "no teacher call stored in 5 minutes"
            time.sleep(0.2)
        holder = runs.get_run(run.id).worker  # type: ignore[arg-type]
        assert holder is not None
        victim = next(w for w in workers if w.pid == holder_worker(holder, workers))
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and the run's process with it
        victim.wait()
        killed = time.monotonic()
        before = {d.id: d.raw_output for d in stored()}
        calls_before = {d.idem_key for d in stored() if d.kind == "question"}
        while runs.get_run(run.id).status != "succeeded":  # type: ignore[arg-type]
            assert time.monotonic() < deadline + 300, runs.get_run(run.id)  # type: ignore[arg-type]
            time.sleep(0.5)
        finished_s = time.monotonic() - killed
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(timeout=30)
    final = runs.get_run(run.id)  # type: ignore[arg-type]
    after = stored()
    assert final.attempts == 2 and final.worker != holder
    assert {d.id: d.raw_output for d in after if d.id in before} == before  # nothing rewritten
    calls_after = {d.idem_key for d in after if d.kind == "question"}
    # The second attempt made exactly the calls that were not stored yet: none twice.
    assert final.result["questions"]["calls"] == len(calls_after - calls_before)
    ok = [d for d in after if d.kind == "question" and d.status == "ok"]
    assert final.result["questions"]["total_ok"] == len(ok)
    fault_report(
        "two_workers_postgres",
        {
            "calls_stored_before_kill": len(calls_before),
            "calls_made_after_takeover": final.result["questions"]["calls"],
            "drafts_rewritten": 0,
            "attempts": final.attempts,
            "kill_to_finished_s": round(finished_s, 1),
        },
    )


def worker() -> subprocess.Popen[bytes]:
    """`teachlab worker` with this test's database and storage, in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "teachlab", "worker"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def holder_worker(holder: str, workers: list[subprocess.Popen[bytes]]) -> int:
    """The pid of the worker whose child holds a run (``host:pid`` of the child)."""
    child = int(holder.rsplit(":", 1)[1])
    for w in workers:
        group = os.getpgid(child) if os.path.exists(f"/proc/{child}") else None
        if group == w.pid:
            return w.pid
    raise AssertionError(f"no worker owns the run's process {holder}")
