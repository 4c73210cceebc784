"""Experiments in the study store: created whole or not at all, with one study per task and seed.

A member study holds its task's splits, probe set and the shared first round (drafts, scores,
pairs), so every arm of that seed sees the same items. An arm's own teacher, tailored data and
student live in an arm round of the member study: a branch of round 0 with a negative index,
so it never becomes the study's current round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from teachlab.db import Round, Study, read_session, write_session
from teachlab.db.tables import Cost, Experiment, ItemResult
from teachlab.errors import ConfigError, NotFoundError
from teachlab.experiments.spec import ARM_KINDS, ExperimentSpec
from teachlab.rounds import row_id

MAX_NAME = 64


def arm_index(arm: str) -> int:
    """An arm round's index: below round 0, one per arm kind."""
    return -(1 + list(ARM_KINDS).index(arm))


def member_name(experiment: str, task_ref: str, seed: int) -> str:
    """``<experiment>.<task>.s<seed>``, in the characters study names allow."""
    task = re.sub(r"[^A-Za-z0-9_.-]+", "-", task_ref.split(":", 1)[-1]).strip("-.")
    name = f"{experiment}.{task}.s{seed}"
    if len(name) > MAX_NAME:  # keep the seed and an unambiguous tail
        name = f"{experiment[: MAX_NAME - len(task) - 12]}.{task[-40:]}.s{seed}"[-MAX_NAME:]
    return name.lstrip(".-_ ") or f"x{seed}"


@dataclass(frozen=True)
class Loaded:
    """An experiment with its spec and its member studies by (task, seed)."""

    row: Experiment
    spec: ExperimentSpec
    members: dict[tuple[str, int], Study]

    @property
    def id(self) -> int:
        return row_id(self.row)

    def member(self, task: str, seed: int) -> Study:
        return self.members[(task, seed)]

    def anchor(self, seed: int) -> Study:
        """The study that holds a seed's pooled steps (its first task's)."""
        return self.members[(self.spec.tasks[0], seed)]


def create_experiment(spec: ExperimentSpec) -> Loaded:
    """Check everything (tasks, splits, models, names), then store the experiment and its
    member studies in one transaction: nothing is stored when anything is wrong."""
    from teachlab.db import init_db
    from teachlab.studies import new_study, save_study

    spec = spec.checked()
    init_db()
    members = [
        new_study(
            member_name(spec.name, task, seed),
            task,
            teacher=spec.teacher,
            student=spec.student,
            backend=spec.backend,
            seed=seed,
            config=spec.study,
            description=f"Experiment {spec.name}: {task}, seed {seed}.",
        )
        for seed in spec.seeds
        for task in spec.tasks
    ]
    with write_session() as session:
        if session.exec(select(Experiment).where(Experiment.name == spec.name)).first():
            raise ConfigError(f"An experiment named {spec.name!r} exists already; choose another.")
        row = Experiment(name=spec.name, spec=spec.to_dict())
        session.add(row)
        session.flush()
        for study in members:
            study.experiment_id = row.id
            save_study(session, study)
    return load_experiment(spec.name)


def find(session: Any, ref: int | str) -> Experiment:
    if isinstance(ref, int) or (str(ref).isascii() and str(ref).isdigit()):
        row = session.get(Experiment, int(ref)) if int(ref) < 2**63 else None
    else:
        row = session.exec(select(Experiment).where(Experiment.name == str(ref))).first()
    if row is None:
        raise NotFoundError(
            f"No experiment {ref!r}; list them with `teachlab experiment list`, or create one "
            "with `teachlab experiment create`."
        )
    return row


def load_experiment(ref: int | str) -> Loaded:
    with read_session() as session:
        row = find(session, ref)
        studies = session.exec(select(Study).where(Study.experiment_id == row.id)).all()
    spec = ExperimentSpec.from_dict(row.spec)
    members = {(s.task_ref, s.seed): s for s in studies}
    missing = [(t, s) for s in spec.seeds for t in spec.tasks if (t, s) not in members]
    if missing:
        raise NotFoundError(
            f"Experiment {row.name!r} lost its studies for {missing}; they were deleted. "
            "Create the experiment again under a new name."
        )
    return Loaded(row, spec, members)


def list_experiments() -> list[Experiment]:
    from teachlab.db import init_db

    init_db()
    with read_session() as session:
        return list(session.exec(select(Experiment).order_by(col(Experiment.id))))


def arm_round(study: Study, arm: str) -> Round:
    """The arm's round of a member study, made on first use (a branch of round 0)."""
    index = arm_index(arm)
    with write_session() as session:
        found = session.exec(
            select(Round).where(Round.study_id == study.id, Round.index == index)
        ).first()
        if found is not None:
            return found
        rnd = Round(
            study_id=row_id(study),
            index=index,
            arm=arm,
            teacher=study.teacher,
            student=study.student,
        )
        session.add(rnd)
        session.flush()
        return rnd


def set_adapters(round_id: int, **adapters: str | None) -> None:
    """Record an arm round's teacher or student adapter (``teacher_adapter=…``)."""
    with write_session() as session:
        rnd = session.get(Round, round_id)
        if rnd is None:
            raise NotFoundError(f"Round #{round_id} vanished.")
        for name, value in adapters.items():
            setattr(rnd, name, value)
        session.add(rnd)


def items(experiment_id: int) -> list[ItemResult]:
    with read_session() as session:
        return list(
            session.exec(select(ItemResult).where(ItemResult.experiment_id == experiment_id))
        )


def costs(experiment_id: int) -> list[Cost]:
    with read_session() as session:
        return list(session.exec(select(Cost).where(Cost.experiment_id == experiment_id)))


def record_estimate(experiment_id: int, estimate: dict[str, Any]) -> None:
    with write_session() as session:
        row = session.get(Experiment, experiment_id)
        if row is not None:
            row.estimate = estimate
            session.add(row)
