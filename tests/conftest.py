"""Shared fixtures: every test gets its own storage folder (a real SQLite file in it).

The de-quantised bundled models and the fetched BIG-bench data are shared read-only caches
(the repository's storage/), so tests do not redo minute-long work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The browser tests' fixtures (Chromium, a tab, the served app) and the PostgreSQL server's,
# shared by their modules.
pytest_plugins = ("browsing", "postgres")

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("TEACHLAB_TEST_MODEL_CACHE", ROOT / "storage" / "models"))
SHARED_DATA = Path(os.environ.get("TEACHLAB_TEST_DATA_CACHE", ROOT / "storage" / "data"))


@pytest.fixture(autouse=True)
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from teachlab.db.store import reset
    from teachlab.settings import get_settings

    folder = tmp_path / "storage"
    folder.mkdir()
    for key in list(os.environ):
        if key.startswith("TEACHLAB_") and not key.startswith("TEACHLAB_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TEACHLAB_STORAGE", str(folder))
    monkeypatch.setenv("TEACHLAB_MODEL_CACHE", str(SHARED_MODELS))
    monkeypatch.setenv("TEACHLAB_DATA_CACHE", str(SHARED_DATA))
    monkeypatch.setenv("TEACHLAB_OFFLINE", "1")
    get_settings.cache_clear()
    yield folder
    reset()
    get_settings.cache_clear()


@pytest.fixture
def db_path(storage: Path) -> Path:
    """The test's study database, migrated (the process's store points at it)."""
    from teachlab.db import init_db

    return init_db().path


def bigbench_available(name: str = "date_understanding") -> bool:
    return (SHARED_DATA / "bigbench" / name / "task.json").is_file()


def fault_report(name: str, figures: dict) -> None:
    """Keep a fault test's figures for docs/reliability.md, as JSON in the folder that
    TEACHLAB_TEST_FAULT_REPORT names (nothing when it is unset)."""
    import json

    folder = os.environ.get("TEACHLAB_TEST_FAULT_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))
