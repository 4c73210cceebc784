"""The evaluate stage (ARTE step 9): the student before and after distillation, zero- and
few-shot, on the study's held-out test split, with bootstrap confidence intervals.

With the ``lm_eval_tasks`` setting it also runs each lm-evaluation-harness task on the same
students (``teachlab.score.lmeval``), stored in mode ``lm-eval:<task>`` with lm-eval's
few-shot count and a 95% interval from its standard error.

Each (model, shots, mode) evaluation is stored as it finishes; a resumed run skips stored ones.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from teachlab.db import Evaluation, Run, read_session
from teachlab.jobs.context import StageContext
from teachlab.rounds import LoadedRound, load_round, stage_result


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
        stored = [
            (e.model, e.shots, e.mode)
            for e in session.exec(select(Evaluation).where(Evaluation.round_id == loaded.id))
        ]
    done = {(model, shots) for model, shots, mode in stored if mode == "loglik"}
    out: dict[str, Any] = {}
    steps = [(name, adapter, shots) for name, adapter in variants for shots in (0, len(demos))]
    lm_tasks = lm_eval_steps(cfg.lm_eval_tasks, variants)
    total = len(steps) + len(lm_tasks)
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
        ctx.progress(i, total, f"{name} {shots}-shot: {acc:.3f} [{low:.3f}, {high:.3f}]")
    if lm_tasks:
        lm_done = {(model, mode) for model, _, mode in stored}
        out |= _run_lm_eval_steps(ctx, run, loaded, lm_tasks, lm_done, start=len(steps))
    return out


def lm_eval_steps(
    tasks: tuple[str, ...], variants: list[tuple[str, str | None]]
) -> list[tuple[str, str | None, str, str]]:
    """(variant, adapter, task as given, its lm-eval name) for each variant and task, each
    task once; ConfigError before any work when lm-eval is missing or a task file is bad."""
    if not tasks:
        return []
    from teachlab.score.lmeval import task_name

    named = {task: task_name(task) for task in dict.fromkeys(tasks)}
    return [
        (name, adapter, task, lm_name)
        for name, adapter in variants
        for task, lm_name in named.items()
    ]


def _run_lm_eval_steps(
    ctx: StageContext,
    run: Run,
    loaded: LoadedRound,
    lm_tasks: list[tuple[str, str | None, str, str]],
    done: set[tuple[str, str]],
    *,
    start: int,
) -> dict[str, Any]:
    """Each lm-eval task on each student variant, one Evaluation row each (skipping stored)."""

    from teachlab import models
    from teachlab.score.lmeval import run_lm_eval

    rnd, cfg = loaded.round, loaded.config
    total = start + len(lm_tasks)
    out: dict[str, Any] = {}
    for i, (name, adapter, task, lm_name) in enumerate(lm_tasks, start + 1):
        ctx.check_cancelled()
        mode = f"lm-eval:{lm_name}"
        if (name, mode) in done:
            continue
        result = run_lm_eval(
            rnd.student,
            adapter,
            task,
            seed=loaded.study.seed,
            bootstrap_iters=cfg.bootstrap,
        )
        low, high = result.interval()
        adapter_hash = models.trained_hash(adapter) if adapter else None
        with ctx.write() as session:
            session.add(
                Evaluation(
                    round_id=loaded.id,
                    run_id=run.id,
                    model=name,
                    model_ref=rnd.student,
                    adapter_hash=adapter_hash,
                    split=result.split,
                    shots=result.num_fewshot,
                    mode=mode,
                    accuracy=result.value,
                    n=result.n,
                    ci_low=low,
                    ci_high=high,
                )
            )
        out[f"{name}@{mode}"] = result.value
        ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        ctx.progress(
            i,
            total,
            f"{name} lm-eval {lm_name} ({result.num_fewshot}-shot): "
            f"{result.metric} {result.value:.3f}{ci}",
        )
    return out
