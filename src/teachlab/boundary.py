"""The error boundary the CLI, the web app and the worker share: an exception becomes one line
that says what happened and what to do; its traceback goes to the log, never to the screen.
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback
from pathlib import Path

from teachlab.errors import TeachlabError, explain

log = logging.getLogger("teachlab")


def log_file() -> Path:
    """Where tracebacks go: ``<storage>/logs/teachlab.log``, or the temporary folder when the
    storage folder is what cannot be written."""
    storage = Path(os.environ.get("TEACHLAB_STORAGE") or "storage")
    for folder in (storage / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "teachlab.log"
            with path.open("a", encoding="utf-8"):
                pass
            return path
        except OSError:
            continue
    return Path(os.devnull)


def one_line(exc: BaseException) -> str:
    """The message for ``exc``: the TeachLab error it stands for, or, for an unexpected one, a
    line naming it as a bug and where its traceback was written."""
    known = explain(exc)
    path = log_file()
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write("".join(traceback.format_exception(exc)) + "\n")
    except OSError:
        pass
    if known is not None:
        return str(known)
    return (
        f"unexpected {type(exc).__name__}: {str(exc)[:200]} — this is a bug in TeachLab; the "
        f"traceback is in {path}"
    )


__all__ = ["TeachlabError", "log_file", "one_line"]
