"""Review: the pair queue as a table and one pair with what the student did with each side."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlmodel import Session, col, select

from teachlab.db import Draft, Pair, Round, Study, queries, read_session
from teachlab.errors import NotFoundError
from teachlab.views.common import clip

QUEUE_COLUMNS = [
    "id",
    "level",
    "rule",
    "margin",
    "status",
    "source",
    "annotator",
    "chosen",
    "rejected",
]


def queue_frame(pairs: list[Pair]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [
                p.id,
                p.level,
                p.rule,
                round(p.margin, 4),
                p.status,
                p.source,
                p.annotator or "",
                clip(p.chosen, 60),
                clip(p.rejected, 60),
            ]
            for p in pairs
        ],
        columns=QUEUE_COLUMNS,
    )


@dataclass(frozen=True)
class StudentView:
    """What the student did with one side of a pair as its demonstration."""

    draft_id: int
    answer: str | None  # the draft's own answer (rationale) or target (question)
    score: float | None
    marks: str  # ✓/✗ per probe, in probe order
    predictions: list[tuple[int, str, bool]]  # (probe index, predicted, correct)
    rationale_scores: list[float]  # for a question: its rationales' scores


@dataclass
class PairDetail:
    pair: Pair
    chosen: StudentView | None
    rejected: StudentView | None
    baseline: float | None
    question: str | None = None  # a rationale pair's question (None for a question pair)
    metric: str = "accuracy"  # what the scores are: the study's pair_metric


def _student_view(session: Session, draft_id: int | None) -> StudentView | None:
    if draft_id is None:
        return None
    draft = session.get(Draft, draft_id)
    if draft is None:
        return None
    results = session.exec(queries.probe_results(draft_ids=[draft_id])).all()
    if results:  # one mode only (the first stored), so marks line up with the probe order
        results = [r for r in results if r.mode == results[0].mode]
    kids = session.exec(
        select(Draft.score).where(Draft.parent_id == draft_id, col(Draft.score).is_not(None))
    ).all()
    return StudentView(
        draft_id,
        draft.answer if draft.kind == "rationale" else draft.target,
        draft.score,
        "".join("✓" if r.correct else "✗" for r in results),
        [(r.probe_index, r.predicted, r.correct) for r in results],
        [float(s) for s in kids if s is not None],
    )


def pair_detail(pair_id: int) -> PairDetail:
    with read_session() as session:
        pair = session.get(Pair, pair_id)
        if pair is None:
            raise NotFoundError(f"Pair {pair_id} does not exist; reload the review queue.")
        chosen = _student_view(session, pair.chosen_draft_id)
        rejected = _student_view(session, pair.rejected_draft_id)
        base = [
            r.correct
            for r in session.exec(queries.probe_results(round_id=pair.round_id, baseline=True))
        ]
        question = None
        if pair.level == "rationale":
            draft = session.get(Draft, pair.chosen_draft_id) if pair.chosen_draft_id else None
            parent = session.get(Draft, draft.parent_id) if draft and draft.parent_id else None
            question = parent.input if parent is not None else None
        rnd = session.get(Round, pair.round_id)
        study = session.get(Study, rnd.study_id) if rnd is not None else None
        metric = (study.config or {}).get("pair_metric", "accuracy") if study else "accuracy"
    return PairDetail(
        pair, chosen, rejected, sum(base) / len(base) if base else None, question, str(metric)
    )
