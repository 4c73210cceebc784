"""The experiment stage and its arm stages: every step of every arm, task and seed as a child run.

Per seed: each task's study drafts, scores and pairs once (round 0, shared by the arms); then
each arm aligns its teacher on the pairs of all tasks pooled (``arm-align``), regenerates each
task's tailored data with it (``arm-regenerate``), distils the student on all tasks' data pooled
(``arm-distill``) and evaluates the student on each task's held-out items in every mode and
shot count (``arm-evaluate``), one stored row per item. A resumed experiment skips the steps
that succeeded and resumes the one that stopped; each step's cost is recorded as it ends.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from teachlab.db import Round, Run, read_session, write_session
from teachlab.db.tables import Cost, ItemResult, Pair
from teachlab.errors import JobError
from teachlab.experiments import store
from teachlab.experiments.spec import ARM_KINDS
from teachlab.jobs import runs
from teachlab.jobs.executor import execute
from teachlab.rounds import current_round, load_round, row_id

if TYPE_CHECKING:
    from teachlab.db import Study
    from teachlab.jobs.executor import RunContext

SHARED = ("draft", "score", "pairs")


@dataclass(frozen=True)
class Step:
    kind: str
    study: Study
    seed: int
    arm: str | None = None
    task: str | None = None  # None: pooled over tasks
    config: dict[str, Any] = field(default_factory=dict)


def plan(exp: store.Loaded) -> list[Step]:
    """Every step of the experiment in order (seed by seed: shared steps, then each arm)."""
    spec, steps = exp.spec, []
    kinds = [ARM_KINDS[a] for a in spec.arms]
    for seed in spec.seeds:
        # Only alignment needs the shared round (pairs from scored drafts); regenerating
        # tailored data drafts its own questions from the seed examples.
        shared = SHARED if any(a.pairs for a in kinds) else ()
        for task in spec.tasks:
            steps += [Step(k, exp.member(task, seed), seed, task=task) for k in shared]
        for arm in spec.arms:
            kind = ARM_KINDS[arm]
            ids = {"experiment": exp.id, "arm": arm, "seed": seed}
            if kind.pairs:
                steps.append(Step("arm-align", exp.anchor(seed), seed, arm, config=ids))
            if kind.tailored:
                for task in spec.tasks:
                    steps.append(
                        Step(
                            "arm-regenerate",
                            exp.member(task, seed),
                            seed,
                            arm,
                            task,
                            {**ids, "task": task},
                        )
                    )
            if kind.trains_student:
                steps.append(Step("arm-distill", exp.anchor(seed), seed, arm, config=ids))
            for task in spec.tasks:
                steps.append(
                    Step(
                        "arm-evaluate",
                        exp.member(task, seed),
                        seed,
                        arm,
                        task,
                        {**ids, "task": task},
                    )
                )
    return steps


def stage_experiment(ctx: RunContext, run: Run) -> dict[str, Any]:
    """Run every step as a child run of this one, in order; skip what succeeded."""
    exp = store.load_experiment(int(run.config["experiment"]))
    if not exp.row.estimate:  # the estimate is made before anything is spent, once
        from teachlab.experiments.estimate import estimate

        ctx.progress(0, 1, "estimating the compute (a short measured pass)")
        store.record_estimate(exp.id, estimate(exp.spec).to_dict())
    steps = plan(exp)
    checked: set[int] = set()
    for i, step in enumerate(steps):
        ctx.check_cancelled()
        if step.arm is not None and step.seed not in checked:
            check_arms(exp, step.seed)
            checked.add(step.seed)
        ctx.progress(i, len(steps), describe(step))
        final = run_step(ctx, run, step)
        record_cost(exp.id, step, final)
    ctx.progress(len(steps), len(steps), f"{len(steps)} steps done")
    return {"steps": len(steps)}


def describe(step: Step) -> str:
    parts = [step.kind, f"seed {step.seed}"]
    if step.arm:
        parts.append(f"arm {step.arm}")
    if step.task:
        parts.append(step.task.split(":", 1)[-1])
    return " · ".join(parts)


def run_step(ctx: RunContext, parent: Run, step: Step) -> Run:
    """The step's child run carried to success (found, resumed or created)."""
    rnd = current_round(row_id(step.study)) if step.kind in SHARED else None
    round_id = rnd.id if rnd is not None else None
    if step.kind in SHARED and round_id is not None:
        done = _succeeded(round_id, step.kind)
        if done is not None:  # already run on this study (by hand, or an earlier experiment)
            return done
    child = _child(parent, step)
    if child is None:
        child = runs.create_run(
            row_id(step.study),
            step.kind,
            round_id=round_id,
            config=step.config,
            seed=step.seed,
            parent_id=parent.id,
        )
    elif child.status == "succeeded":
        return child
    elif child.status in ("failed", "cancelled", "interrupted"):
        runs.prepare_resume(row_id(child))
    final = execute(row_id(child), ctx.stages)
    if final.status != "succeeded":
        raise JobError(
            f"Experiment step {describe(step)} (run #{final.id}) {final.status}: "
            f"{final.error or ''}".strip()
        )
    return final


