"""The study across rounds: evaluations, DPO margins, score distributions, pair counts,
stage times, signal checks and the confounds (label mix, length), as plain rows for the charts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from teachlab.config import StudyConfig
from teachlab.db import Draft, Evaluation, Metric, Pair, Round, Run, Study, read_session
from teachlab.db.tables import SignalCheck
from teachlab.errors import NotFoundError
from teachlab.pairs import NO_LABEL
from teachlab.prompts import parse_question_blocks, parse_rationale
from teachlab.review import TRAINED_STATUSES
from teachlab.views.common import seconds_between

PHASES = ("draft", "tailored")  # before alignment (scored for preferences), after (for SFT)
SIDES = ("chosen", "rejected")


def _study_rounds(session: Session, study_id: int) -> dict[int, int]:
    return {r.id: r.index for r in session.exec(select(Round).where(Round.study_id == study_id))}  # type: ignore[misc]


def evaluation_rows(study_id: int) -> list[dict[str, Any]]:
    """Student accuracy per round on the held-out split, as the evaluate stage scores it
    (lm-eval tasks are other numbers): {round, model, shots, accuracy, ci_low, ci_high, n}."""
    with read_session() as session:
        rounds = _study_rounds(session, study_id)
        evals = session.exec(
            select(Evaluation)
            .where(col(Evaluation.round_id).in_(list(rounds)), Evaluation.mode == "loglik")
            .order_by(col(Evaluation.id))
        ).all()
    return [
        {
            "round": rounds[e.round_id],
            "model": e.model,
            "shots": e.shots,
            "accuracy": e.accuracy,
            "ci_low": e.ci_low,
            "ci_high": e.ci_high,
            "n": e.n,
        }
        for e in evals
    ]


def dpo_margin_rows(study_id: int) -> list[dict[str, Any]]:
    """Teacher DPO reward margins per align run: {run, round, step, value}."""
    with read_session() as session:
        rounds = _study_rounds(session, study_id)
        rows = session.exec(
            select(Metric, Run.round_id)
            .join(Run, col(Run.id) == Metric.run_id)
            .where(Run.study_id == study_id, Run.kind == "align", Metric.name == "rewards/margins")
            .order_by(col(Metric.run_id), col(Metric.step))
        ).all()
    return [
        {
            "run": m.run_id,
            "round": rounds.get(rid) if rid is not None else None,
            "step": m.step,
            "value": m.value,
        }
        for m, rid in rows
    ]


def score_rows(study_id: int) -> list[dict[str, Any]]:
    """Every scored draft of the study: {round, kind, score}."""
    with read_session() as session:
        rows = session.exec(
            select(Round.index, Draft.kind, Draft.score)
            .join(Round, col(Round.id) == Draft.round_id)
            .where(
                Round.study_id == study_id, Draft.phase == "draft", col(Draft.score).is_not(None)
            )
        ).all()
    return [{"round": i, "kind": k, "score": float(s)} for i, k, s in rows if s is not None]


def pair_count_rows(study_id: int) -> list[dict[str, Any]]:
    """Pairs per round by source (auto | human) and status: {round, source, status, count}."""
    with read_session() as session:
        rows = session.exec(
            select(Round.index, Pair.source, Pair.status, func.count())
            .join(Round, col(Round.id) == Pair.round_id)
            .where(Round.study_id == study_id)
            .group_by(col(Round.index), col(Pair.source), col(Pair.status))
        ).all()
    return [{"round": i, "source": src, "status": st, "count": n} for i, src, st, n in rows]


def stage_time_rows(study_id: int) -> list[dict[str, Any]]:
    """Wall time of each finished stage run (the last attempt): {run, round, kind, seconds}."""
    with read_session() as session:
        rows = session.exec(
            select(Run, Round.index)
            .join(Round, col(Round.id) == Run.round_id, isouter=True)
            .where(
                Run.study_id == study_id,
                Run.kind != "round",
                col(Run.started_at).is_not(None),
                col(Run.finished_at).is_not(None),
            )
            .order_by(col(Run.id))
        ).all()
    return [
        {
            "run": r.id,
            "round": i,
            "kind": r.kind,
            "status": r.status,
            "seconds": seconds_between(r.started_at, r.finished_at),
        }
        for r, i in rows
    ]


def signal_checks(study_id: int) -> list[dict[str, Any]]:
    """The newest signal check of each round: {round, level, reasons}."""
    with read_session() as session:
        rounds = _study_rounds(session, study_id)
        rows = session.exec(
            select(SignalCheck)
            .where(col(SignalCheck.round_id).in_(list(rounds)))
            .order_by(col(SignalCheck.id))
        ).all()
    latest = {c.round_id: c for c in rows}
    return [
        {"round": rounds[rid], "level": c.level, "reasons": list(c.reasons)}
        for rid, c in sorted(latest.items(), key=lambda kv: rounds[kv[0]])
    ]


# ---------------------------------------------------------------- confounds (SPEC 3a)


def _label(value: str | None) -> str:
    return value.strip() if value and value.strip() else NO_LABEL


def _words(text: str | None) -> int | None:
    return len(text.split()) if text and text.strip() else None


def _teacher(adapter_hash: str | None) -> str:
    # Round r + 1 is drafted with round r's aligned adapter: equal tags across rounds mean the
    # same teacher wrote both.
    return f"aligned · {adapter_hash[:8]}" if adapter_hash else "base"


def _text_label(level: str, text: str, prefill: str) -> str | None:
    """The label a pair's text itself carries (read again after an edit, or for an import)."""
    if level == "rationale":
        return parse_rationale(text)[1]
    parsed = [b.question for b in parse_question_blocks(text, prefill) if b.question is not None]
    return parsed[0].target if parsed else None


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """The pairs DPO trains on, one row per side, and the study settings that chose them."""

    use_unreviewed: bool  # unreviewed automatic pairs count too
    label_balanced: bool
    sides: list[dict[str, Any]]  # {round, pair, level, side, label, words}


