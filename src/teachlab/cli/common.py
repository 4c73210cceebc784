"""What the sub-commands share: tables, the one-line progress bar, settings given as
``--set key=value``, and the name recorded for a terminal user."""

from __future__ import annotations

import getpass
from typing import Any

import typer

from teachlab.errors import ConfigError


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as left-aligned text columns."""
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def quiet_library_bars() -> None:
    """Hide the libraries' own progress bars (weights loading, dataset maps): one line of ours
    per stage says the same, and theirs would break it up."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


def echo_progress(done: int, total: int, message: str) -> None:
    """A stage's progress as one line redrawn in place on standard error."""
    width = 30
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    typer.echo(f"\r[{bar}] {done}/{total} {message[:60]:<60}", nl=False, err=True)
    if total and done >= total:
        typer.echo("", err=True)


def cli_user() -> str:
    """Who a run or an override is recorded as when it comes from a terminal."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` items as typed study settings (each checked like the form's fields)."""
    from teachlab.config import StudyConfig

    out: dict[str, Any] = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: use key=value, for example --set n_questions=16.")
        key, value = item.split("=", 1)
        out[key.strip()] = StudyConfig.parse(key.strip(), value)
    return out
