"""Bring a study database to the current schema with Alembic (from empty or an older version)."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from teachlab.db.engine import engine_for
from teachlab.settings import get_settings

MIGRATIONS = Path(__file__).parent / "migrations"
_done: set[str] = set()
_lock = threading.Lock()


def alembic_config(path: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    return cfg


def current_revision(path: Path | None = None) -> str | None:
    path = (path or get_settings().db_path).resolve()
    with engine_for(path).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config(Path("x.db"))).get_current_head()
    assert head is not None
    return head


def init_db(path: Path | None = None, revision: str = "head") -> Path:
    """Create or upgrade the database in place; cheap after the first call per process."""
    path = (path or get_settings().db_path).resolve()
    key = f"{path}@{revision}"
    with _lock:
        if key in _done:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = alembic_config(path)
        with engine_for(path).begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        _done.add(key)
    return path


def forget_init_cache() -> None:
    with _lock:
        _done.clear()
