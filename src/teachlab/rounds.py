"""A round with its study, settings and task data: the one way stages and views load them.

The task is resolved lazily and checked against the fingerprint stored with the study's
splits, so no stage works on task data that changed under a study (the stored item indices
would point to other examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from teachlab.config import StudyConfig
from teachlab.db import Round, Run, Study, queries, read_session, write_session
from teachlab.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from teachlab.score import Probe
    from teachlab.tasks import Task


def row_id(row: Any) -> int:
    """The primary key of a stored row (typed as optional by SQLModel until it is stored)."""
    if row.id is None:
        raise ValueError(f"{type(row).__name__} has not been stored yet")
    return int(row.id)


def checked_task(task_ref: str, fingerprint: str | None) -> Task:
    """The task ``task_ref`` names, refused when its data no longer has ``fingerprint``."""
    from teachlab.tasks import resolve_task

    task = resolve_task(task_ref)
    if fingerprint and task.fingerprint() != fingerprint:
        raise ConfigError(
            f"The task data of {task_ref} changed since the study was created; the stored "
            "splits no longer point to the same examples. Restore the data or create a new study."
        )
    return task


def study_task(study: Study) -> Task:
    """The study's task data, refused when it changed since the study was created."""
    return checked_task(study.task_ref, (study.splits or {}).get("task_fingerprint"))


def probes_for(task: Task, indices: list[int]) -> list[Probe]:
    """Probe items for the task examples at ``indices``."""
    from teachlab.score import Probe

    return [
        Probe(
            index=i,
            input=task.examples[i].input,
            target=task.examples[i].target,
            choices=tuple(task.examples[i].choices),
        )
        for i in indices
    ]


@dataclass
class LoadedRound:
    """A round, its study and the study's settings; the task data on first use."""

    study: Study
    round: Round
    config: StudyConfig

    @property
    def id(self) -> int:
        return row_id(self.round)

    @property
    def seed_index(self) -> int:
        """The round index that request seeds derive from: an experiment arm's round draws the
        seeds of round 0, which it branches, so arms differ only by their teacher."""
        return 0 if self.round.arm else self.round.index

    @cached_property
    def task(self) -> Task:
        return study_task(self.study)

    def split(self, name: str) -> list[int]:
        """The item indices of one of the study's splits (seed, probe, test)."""
        return [int(i) for i in (self.study.splits or {}).get(name, [])]

    def probes(self, name: str) -> list[Probe]:
        return probes_for(self.task, self.split(name))

    def reload_study(self) -> LoadedRound:
        """The same round with the study row read again (after its splits changed)."""
        with read_session() as session:
            study = session.get(Study, self.study.id)
        if study is None:
            raise NotFoundError(f"Study #{self.study.id} vanished while its round ran.")
        fresh = LoadedRound(study, self.round, self.config)
        if "task" in self.__dict__:
            fresh.task = self.task  # type: ignore[misc]  # the data did not change
        return fresh


def load_round(round_id: int | None) -> LoadedRound:
    """The round ``round_id`` with its study and settings, or a NotFoundError saying so."""
    with read_session() as session:
        rnd = session.get(Round, round_id) if round_id is not None else None
        study = session.get(Study, rnd.study_id) if rnd is not None else None
    if rnd is None or study is None:
        raise NotFoundError(f"Round {round_id} does not exist; choose a round of a study.")
    return LoadedRound(study, rnd, StudyConfig.from_dict(study.config))


def current_round(study_id: int) -> Round:
    """A study's newest round (the one new runs work on)."""
    with read_session() as session:
        rnd = session.exec(
            select(Round).where(Round.study_id == study_id).order_by(col(Round.index).desc())
        ).first()
    if rnd is None:
        raise NotFoundError(f"Study #{study_id} has no round.")
    return rnd


def rounds(study_id: int) -> list[Round]:
    """A study's rounds, oldest first."""
    with read_session() as session:
        return list(
            session.exec(select(Round).where(Round.study_id == study_id).order_by(col(Round.index)))
        )


def stage_result(round_id: int, kind: str) -> dict[str, Any] | None:
    """The result of the round's newest successful run of a stage (None if none succeeded)."""
    with read_session() as session:
        run: Run | None = session.exec(queries.latest_run(round_id, kind)).first()
    return dict(run.result) if run else None


def open_next_round(
    round_id: int, *, teacher_adapter: str | None, student_adapter: str | None
) -> int:
    """Close the round and open the next one from the given adapters; returns its index.

    A round that was already opened (a resumed round run) is left as it is.
    """
    with write_session() as session:
        rnd = session.get(Round, round_id)
        if rnd is None:
            raise NotFoundError(f"Round #{round_id} vanished before it could be closed.")
        rnd.status = "done"
        session.add(rnd)
        existing = session.exec(
            select(Round).where(Round.study_id == rnd.study_id, Round.index == rnd.index + 1)
        ).first()
        if existing is None:
            session.add(
                Round(
                    study_id=rnd.study_id,
                    index=rnd.index + 1,
                    teacher=rnd.teacher,
                    teacher_adapter=teacher_adapter,
                    student=rnd.student,
                    student_adapter=student_adapter,
                )
            )
        return rnd.index + 1
