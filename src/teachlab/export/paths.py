"""Where exports live: sanitised names inside the exports folder, written atomically.

A name never escapes the folder (``..``, absolute paths, look-alike Unicode, symlinks), and an
export appears whole or not at all: it is written to a hidden temp folder, then renamed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from teachlab.errors import ConfigError, ConflictError, NotFoundError
from teachlab.settings import get_settings

MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_DOTS = re.compile(r"\.{2,}")
HIDDEN = "."  # temp and retired folders start with a dot; no sanitised name can


def exports_root() -> Path:
    root = get_settings().exports_dir
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def safe_name(name: str) -> str:
    """``name`` reduced to ``[A-Za-z0-9_.-]``, no dot runs, no leading dot; ConfigError if empty.

    NFKC first, so full-width or look-alike characters (``．．／``) become their ASCII forms and
    are then replaced like any other unsafe character.
    """
    text = unicodedata.normalize("NFKC", str(name or ""))
    text = _DOTS.sub(".", _UNSAFE.sub("_", text))
    text = text.strip("._-")[:MAX_NAME].rstrip("._-")
    if not text:
        raise ConfigError(
            f"Export name {name!r} has no usable characters; use letters, digits, '_', '-' or '.'."
        )
    return text


def export_dir(name: str, *, must_exist: bool = False) -> Path:
    """The folder of export ``name`` inside the exports folder (refused if it would be outside)."""
    root = exports_root()
    safe = safe_name(name)
    path = (root / safe).resolve()
    # Sanitising already rules out separators and "..": this catches what resolve() adds, such
    # as a symlink planted in the exports folder.
    if path.parent != root or not path.is_relative_to(root):
        raise ConfigError(
            f"Export name {name!r} resolves to {path}, outside the exports folder {root}; "
            "choose another name."
        )
    if must_exist and not path.is_dir():
        raise NotFoundError(f"No export named {safe!r} in {root}; list them with the Export page.")
    return path


def list_exports() -> list[str]:
    """Names of the finished exports, newest first."""
    root = exports_root()
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(HIDDEN)]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


@contextmanager
def atomic_folder(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``target``; on success it replaces ``target`` whole.

    On any error the temp folder is removed and ``target`` is left as it was.
    """
    if target.exists() and not overwrite:
        raise ConflictError(
            f"An export named {target.name!r} exists already; choose another name or overwrite it."
        )
    tmp = Path(tempfile.mkdtemp(prefix=f"{HIDDEN}tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.parent / f"{HIDDEN}old-{target.name}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def zip_export(name: str) -> Path:
    """A zip of the export in a fresh temp folder (outside storage, so the web app may serve it)."""
    folder = export_dir(name, must_exist=True)
    out = Path(tempfile.mkdtemp(prefix="teachlab-export-"))
    return Path(shutil.make_archive(str(out / folder.name), "zip", root_dir=folder))


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """(relative posix path, size in bytes) of every file under ``folder``, sorted."""
    return sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file()
    )
