"""What a stage is to the job runner, and what a running stage may ask of its job: report
progress, log, check for cancellation.

Stages take a ``StageContext`` so they run the same under the worker, the CLI and tests. The
stages themselves are declared once, as ``Stage`` records, in ``teachlab.stages``; the runner
is handed that table and never imports it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlmodel import Session

    from teachlab.db import Run

log = logging.getLogger("teachlab")


class Cancelled(Exception):
    """Raised inside a stage when its run was cancelled; the worker records the state."""


class StageContext(Protocol):
    run_id: int | None
    seed: int

    def progress(self, done: int, total: int, message: str = "") -> None: ...
    def log(self, message: str) -> None: ...
    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` if someone asked to stop this run."""
        ...

    def provenance(self, extra: dict[str, Any]) -> None:
        """Record model and adapter hashes (and the like) with the run."""
        ...

    def write(self) -> AbstractContextManager[Session]:
        """A write session for the stage's results that commits only while the run is still
        this executor's (a taken-over executor writes nothing)."""
        ...


@dataclass(frozen=True)
class Stage:
    """One stage as the runner, the signal gate, the pages and the CLI know it."""

    name: str
    run: Callable[[Any, Run], dict[str, Any]]  # (RunContext, its Run) -> the run's result
    help: str  # one line: what the stage does
    spends: bool = True  # spends compute on the student's preferences: a "stop" check holds it
    in_round: bool = True  # one of a whole round's stages, run in table order
    live: bool = False  # writes rows as it goes that a page follows live (drafts)
    heavy: bool = False  # trains models for minutes: off in a public demo
    launchable: bool = True  # launched on its own (Runs page, `run stage`); else by its parent


StageTable = Mapping[str, Stage]


@dataclass
class LocalContext:
    """A context for direct calls (tests, notebooks): logs to the logger, never cancelled."""

    run_id: int | None = None
    seed: int = 0
    events: list[tuple[int, int, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    recorded: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.events.append((done, total, message))

    def log(self, message: str) -> None:
        self.lines.append(message)
        log.info(message)

    def check_cancelled(self) -> None:
        return None

    def provenance(self, extra: dict[str, Any]) -> None:
        self.recorded.update(extra)

    def write(self) -> AbstractContextManager[Session]:
        from teachlab.db import write_session

        return write_session()
