"""The signal check stage: is there a signal worth spending compute on, before spending it?

It scores the student zero- and few-shot on the probe set against chance, then scores a
sample of demonstrations (the round's scored drafts, or before any drafts exist, task
examples outside the probe and test splits) on two disjoint probe halves to measure how
reliably a demonstration's effect can be read, and how much the answer label explains.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from teachlab.db import Draft, ProbeResult, Run, SignalCheck, read_session, write_session
from teachlab.errors import NotFoundError

if TYPE_CHECKING:
    from teachlab.jobs.executor import RunContext

SAMPLE_DEMOS = 24


def stage_check(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab import models
    from teachlab.pipeline import load_round, probes_for, study_task
    from teachlab.probes import ensure_probes
    from teachlab.score import Demo, Scorer
    from teachlab.signalcheck import signal_check

    study, rnd, cfg = load_round(run, ctx.db_path)
    task = study_task(study)
    study = ensure_probes(ctx, study, task, cfg.probe_selection, cfg.n_probe)
    probe_idx = list(study.splits["probe"])
    probes = probes_for(task, probe_idx)
    student = models.load(rnd.student, rnd.student_adapter)
    scorer = Scorer(student.model, student.tokenizer, task.description, probes, mode="loglik")
    seed_demos = [
        Demo(question=task.examples[i].input, answer=task.examples[i].target)
        for i in list(study.splits["seed"])[: max(cfg.eval_shots, 1)]
    ]
    ctx.progress(0, SAMPLE_DEMOS + 2, "student zero-shot on the probe set")
    zero = scorer.score([])
    ctx.progress(1, SAMPLE_DEMOS + 2, "student few-shot on the probe set")
    few = scorer.score(seed_demos)

    per_draft, labels, source = _scored_drafts(rnd.id, cfg.scorer, ctx.db_path)  # type: ignore[arg-type]
    margins: dict[Any, dict[int, float]] = {}
    if len(per_draft) < 8:
        # Before drafts exist: task examples outside probe/test stand in as demonstrations.
        source = "task examples"
        used = set(probe_idx) | set(study.splits["test"])
        pool = [i for i in range(len(task.examples)) if i not in used]
        sample = random.Random(study.seed).sample(pool, min(SAMPLE_DEMOS, len(pool)))
        per_draft, labels = {}, {}
        for n, i in enumerate(sample, 2):
            ctx.check_cancelled()
            ex = task.examples[i]
            outcomes = scorer.score([Demo(question=ex.input, answer=ex.target)])
            per_draft[i] = {o.probe_index: o.correct for o in outcomes}
            margins[i] = {o.probe_index: float(o.margin or 0.0) for o in outcomes}
            labels[i] = ex.target
            ctx.progress(n, len(sample) + 2, f"demonstration {n - 1}/{len(sample)}")
    result = signal_check(
        per_draft,
        labels,
        [o.correct for o in zero],
        [o.correct for o in few],
        task.chance_rate,
        seed=study.seed,
        label_balanced=cfg.label_balanced,
    )
    data = result.to_dict()
    data["source"] = source
    if margins:
        data["margin_metric"] = signal_check(
            margins,
            labels,
            [o.correct for o in zero],
            [o.correct for o in few],
            task.chance_rate,
            seed=study.seed,
            metric="margin",
        ).to_dict()
    verdict = result.verdict
    assert verdict is not None  # signal_check always sets it
    with write_session(ctx.db_path) as session:
        session.add(
            SignalCheck(
                round_id=rnd.id,  # type: ignore[arg-type]
                run_id=run.id,
                level=verdict.level,
                reasons=list(verdict.reasons),
                result=data,
            )
        )
    for reason in verdict.reasons:
        ctx.log(reason)
    return {"level": verdict.level, "reasons": list(verdict.reasons), "source": source}


def _scored_drafts(
    round_id: int, mode: str, db_path: Path | None
) -> tuple[dict[Any, dict[int, bool]], dict[Any, str | None], str]:
    with read_session(db_path) as session:
        rows = session.exec(
            select(ProbeResult).where(
                ProbeResult.round_id == round_id,
                ProbeResult.mode == mode,
                col(ProbeResult.draft_id).is_not(None),
            )
        ).all()
        drafts = {
            d.id: d
            for d in session.exec(
                select(Draft).where(Draft.round_id == round_id, Draft.kind == "rationale")
            )
        }
    per_draft: dict[Any, dict[int, bool]] = {}
    for r in rows:
        per_draft.setdefault(r.draft_id, {})[r.probe_index] = r.correct
    labels = {k: (drafts[k].answer if k in drafts else None) for k in per_draft}
    return per_draft, labels, "scored drafts"


def latest_check(round_id: int, db_path: Path | None = None) -> SignalCheck | None:
    with read_session(db_path) as session:
        return session.exec(
            select(SignalCheck)
            .where(SignalCheck.round_id == round_id)
            .order_by(col(SignalCheck.id).desc())
        ).first()


def override(check_id: int, researcher: str, db_path: Path | None = None) -> SignalCheck:
    """Record that a researcher chose to go on despite the verdict."""
    with write_session(db_path) as session:
        row = session.get(SignalCheck, check_id)
        if row is None:
            raise NotFoundError(f"Signal check #{check_id} does not exist.")
        row.overridden_by = researcher
        session.add(row)
        return row
