"""The score stage (ARTE step 4): the student scores each rationale draft on the probe set.

A rationale's score is the student's accuracy on the probe items with (question, rationale)
as the one demonstration (its mean log-prob margin is kept too); a question's score is the
mean of its rationales' scores. The zero-shot baseline is stored once per round and mode.
Every draft's results are written as they are made, so a resumed run redoes nothing stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from teachlab.db import Draft, ProbeResult, Run, queries, read_session
from teachlab.jobs.context import StageContext
from teachlab.rounds import load_round
from teachlab.stages.probes import ensure_probes


def stage_score(ctx: StageContext, run: Run) -> dict[str, Any]:
    """Score every ok rationale draft on the probe set; question score = mean of rationales."""
    from teachlab import models
    from teachlab.score import Demo, Scorer, accuracy, mean_margin

    loaded = ensure_probes(ctx, load_round(run.round_id))
    rnd, mode = loaded.round, loaded.config.scorer
    with read_session() as session:
        rationales = session.exec(
            queries.drafts(loaded.id, kind="rationale", phase="draft", status="ok")
        ).all()
        questions = queries.questions(session, loaded.id, phase="draft")
        done = set(session.exec(queries.scored_draft_ids(loaded.id, mode)).all())
    todo = [d for d in rationales if d.id not in done]
    total = len(rationales) + 1
    ctx.progress(total - len(todo) - 1, total, f"loading student {rnd.student}")
    student = models.load(rnd.student, rnd.student_adapter)
    ctx.provenance(
        {
            "student_sha256": student.weights_sha256,
            "student_adapter_sha256": student.adapter_sha256,
        }
    )
    scorer = Scorer(
        student.model, student.tokenizer, loaded.task.description, loaded.probes("probe"), mode=mode
    )
    if queries.BASELINE not in done:  # the zero-shot baseline, once per round
        store_outcomes(ctx, loaded.id, None, mode, scorer.score([]))
    for i, d in enumerate(todo, 1):
        ctx.check_cancelled()
        q = questions.get(d.parent_id)
        if q is None:
            continue
        demo = Demo(
            question=q.input or "", answer=d.answer or q.target or "", rationale=d.rationale
        )
        outcomes = scorer.score([demo])
        store_outcomes(
            ctx, loaded.id, d.id, mode, outcomes, accuracy(outcomes), mean_margin(outcomes)
        )
        ctx.progress(
            total - len(todo) + i, total, f"scored draft #{d.id}: {accuracy(outcomes):.2f}"
        )
    score_questions(ctx, loaded.id)
    baseline = baseline_score(loaded.id, mode)
    return {
        "scored": len(todo),
        "total": len(rationales),
        "baseline": baseline,
        "mode": mode,
        "tokens": dict(scorer.tokens),
    }


def store_outcomes(
    ctx: StageContext,
    round_id: int,
    draft_id: int | None,
    mode: str,
    outcomes: Sequence[Any],
    score: float | None = None,
    margin: float | None = None,
) -> None:
    """One demonstration's probe results, and its scores on its draft, in one transaction."""
    with ctx.write() as session:
        for o in outcomes:
            session.add(
                ProbeResult(
                    draft_id=draft_id,
                    round_id=round_id,
                    probe_index=o.probe_index,
                    mode=mode,
                    predicted=o.predicted,
                    correct=o.correct,
                    gold_logprob=o.gold_logprob,
                    margin=o.margin,
                    output=getattr(o, "output", "") or "",
                )
            )
        if draft_id is not None:
            d = session.get(Draft, draft_id)
            if d is not None:
                d.score, d.margin_score = score, margin
                session.add(d)


def score_questions(ctx: StageContext, round_id: int) -> None:
    """Question score = mean of its scored rationales' scores (and margins)."""
    with ctx.write() as session:
        scored = session.exec(
            queries.drafts(round_id, kind="rationale", phase="draft", scored=True)
        ).all()
        by_q: dict[int, list[Draft]] = defaultdict(list)
        for d in scored:
            by_q[d.parent_id].append(d)  # type: ignore[index]
        for qid, ds in by_q.items():
            q = session.get(Draft, qid)
            if q is None:
                continue
            q.score = sum(d.score or 0.0 for d in ds) / len(ds)
            margins = [d.margin_score for d in ds if d.margin_score is not None]
            q.margin_score = sum(margins) / len(margins) if margins else None
            session.add(q)


def baseline_score(round_id: int, mode: str, *, margin: bool = False) -> float | None:
    """The zero-shot baseline: probe accuracy, or the mean gold margin."""
    with read_session() as session:
        rows = session.exec(
            queries.probe_results(round_id=round_id, mode=mode, baseline=True)
        ).all()
    found = [(r.margin if margin else float(r.correct)) for r in rows]
    values = [v for v in found if v is not None]
    return sum(values) / len(values) if values else None
