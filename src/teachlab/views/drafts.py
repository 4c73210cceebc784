"""Drafts and scores: filtered listings, parse rates, a draft in full with the student's
per-probe answers beside the gold answers and the zero-shot baseline."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import func
from sqlmodel import col, select

from teachlab.db import Draft, Round, Study, queries, read_session
from teachlab.errors import NotFoundError
from teachlab.views.common import ALL, clip, given, scoring_mode, study_of_round, task_examples

DRAFT_COLUMNS = ["id", "kind", "phase", "strategy", "status", "flags", "score", "text", "reason"]
SCORE_COLUMNS = ["id", "kind", "strategy", "score", "margin", "question"]


# ---------------------------------------------------------------- drafts


@dataclass(frozen=True)
class DraftFilter:
    status: str = ALL
    kind: str = ALL
    phase: str = ALL
    strategy: str = ALL
    flag: str = ALL


def drafts_frame(
    round_id: int,
    filters: DraftFilter = DraftFilter(),
    limit: int = 500,
) -> pd.DataFrame:
    """The round's drafts, newest first, filtered; flags are matched in Python (a JSON list)."""

    def wanted(value: str) -> str | None:
        return value if given(value) else None

    query = queries.drafts(
        round_id,
        kind=wanted(filters.kind),
        phase=wanted(filters.phase),
        status=wanted(filters.status),
        order="newest",
    )
    if given(filters.strategy):
        query = query.where(Draft.strategy == filters.strategy)
    rows = []
    with read_session() as session:
        for d in session.exec(query):
            if given(filters.flag) and filters.flag not in (d.flags or []):
                continue
            text = d.input if d.kind == "question" else d.rationale
            rows.append(
                {
                    "id": d.id,
                    "kind": d.kind,
                    "phase": d.phase,
                    "strategy": d.strategy or "",
                    "status": d.status,
                    "flags": ", ".join(d.flags or []),
                    "score": d.score,
                    "text": clip(text or d.raw_output),
                    "reason": clip(d.reason, 60),
                }
            )
            if len(rows) >= limit:
                break
    return pd.DataFrame(rows, columns=DRAFT_COLUMNS)


def draft_filter_options(round_id: int) -> dict[str, list[str]]:
    """The strategies and flags that occur in a round (for the filter dropdowns)."""
    with read_session() as session:
        strategies = session.exec(
            select(Draft.strategy).where(Draft.round_id == round_id).distinct()
        ).all()
        flag_lists = session.exec(select(Draft.flags).where(Draft.round_id == round_id)).all()
    flags = sorted({f for fl in flag_lists for f in (fl or [])})
    return {"strategy": sorted(s for s in strategies if s), "flag": flags}


@dataclass(frozen=True)
class ParseRate:
    round_index: int
    kind: str
    total: int
    ok: int
    rejected: int
    duplicate: int

    @property
    def rate(self) -> float | None:
        """Share of outputs that parsed (duplicates parsed; they were dropped later)."""
        return (self.total - self.rejected) / self.total if self.total else None


def parse_rates(study_id: int) -> list[ParseRate]:
    """Per round and kind: how many teacher outputs parsed (SPEC 3a: show it per round)."""
    with read_session() as session:
        rows = session.exec(
            select(Round.index, Draft.kind, Draft.status, func.count())
            .join(Round, col(Round.id) == Draft.round_id)
            .where(Round.study_id == study_id)
            .group_by(col(Round.index), col(Draft.kind), col(Draft.status))
        ).all()
    counts: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for index, kind, status, n in rows:
        counts[(index, kind)][status] += n
    return [
        ParseRate(index, kind, sum(c.values()), c["ok"], c["rejected"], c["duplicate"])
        for (index, kind), c in sorted(counts.items())
    ]


def drafts_signature(round_id: int) -> tuple[Any, ...]:
    """A cheap fingerprint of a round's drafts: the page redraws only when it changes."""
    with read_session() as session:
        n, last = session.exec(
            select(func.count(), func.max(Draft.id)).where(Draft.round_id == round_id)
        ).one()
        scored = session.exec(
            select(func.count()).where(Draft.round_id == round_id, col(Draft.score).is_not(None))
        ).one()
    return (n, last, scored)


@dataclass(frozen=True)
class ProbeRow:
    probe_index: int
    input: str
    gold: str
    predicted: str
    correct: bool
    gold_logprob: float | None
    margin: float | None
    baseline_predicted: str | None = None
    baseline_correct: bool | None = None


@dataclass
class DraftDetail:
    draft: Draft
    parent: Draft | None
    children: list[Draft]
    probes: list[ProbeRow]
    mode: str | None
    baseline: float | None
    task_available: bool = True
    notes: list[str] = field(default_factory=list)