def _succeeded(round_id: int, kind: str) -> Run | None:
    from teachlab.db import queries

    with read_session() as session:
        return session.exec(queries.latest_run(round_id, kind)).first()


def _child(parent: Run, step: Step) -> Run | None:
    key = json.dumps(step.config, sort_keys=True)
    with read_session() as session:
        found = session.exec(
            select(Run)
            .where(
                Run.parent_id == parent.id,
                Run.kind == step.kind,
                Run.study_id == row_id(step.study),
            )
            .order_by(col(Run.id).desc())
        ).all()
    return next((r for r in found if json.dumps(r.config, sort_keys=True) == key), None)


def check_arms(exp: store.Loaded, seed: int) -> None:
    """Refuse, before an arm spends anything, what an arm cannot do (no reviewed pairs)."""
    if "reviewed" not in exp.spec.arms:
        return
    if not _pairs(exp, seed, "reviewed"):
        names = ", ".join(exp.member(t, seed).name for t in exp.spec.tasks)
        raise JobError(
            f"The reviewed arm needs pairs decided on the Review page, and studies {names} have "
            "none yet: review some pairs there (or drop the arm), then resume this run."
        )


def record_cost(experiment_id: int, step: Step, run: Run) -> None:
    """What the step's run spent, once per run."""
    resources = (run.provenance or {}).get("resources") or {}
    tokens = (run.result or {}).get("tokens") or {}
    with read_session() as session:
        if session.exec(select(Cost).where(Cost.run_id == run.id)).first() is not None:
            return
    with write_session() as session:
        session.add(
            Cost(
                experiment_id=experiment_id,
                run_id=run.id,
                arm=step.arm,
                stage=step.kind.removeprefix("arm-"),
                seed=step.seed,
                task=step.task,
                seconds=float(resources.get("seconds") or 0.0),
                tokens_generated=int(tokens.get("generated") or 0),
                tokens_scored=int(
                    (tokens.get("prompt") or 0)
                    + (tokens.get("scored") or 0)
                    + (tokens.get("trained") or 0)
                ),
                peak_rss_mb=float(resources.get("peak_rss_mb") or 0.0),
                gpu_seconds=resources.get("gpu_seconds"),
            )
        )


# ---------------------------------------------------------------- the arm stages


def _arm(run: Run) -> tuple[store.Loaded, str, int, str | None]:
    config = run.config or {}
    try:
        exp = store.load_experiment(int(config["experiment"]))
        return exp, str(config["arm"]), int(config["seed"]), config.get("task")
    except KeyError as exc:
        raise JobError(
            f"Run #{run.id} ({run.kind}) is part of an experiment and names no {exc}; launch "
            "it with `teachlab experiment run`."
        ) from None


def _round0(study: Study) -> int:
    with read_session() as session:
        rnd = session.exec(
            select(Round).where(Round.study_id == study.id, Round.index == 0)
        ).first()
    if rnd is None:
        raise JobError(f"Study {study.name!r} has no round 0.")
    return row_id(rnd)