def training_set(study_id: int) -> TrainingSet:
    """Both sides of every pair the align stage trains on, in every round of the study.

    The same pairs as ``review.training_pairs``: approved, swapped and edited ones, plus the
    unreviewed proposals when the study's ``use_unreviewed`` is on. A side's label is its
    draft's (a question's target, a rationale's answer); an edited or imported text is read
    again, since that text is what DPO sees. ``words`` is the rationale's length in words
    (None on question pairs).
    """
    with read_session() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise NotFoundError(f"Study #{study_id} does not exist; pick one on the Studies page.")
        cfg = StudyConfig.from_dict(study.config)
        statuses = (*TRAINED_STATUSES, "proposed") if cfg.use_unreviewed else TRAINED_STATUSES
        rounds = _study_rounds(session, study_id)
        # Columns, not whole rows: prompts are most of a pair's and a draft's bytes (and
        # sqlmodel's typed select stops at four columns, hence SQLAlchemy's).
        pairs = session.execute(
            sa_select(
                col(Pair.id),
                col(Pair.round_id),
                col(Pair.level),
                col(Pair.status),
                col(Pair.chosen),
                col(Pair.rejected),
                col(Pair.chosen_draft_id),
                col(Pair.rejected_draft_id),
            )
            .where(col(Pair.round_id).in_(list(rounds)), col(Pair.status).in_(statuses))
            .order_by(col(Pair.id))
        ).all()
        ids = {i for p in pairs for i in p[6:] if i is not None}  # chosen and rejected drafts
        drafts = {
            i: (target if kind == "question" else answer, prefill)
            for i, kind, target, answer, prefill in session.execute(
                sa_select(
                    col(Draft.id),
                    col(Draft.kind),
                    col(Draft.target),
                    col(Draft.answer),
                    col(Draft.prefill),
                ).where(col(Draft.id).in_(ids))
            )
        }
    sides = []
    for pair_id, round_id, level, status, chosen, rejected, chosen_id, rejected_id in pairs:
        for side, text, draft_id in (
            ("chosen", chosen, chosen_id),
            ("rejected", rejected, rejected_id),
        ):
            own, prefill = drafts.get(draft_id, (None, ""))
            label = None
            if draft_id not in drafts or status == "edited":
                label = _text_label(level, text, prefill)
            sides.append(
                {
                    "round": rounds[round_id],
                    "pair": pair_id,
                    "level": level,
                    "side": side,
                    "label": _label(label if label is not None else own),
                    "words": _words(text) if level == "rationale" else None,
                }
            )
    return TrainingSet(cfg.use_unreviewed, cfg.label_balanced, sides)


