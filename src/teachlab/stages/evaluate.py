"""The evaluate stage (ARTE step 9): the student before and after distillation, zero- and
few-shot, on the study's held-out test split, with bootstrap confidence intervals.

Each (model, shots) evaluation is stored as it finishes; a resumed run skips stored ones.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from teachlab.db import Evaluation, Run, read_session
from teachlab.jobs.context import StageContext
from teachlab.rounds import load_round, stage_result


def stage_evaluate(ctx: StageContext, run: Run) -> dict[str, Any]:
    """Student before and after distillation, zero- and few-shot, on the held-out test split."""
    from teachlab import models
    from teachlab.score import Demo, Scorer
    from teachlab.stats import accuracy_ci

    loaded = load_round(run.round_id)
    rnd, cfg, task = loaded.round, loaded.config, loaded.task
    test = loaded.probes("test")
    demos = [
        Demo(question=task.examples[i].input, answer=task.examples[i].target)
        for i in loaded.split("seed")[: cfg.eval_shots]
    ]
    distilled = stage_result(loaded.id, "distill")
    variants = [("student-before", rnd.student_adapter)]
    if distilled:
        variants.append(("student-after", distilled["adapter"]))
    with read_session() as session:
        done = {
            (e.model, e.shots)
            for e in session.exec(select(Evaluation).where(Evaluation.round_id == loaded.id))
        }
    out: dict[str, Any] = {}
    steps = [(name, adapter, shots) for name, adapter in variants for shots in (0, len(demos))]
    for i, (name, adapter, shots) in enumerate(steps, 1):
        ctx.check_cancelled()
        if (name, shots) in done:
            continue
        student = models.load(rnd.student, adapter)
        scorer = Scorer(student.model, student.tokenizer, task.description, test, mode="loglik")
        outcomes = scorer.score(demos[:shots])
        acc, low, high = accuracy_ci(
            [o.correct for o in outcomes], n_resamples=cfg.bootstrap, seed=loaded.study.seed
        )
        with ctx.write() as session:
            session.add(
                Evaluation(
                    round_id=loaded.id,
                    run_id=run.id,
                    model=name,
                    model_ref=rnd.student,
                    adapter_hash=student.adapter_sha256,
                    split="test",
                    shots=shots,
                    mode="loglik",
                    accuracy=acc,
                    n=len(outcomes),
                    ci_low=low,
                    ci_high=high,
                )
            )
        out[f"{name}@{shots}"] = acc
        ctx.progress(i, len(steps), f"{name} {shots}-shot: {acc:.3f} [{low:.3f}, {high:.3f}]")
    return out