def _coin(seed: int, pair: Pair) -> float:
    """A uniform draw in [0, 1) fixed by the seed and the pair's level and texts."""
    text = "\0".join((str(seed), pair.level, pair.prompt, pair.chosen, pair.rejected))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def _pairs(exp: store.Loaded, seed: int, source: str) -> list[dict[str, str]]:
    """The pairs of all tasks' round 0 pooled, as the arm's source has them."""
    from teachlab import review

    out: list[dict[str, str]] = []
    for task in exp.spec.tasks:
        round_id = _round0(exp.member(task, seed))
        found: list[Pair] = review.training_pairs(
            round_id,
            use_unreviewed=source != "reviewed" and exp.spec.study.use_unreviewed,
        )
        for p in found:
            chosen, rejected = p.chosen, p.rejected
            # The placebo: the same prompts, the chosen side drawn by a coin seeded by the
            # pair's content (not its row id, so the same study flips the same pairs anywhere).
            if source == "random" and _coin(seed, p) < 0.5:
                chosen, rejected = rejected, chosen
            out.append({"prompt": p.prompt, "chosen": chosen, "rejected": rejected})
    return out


def stage_arm_align(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab.stages.align import trained
    from teachlab.train import train_dpo

    exp, arm, seed, _ = _arm(run)
    source = ARM_KINDS[arm].pairs
    if source is None:
        raise JobError(f"Arm {arm!r} aligns no teacher; this step is not part of it.")
    data = _pairs(exp, seed, source)
    if not data:
        raise JobError(
            f"No pairs to align the {arm} arm's teacher on (seed {seed}): the pairs step made "
            "none; look at the studies' Scores pages (scores may tie), then resume."
        )
    result = train_dpo(
        ctx,
        base_ref=exp.spec.teacher,
        adapter_in=None,
        pairs=data,
        config=exp.spec.study,
        run_dir=ctx.run_dir,
        run_id=run.id,
    )
    for task in exp.spec.tasks:
        rnd = store.arm_round(exp.member(task, seed), arm)
        store.set_adapters(row_id(rnd), teacher_adapter=str(result.output_dir))
    return trained(ctx, result, len(data), "pairs")


def stage_arm_regenerate(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab.backends import make_backend
    from teachlab.stages.draft import draft_questions, draft_rationales

    exp, arm, seed, task = _arm(run)
    study = exp.member(str(task), seed)
    rnd = store.arm_round(study, arm)
    if ARM_KINDS[arm].pairs and not rnd.teacher_adapter:
        raise JobError(f"The {arm} arm's teacher is not aligned yet (seed {seed}); align first.")
    backend = make_backend(study.backend, rnd.teacher, adapter=rnd.teacher_adapter)
    try:
        questions = draft_questions(ctx, row_id(rnd), backend, phase="tailored")
        rationales = draft_rationales(ctx, row_id(rnd), backend, phase="tailored")
        tokens = dict(getattr(backend, "tokens", {}))
    finally:
        backend.close()
    return {"questions": questions, "rationales": rationales, "tokens": tokens}


def gold_examples(study: Study, n: int, seed: int) -> list[dict[str, str]]:
    """The task's own examples outside the seed, probe and test splits, as SFT examples
    ending in the answer tag the evaluation reads."""
    from teachlab.score.prompt import description_segment, probe_segment

    loaded = load_round(_round0(study))
    used = {*loaded.split("seed"), *loaded.split("probe"), *loaded.split("test")}
    used |= set(loaded.study.splits.get("random_probe", []))
    pool = [i for i in range(len(loaded.task.examples)) if i not in used]
    chosen = sorted(random.Random(seed).sample(pool, min(n, len(pool))))
    head = description_segment(loaded.task.description)
    return [
        {
            "prompt": head + probe_segment(loaded.task.examples[i].input, "generate"),
            "completion": f" So the answer is <ans>{loaded.task.examples[i].target}</ans>.",
        }
        for i in chosen
    ]


def stage_arm_distill(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab.stages.align import trained
    from teachlab.stages.distill import tailored_examples
    from teachlab.train import train_sft

    exp, arm, seed, _ = _arm(run)
    kind = ARM_KINDS[arm]
    examples: list[dict[str, str]] = []
    for task in exp.spec.tasks:
        study = exp.member(task, seed)
        if kind.gold:
            examples += gold_examples(study, exp.spec.study.n_tailored, seed)
        else:
            rnd = store.arm_round(study, arm)
            examples += tailored_examples(row_id(rnd), load_round(row_id(rnd)).task.description)
    if not examples:
        raise JobError(f"No examples to distil the {arm} arm's student on (seed {seed}).")
    result = train_sft(
        ctx,
        base_ref=exp.spec.student,
        adapter_in=None,
        examples=examples,
        config=exp.spec.study,
        run_dir=ctx.run_dir,
        run_id=run.id,
    )
    for task in exp.spec.tasks:
        rnd = store.arm_round(exp.member(task, seed), arm)
        store.set_adapters(row_id(rnd), student_adapter=str(result.output_dir))
    return trained(ctx, result, len(examples), "examples")


def stage_arm_evaluate(ctx: RunContext, run: Run) -> dict[str, Any]:
    """The arm's student on the task's held-out items, in every mode and shot count."""
    from teachlab import models
    from teachlab.score import Demo, Scorer

    exp, arm, seed, task = _arm(run)
    spec, study = exp.spec, exp.member(str(task), seed)
    adapter = None
    if ARM_KINDS[arm].trains_student:
        adapter = store.arm_round(study, arm).student_adapter
        if not adapter:
            raise JobError(f"The {arm} arm's student is not distilled yet (seed {seed}).")
    loaded = load_round(_round0(study))
    test, examples = loaded.probes("test"), loaded.task.examples
    with read_session() as session:
        stored = session.exec(
            select(ItemResult.mode, ItemResult.shots).where(
                ItemResult.experiment_id == exp.id,
                ItemResult.arm == arm,
                ItemResult.task == task,
                ItemResult.seed == seed,
            )
        ).all()
    done = {(m, s) for m, s in stored if stored.count((m, s)) >= len(test)}
    todo = [(m, s) for m in spec.eval_modes for s in spec.eval_shots if (m, s) not in done]
    student = models.load(spec.student, adapter) if todo else None
    tokens = {"scored": 0, "generated": 0}
    accuracy: dict[str, float] = {}
    for i, (mode, shots) in enumerate(todo, 1):
        ctx.check_cancelled()
        assert student is not None
        shown = [examples[j] for j in loaded.split("seed")[:shots]]
        demos = [
            # A chain-of-thought demonstration ends in the answer tag the evaluation reads.
            Demo(
                e.input,
                e.target,
                f"So the answer is <ans>{e.target}</ans>." if mode == "cot" else None,
            )
            for e in shown
        ]
        scorer = Scorer(
            student.model,
            student.tokenizer,
            loaded.task.description,
            test,
            mode="loglik" if mode == "loglik" else "generate",
            max_new_tokens=spec.cot_max_tokens,
        )
        outcomes = scorer.score(demos)
        for key in tokens:
            tokens[key] += scorer.tokens[key]
        with ctx.write() as session:
            session.add_all(
                ItemResult(
                    experiment_id=exp.id,
                    run_id=run.id,
                    arm=arm,
                    task=str(task),
                    seed=seed,
                    mode=mode,
                    shots=shots,
                    item=o.probe_index,
                    correct=o.correct,
                    predicted=o.predicted[:200],
                )
                for o in outcomes
            )
        accuracy[f"{mode}@{shots}"] = sum(o.correct for o in outcomes) / len(outcomes)
        ctx.progress(i, len(todo), f"{arm} {mode} {shots}-shot: {accuracy[f'{mode}@{shots}']:.2f}")
    return {"accuracy": accuracy, "tokens": tokens, "adapter": adapter}


__all__ = [
    "plan",
    "stage_arm_align",
    "stage_arm_distill",
    "stage_arm_evaluate",
    "stage_arm_regenerate",
    "stage_experiment",
]
