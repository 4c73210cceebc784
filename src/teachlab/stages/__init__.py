"""The stages of a teaching round, one module each, declared once in ``STAGES``.

The job runner is handed this table (it never imports the stages); the signal gate reads a
stage's ``spends``, the pages its ``help`` and ``live``, the CLI its names, and a whole round
runs the ``in_round`` stages in the table's order.
"""

from __future__ import annotations

from teachlab.errors import JobError
from teachlab.jobs.context import Stage, StageTable
from teachlab.stages.align import stage_align
from teachlab.stages.check import stage_check
from teachlab.stages.distill import stage_distill
from teachlab.stages.draft import stage_draft
from teachlab.stages.evaluate import stage_evaluate
from teachlab.stages.experiment import (
    stage_arm_align,
    stage_arm_distill,
    stage_arm_evaluate,
    stage_arm_regenerate,
    stage_experiment,
)
from teachlab.stages.pairs import stage_pairs
from teachlab.stages.regenerate import stage_regenerate
from teachlab.stages.round import stage_round
from teachlab.stages.score import stage_score

STAGES: StageTable = {
    s.name: s
    for s in (
        Stage(
            "check",
            stage_check,
            "signal check: is the student above chance, are scores reliable?",
            spends=False,  # it measures whether spending is worth it
            in_round=False,
        ),
        Stage("draft", stage_draft, "teacher drafts questions and rationales", live=True),
        Stage("score", stage_score, "student scores each draft on the probe set"),
        Stage("pairs", stage_pairs, "build preference pairs from the scores"),
        Stage("align", stage_align, "DPO-align the teacher on the approved pairs", heavy=True),
        Stage(
            "regenerate", stage_regenerate, "aligned teacher writes the tailored data", live=True
        ),
        Stage("distill", stage_distill, "SFT the student on the tailored data", heavy=True),
        Stage(
            "evaluate",
            stage_evaluate,
            "student before/after on the held-out test split",
            spends=False,  # it measures
        ),
        Stage(
            "round",
            stage_round,
            "whole round: every stage below in order",
            in_round=False,
            live=True,
            heavy=True,
        ),
        # An experiment and its arms' steps: launched by `teachlab experiment run` (or the
        # Compare page), each step a child run of the experiment's run.
        Stage(
            "experiment",
            stage_experiment,
            "every step of an experiment: shared drafts and scores, then each arm",
            in_round=False,
            heavy=True,
            launchable=False,
        ),
        Stage(
            "arm-align",
            stage_arm_align,
            "an arm's teacher aligned on all tasks' pairs",
            in_round=False,
            heavy=True,
            launchable=False,
        ),
        Stage(
            "arm-regenerate",
            stage_arm_regenerate,
            "an arm's teacher writes a task's tailored data",
            in_round=False,
            launchable=False,
        ),
        Stage(
            "arm-distill",
            stage_arm_distill,
            "an arm's student distilled on all tasks' data",
            in_round=False,
            heavy=True,
            launchable=False,
        ),
        Stage(
            "arm-evaluate",
            stage_arm_evaluate,
            "an arm's student on a task's held-out items, every mode and shot count",
            spends=False,
            in_round=False,
            launchable=False,
        ),
    )
}


def stage_named(kind: str) -> Stage:
    """The launchable stage called ``kind``, or an error listing them."""
    stage = STAGES.get(kind)
    if stage is None or not stage.launchable:
        known = ", ".join(s.name for s in STAGES.values() if s.launchable)
        hint = " (an experiment's step: run it with `teachlab experiment run`)" if stage else ""
        raise JobError(f"Unknown stage {kind!r}{hint}; choose one of: {known}.")
    return stage


def round_kinds() -> list[str]:
    """The stages a whole round runs, in order."""
    return [s.name for s in STAGES.values() if s.in_round]


__all__ = ["STAGES", "Stage", "round_kinds", "stage_named"]
