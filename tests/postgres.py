"""A real PostgreSQL server for the tests marked ``postgres``: Debian's ``postgresql`` package
(``make test`` installs it), a throwaway cluster on a free loopback port for the session, and a
fresh database for each test that the process's store then points at."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browsing import free_port

BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the package's own user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return list(command)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL cluster that lives as long as the test session."""
    if not BINARIES:
        pytest.fail("no PostgreSQL server in /usr/lib/postgresql; `make test` installs it")
    bin_dir = BINARIES[0]
    root = Path(tempfile.mkdtemp(prefix="teachlab-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "teachlab", "-A", "trust"),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://teachlab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def pg_url(postgres_server: str, storage: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, migrated database on the test server; the process's store points at it."""
    from teachlab.db import init_db
    from teachlab.db.store import reset
    from teachlab.settings import get_settings

    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    _admin(postgres_server, f"CREATE DATABASE {name}")
    url = postgres_server.rsplit("/", 1)[0] + f"/{name}"
    monkeypatch.setenv("TEACHLAB_DATABASE_URL", url)
    get_settings.cache_clear()
    init_db()
    yield url
    reset()
    _admin(postgres_server, f"DROP DATABASE {name} WITH (FORCE)")
