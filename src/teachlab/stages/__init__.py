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
    )
}


def stage_named(kind: str) -> Stage:
    """The stage called ``kind``, or an error listing the known ones."""
    stage = STAGES.get(kind)
    if stage is None:
        raise JobError(f"Unknown stage {kind!r}; choose one of: {', '.join(STAGES)}.")
    return stage


def round_kinds() -> list[str]:
    """The stages a whole round runs, in order."""
    return [s.name for s in STAGES.values() if s.in_round]


__all__ = ["STAGES", "Stage", "round_kinds", "stage_named"]
