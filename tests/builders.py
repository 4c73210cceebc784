"""Composable builders for test data: studies, rounds, drafts, pairs and runs in the test's
own database, through the project's entry points where one exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def use_storage(folder: Path) -> Iterator[Path]:
    """Point the process's store (and every other storage path) at another folder for a while,
    for tests that compare two databases; the test's own storage comes back afterwards."""
    from teachlab.db import init_db
    from teachlab.settings import get_settings

    before = os.environ.get("TEACHLAB_STORAGE")
    os.environ["TEACHLAB_STORAGE"] = str(folder)
    get_settings.cache_clear()
    try:
        init_db()
        yield folder
    finally:
        if before is None:
            os.environ.pop("TEACHLAB_STORAGE", None)
        else:
            os.environ["TEACHLAB_STORAGE"] = before
        get_settings.cache_clear()
