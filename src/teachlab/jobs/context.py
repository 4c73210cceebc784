"""What a running stage may ask of its job: report progress, log, check for cancellation.

Stages take a ``StageContext`` so they run the same under the worker, the CLI and tests.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger("teachlab")


class Cancelled(Exception):
    """Raised inside a stage when its run was cancelled; the worker records the state."""


class StageContext(Protocol):
    db_path: Path | None
    run_id: int | None
    seed: int

    def progress(self, done: int, total: int, message: str = "") -> None: ...
    def log(self, message: str) -> None: ...
    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` if someone asked to stop this run."""
        ...


@dataclass
class LocalContext:
    """A context for direct calls (tests, notebooks): logs to the logger, never cancelled."""

    db_path: Path | None = None
    run_id: int | None = None
    seed: int = 0
    events: list[tuple[int, int, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.events.append((done, total, message))

    def log(self, message: str) -> None:
        self.lines.append(message)
        log.info(message)

    def check_cancelled(self) -> None:
        return None