def draft_detail(draft_id: int) -> DraftDetail:
    """A draft with its parent question or child rationales, and the student's per-probe
    answers beside the gold answers and the zero-shot baseline's answers."""
    with read_session() as session:
        draft = session.get(Draft, draft_id)
        if draft is None:
            raise NotFoundError(f"Draft #{draft_id} does not exist; pick one from the table.")
        rnd = session.get(Round, draft.round_id)
        study = session.get(Study, rnd.study_id) if rnd else None
        if study is None:
            raise NotFoundError(f"Draft #{draft_id} belongs to no study.")
        parent = session.get(Draft, draft.parent_id) if draft.parent_id else None
        children = list(
            session.exec(
                select(Draft).where(Draft.parent_id == draft_id).order_by(col(Draft.id))
            ).all()
        )
        mode = scoring_mode(study, session, draft.round_id)
        results = session.exec(queries.probe_results(draft_ids=[draft_id], mode=mode)).all()
        base = {
            r.probe_index: r
            for r in session.exec(
                queries.probe_results(round_id=draft.round_id, mode=mode, baseline=True)
            )
        }
    examples = task_examples(study)
    probes = []
    for r in results:
        ex = examples[r.probe_index] if examples and 0 <= r.probe_index < len(examples) else None
        b = base.get(r.probe_index)
        probes.append(
            ProbeRow(
                r.probe_index,
                ex.input if ex else "",
                ex.target if ex else "",
                r.predicted,
                r.correct,
                r.gold_logprob,
                r.margin,
                b.predicted if b else None,
                b.correct if b else None,
            )
        )
    baseline = sum(b.correct for b in base.values()) / len(base) if base else None
    detail = DraftDetail(draft, parent, children, probes, mode, baseline, examples is not None)
    if examples is None and results:
        detail.notes.append(
            f"The task data ({study.task_ref}) is not available here, so probe "
            "inputs and gold answers are not shown; fetch it with "
            "`teachlab data fetch`."
        )
    return detail


def probe_frame(rows: list[ProbeRow]) -> pd.DataFrame:
    columns = [
        "probe",
        "input",
        "gold",
        "predicted",
        "correct",
        "gold log-prob",
        "margin",
        "baseline predicted",
        "baseline correct",
    ]
    return pd.DataFrame(
        [
            [
                r.probe_index,
                clip(r.input, 70),
                r.gold,
                r.predicted,
                r.correct,
                r.gold_logprob,
                r.margin,
                r.baseline_predicted,
                r.baseline_correct,
            ]
            for r in rows
        ],
        columns=columns,
    )


# ---------------------------------------------------------------- scores


@dataclass(frozen=True)
class Baseline:
    accuracy: float
    n: int
    mode: str
    margin: float | None


def baseline(round_id: int) -> Baseline | None:
    """The student's zero-shot (no demonstration) result on the probes: ProbeResult rows
    without a draft, in the study's scoring mode."""
    study = study_of_round(round_id)
    with read_session() as session:
        mode = scoring_mode(study, session, round_id)
        rows = session.exec(
            queries.probe_results(round_id=round_id, mode=mode, baseline=True)
        ).all()
    if not rows or mode is None:
        return None
    margins = [r.margin for r in rows if r.margin is not None]
    return Baseline(
        sum(r.correct for r in rows) / len(rows),
        len(rows),
        mode,
        sum(margins) / len(margins) if margins else None,
    )


def scores_frame(round_id: int) -> pd.DataFrame:
    """Scored drafts (phase draft), best first."""
    with read_session() as session:
        drafts = session.exec(
            queries.drafts(round_id, phase="draft", scored=True, order="best")
        ).all()
        parents = queries.questions(session, round_id)
    rows = []
    for d in drafts:
        q = d if d.kind == "question" else parents.get(d.parent_id)
        rows.append(
            [
                d.id,
                d.kind,
                d.strategy or "",
                d.score,
                d.margin_score,
                clip(q.input if q else "", 70),
            ]
        )
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def score_values(round_id: int) -> dict[str, list[float]]:
    """Scores by kind ({'question': [...], 'rationale': [...]}) for the histograms."""
    with read_session() as session:
        rows = session.exec(
            select(Draft.kind, Draft.score).where(
                Draft.round_id == round_id, Draft.phase == "draft", col(Draft.score).is_not(None)
            )
        ).all()
    out: dict[str, list[float]] = {"question": [], "rationale": []}
    for kind, score in rows:
        if score is not None:  # filtered in SQL already; this is for the type checker
            out.setdefault(kind, []).append(float(score))
    return out
