"""The one error hierarchy of TeachLab.

Every message says what happened, why, and what to do. Pages turn these into
``gr.Error``; the CLI prints the message on one line and exits non-zero.
"""

from __future__ import annotations


class TeachlabError(Exception):
    """Base class: a problem the user can act on (never a bug)."""


class ConfigError(TeachlabError):
    """A setting or configuration value is invalid."""


class ModelError(TeachlabError):
    """A model reference cannot be resolved or loaded."""


class DataError(TeachlabError):
    """Task data is missing or malformed."""


class NotFoundError(TeachlabError):
    """A study, round, run or pair does not exist."""


class ConflictError(TeachlabError):
    """A change was made on a stale view (someone else changed the row first)."""


class PermissionDenied(TeachlabError):
    """The user's role does not allow this action."""


class JobError(TeachlabError):
    """A job cannot be started, resumed or cancelled."""


class StorageError(TeachlabError):
    """The storage folder or the study database cannot be used as it is."""


class ResourceError(TeachlabError):
    """The machine ran out of something (memory, disk space)."""


def _storage() -> str:
    """The storage folder, for messages (never raises: settings may be what is broken)."""
    import os

    return os.environ.get("TEACHLAB_STORAGE") or "./storage"


def explain(exc: BaseException) -> TeachlabError | None:
    """The expected failure ``exc`` stands for, as one TeachlabError saying what happened and
    what to do; None when it is not one we know (a bug: report it with its trace).

    Used at every boundary (the CLI, the web app, the worker), so storage faults, a corrupt or
    locked database, bad settings, malformed input and exhausted resources read the same
    everywhere and never show a traceback to the user.
    """
    import errno
    import os
    import sqlite3

    if isinstance(exc, TeachlabError):
        return exc
    cause = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    inner = cause if isinstance(cause, BaseException) else exc
    text = str(inner).lower()
    where = _storage()
    if isinstance(inner, sqlite3.Error):
        if "locked" in text or "busy" in text:
            return StorageError(
                "The study database stayed locked by another process past the 15 s wait; "
                "try again in a moment, or stop the process that holds it (a stuck `teachlab` "
                "command or a tool with the database open)."
            )
        read_only = StorageError(
            f"The study database in {where} is read-only; make the folder and its "
            "teachlab.db writable, or set TEACHLAB_STORAGE to a writable folder."
        )
        if "readonly" in text or "read-only" in text:
            return read_only
        if "unable to open" in text:
            # WAL mode opens its -wal and -shm files beside the database: on a read-only folder
            # (a read-only mount, say) that fails as "unable to open", so say which it is.
            if os.path.isdir(where) and not os.access(where, os.W_OK):
                return read_only
            return StorageError(
                f"Cannot open or create the study database in {where}: the folder is missing, "
                "not a folder, or not writable; set TEACHLAB_STORAGE to a writable folder."
            )
        full = ResourceError(
            f"The disk holding {where} is full; free some space, then try again "
            "(nothing stored was changed by the failed write)."
        )
        if "full" in text:
            return full
        # A full disk often fails first on the -shm file WAL mode maps, as "disk I/O error":
        # that is no damage, and moving the database aside would be the wrong advice.
        if "disk i/o" in text and _free_bytes(where) < 1024 * 1024:
            return full
        if "not a database" in text or "malformed" in text or "disk i/o" in text:
            return StorageError(
                f"The study database {where}/teachlab.db is damaged ({inner}); move it aside "
                "and restore a backup (made with `sqlite3 teachlab.db '.backup copy.db'`), or "
                "move it aside to start an empty one."
            )
        return None
    if type(inner).__module__.startswith("psycopg"):  # PostgreSQL (TEACHLAB_DATABASE_URL)
        if "lock timeout" in text or "canceling statement due to lock" in text:
            return StorageError(
                "The study database stayed locked by another process past the 15 s wait; try "
                "again in a moment, or stop the process that holds it."
            )
        kinds = {base.__name__ for base in type(inner).__mro__}  # AdminShutdown, …
        if kinds & {"OperationalError", "InterfaceError"}:
            return StorageError(
                f"The study database server did not answer ({str(inner).strip()[:200]}); check "
                "that it is up and reachable (TEACHLAB_DATABASE_URL), then try again."
            )
        return None
    if isinstance(exc, OSError):
        named = getattr(exc, "filename", None)
        name = named or where
        if exc.errno == errno.ENOSPC:  # a failed write() names no file: then name none
            writing = f" (writing {named})" if named else ""
            return ResourceError(f"The disk is full{writing}; free some space, then retry.")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StorageError(
                f"{name} is not writable ({exc.strerror}); fix its permissions or set "
                "TEACHLAB_STORAGE to a writable folder."
            )
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            return StorageError(
                f"{name} cannot be created: a part of its path is a file, not a folder; set "
                "TEACHLAB_STORAGE to a folder."
            )
        return None
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return ResourceError(
            "The machine ran out of memory; use smaller settings (batch sizes, n_probe, "
            "max_new_tokens) or a machine with more memory, then resume the run."
        )
    if isinstance(inner, OverflowError) and "sqlite" in text:
        return DataError(
            "A number given is too large to look up or store (the study database takes whole "
            f"numbers up to {2**63 - 1}); check the id or value and try again."
        )
    if isinstance(exc, RecursionError):
        return DataError("The input is nested too deeply to read; flatten it and try again.")
    if type(exc).__name__ == "ValidationError" and hasattr(exc, "errors"):
        return ConfigError(_settings_message(exc))
    return None


def _free_bytes(folder: str) -> int:
    """Free bytes on the disk holding ``folder`` (a large number when that cannot be told)."""
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except (OSError, ValueError):
        return 2**62


def _settings_message(exc: object) -> str:
    """A pydantic-settings error as one line naming the TEACHLAB_ variable and the fix."""
    parts = []
    for error in exc.errors():  # type: ignore[attr-defined]
        field = "_".join(str(p) for p in error.get("loc", ())) or "?"
        given = error.get("input")
        parts.append(f"TEACHLAB_{field.upper()}={given!r}: {error.get('msg', 'invalid')}")
    return "Bad setting " + "; ".join(parts) + " (see the README's settings table)."