def draft_mix_rows(study_id: int) -> list[dict[str, Any]]:
    """Every parsed draft before and after alignment: {round, phase, kind, teacher, label, words}.

    ``phase`` "draft" is written by the teacher the round starts from (the original one in
    round 0, round r's aligned one in round r + 1), "tailored" by the round's aligned teacher;
    ``teacher`` says which ("base", or "aligned · " and the adapter's hash). ``label`` is a
    question's target or a rationale's answer; ``words`` a rationale's length in words.
    """
    # Columns, not whole drafts (see training_set); sqlmodel's typed select stops at four.
    with read_session() as session:
        rows = session.execute(
            sa_select(
                col(Round.index),
                col(Draft.phase),
                col(Draft.kind),
                col(Draft.adapter_hash),
                col(Draft.target),
                col(Draft.answer),
                col(Draft.rationale),
            )
            .join(Round, col(Round.id) == Draft.round_id)
            .where(col(Round.study_id) == study_id, col(Draft.status) == "ok")
            .order_by(col(Round.index), col(Draft.id))
        ).all()
    return [
        {
            "round": index,
            "phase": phase,
            "kind": kind,
            "teacher": _teacher(adapter),
            "label": _label(target if kind == "question" else answer),
            "words": _words(rationale) if kind == "rationale" else None,
        }
        for index, phase, kind, adapter, target, answer, rationale in rows
    ]


def _top(labels: Iterable[str]) -> str | None:
    counts = Counter(x for x in labels if x != NO_LABEL)
    return min(counts, key=lambda k: (-counts[k], k)) if counts else None


def _share(labels: Sequence[str], label: str | None) -> float | None:
    return labels.count(label) / len(labels) if labels and label is not None else None


def _mean(values: Iterable[int | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def confound_summary(
    sides: Iterable[dict[str, Any]], drafts: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per round, the figures to read the confounds by (None where there is nothing to count).

    ``label`` is the label the chosen sides carry most (else the draft rationales' commonest
    answer); its share among the chosen and the rejected sides (all levels), and among the
    rationales before (``draft``) and after (``tailored``) alignment, with the teacher that
    wrote most of each; mean rationale length in words of drafts, tailored drafts, and the
    chosen and rejected rationales of the training pairs.
    """
    by_round_sides: dict[int, list[dict[str, Any]]] = {}
    for s in sides:
        by_round_sides.setdefault(s["round"], []).append(s)
    rationales: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for d in drafts:
        if d["kind"] == "rationale":
            rationales.setdefault((d["round"], d["phase"]), []).append(d)
    out = []
    for rnd in sorted(set(by_round_sides) | {r for r, _ in rationales}):
        mine = by_round_sides.get(rnd, [])
        side = {k: [s for s in mine if s["side"] == k] for k in SIDES}
        labels = {k: [s["label"] for s in side[k]] for k in SIDES}
        phase = {k: rationales.get((rnd, k), []) for k in PHASES}
        answers = {k: [d["label"] for d in phase[k]] for k in PHASES}
        label = _top(labels["chosen"]) or _top(answers["draft"]) or _top(answers["tailored"])
        row: dict[str, Any] = {"round": rnd, "pairs": len(side["chosen"]), "label": label}
        for k in SIDES:
            row[f"{k}_share"] = _share(labels[k], label)
            row[f"{k}_words"] = _mean(s["words"] for s in side[k] if s["level"] == "rationale")
        for k in PHASES:
            row[f"{k}_share"] = _share(answers[k], label)
            row[f"{k}_words"] = _mean(d["words"] for d in phase[k])
            row[f"{k}_teacher"] = _top(d["teacher"] for d in phase[k])
        out.append(row)
    return out
