"""The ARTE round as stages: draft, score, pairs, align, regenerate, distil, evaluate.

Each stage reads what it needs from the database, skips what is already stored (so a
resumed run loses at most the item in flight) and writes results as they are made.
The pure cores live in their own modules; this file is the I/O at the edges.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from teachlab.config import StudyConfig
from teachlab.db import (
    Draft,
    Evaluation,
    ProbeResult,
    Round,
    Run,
    Study,
    read_session,
    write_session,
)
from teachlab.errors import ConfigError, JobError, NotFoundError
from teachlab.jobs import runs

if TYPE_CHECKING:
    from teachlab.jobs.executor import RunContext
    from teachlab.tasks import Task

ROUND_STAGES = ("draft", "score", "pairs", "align", "regenerate", "distill", "evaluate")


# ---------------------------------------------------------------- helpers


def _id(row: Any) -> int:
    """The primary key of a stored row (typed as optional by SQLModel until it is stored)."""
    if row.id is None:
        raise ValueError(f"{type(row).__name__} has not been stored yet")
    return int(row.id)


def load_round(run: Run, db_path: Path | None) -> tuple[Study, Round, StudyConfig]:
    with read_session(db_path) as session:
        study = session.get(Study, run.study_id)
        rnd = session.get(Round, run.round_id) if run.round_id else None
    if study is None or rnd is None:
        raise NotFoundError(f"Run #{run.id} points to a missing study or round.")
    return study, rnd, StudyConfig.from_dict(study.config)


def study_task(study: Study) -> Task:
    from teachlab.tasks import resolve_task

    task = resolve_task(study.task_ref)
    expected = study.splits.get("task_fingerprint")
    if expected and task.fingerprint() != expected:
        raise ConfigError(
            f"The task data of {study.task_ref} changed since the study was created; the stored "
            "splits no longer point to the same examples. Restore the data or create a new study."
        )
    return task


def probes_for(task: Task, indices: list[int]) -> list[Any]:
    from teachlab.score import Probe

    return [
        Probe(
            index=i,
            input=task.examples[i].input,
            target=task.examples[i].target,
            choices=tuple(task.examples[i].choices),
        )
        for i in indices
    ]


def latest_result(round_id: int, kind: str, db_path: Path | None) -> dict[str, Any] | None:
    with read_session(db_path) as session:
        run = session.exec(
            select(Run)
            .where(Run.round_id == round_id, Run.kind == kind, Run.status == "succeeded")
            .order_by(col(Run.id).desc())
        ).first()
    return dict(run.result) if run else None


# ---------------------------------------------------------------- stages


def stage_draft(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab import draft
    from teachlab.backends import make_backend

    study, rnd, _ = load_round(run, ctx.db_path)
    backend = make_backend(study.backend, rnd.teacher, adapter=rnd.teacher_adapter)
    try:
        questions = draft.run_draft_questions(ctx, rnd.id, backend)  # type: ignore[arg-type]
        if not questions.get("total_ok"):
            raise JobError(
                f"The teacher wrote no usable question in {questions.get('calls', 0)} calls "
                f"(parse rate {questions.get('parse_rate') or 0:.0%}); raise max_new_tokens, turn "
                "prefill on or lower the question temperature in the study settings, then resume."
            )
        rationales = draft.run_draft_rationales(ctx, rnd.id, backend, phase="draft")  # type: ignore[arg-type]
    finally:
        backend.close()
    return {"questions": questions, "rationales": rationales}


def stage_regenerate(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab import draft
    from teachlab.backends import make_backend

    study, rnd, _ = load_round(run, ctx.db_path)
    aligned = latest_result(rnd.id, "align", ctx.db_path)  # type: ignore[arg-type]
    adapter = aligned["adapter"] if aligned else rnd.teacher_adapter
    ctx.log(f"regenerating with teacher {rnd.teacher} adapter {adapter or '(base)'}")
    backend = make_backend(study.backend, rnd.teacher, adapter=adapter)
    try:
        questions = draft.run_draft_questions(ctx, rnd.id, backend, phase="tailored")  # type: ignore[arg-type]
        rationales = draft.run_draft_rationales(ctx, rnd.id, backend, phase="tailored")  # type: ignore[arg-type]
    finally:
        backend.close()
    return {"questions": questions, "rationales": rationales, "adapter": adapter}


def stage_score(ctx: RunContext, run: Run) -> dict[str, Any]:
    """Score every ok rationale draft on the probe set; question score = mean of rationales."""
    from teachlab import models
    from teachlab.probes import ensure_probes
    from teachlab.score import Demo, Scorer, accuracy, mean_margin

    study, rnd, cfg = load_round(run, ctx.db_path)
    task = study_task(study)
    study = ensure_probes(ctx, study, task, cfg.probe_selection, cfg.n_probe)
    probes = probes_for(task, list(study.splits["probe"]))
    mode = cfg.scorer
    with read_session(ctx.db_path) as session:
        rationales = session.exec(
            select(Draft)
            .where(
                Draft.round_id == rnd.id,
                Draft.kind == "rationale",
                Draft.phase == "draft",
                Draft.status == "ok",
            )
            .order_by(col(Draft.id))
        ).all()
        questions = {
            q.id: q
            for q in session.exec(
                select(Draft).where(
                    Draft.round_id == rnd.id, Draft.kind == "question", Draft.phase == "draft"
                )
            )
        }
        done = set(
            session.exec(
                select(ProbeResult.draft_id)
                .where(ProbeResult.round_id == rnd.id, ProbeResult.mode == mode)
                .distinct()
            ).all()
        )
    todo = [d for d in rationales if d.id not in done]
    total = len(rationales) + 1
    ctx.progress(total - len(todo) - 1, total, f"loading student {rnd.student}")
    student = models.load(rnd.student, rnd.student_adapter)
    runs.update_provenance(
        _id(run),
        {
            "student_sha256": student.weights_sha256,
            "student_adapter_sha256": student.adapter_sha256,
        },
        ctx.db_path,
    )
    scorer = Scorer(student.model, student.tokenizer, task.description, probes, mode=mode)

    if None not in done:  # the zero-shot baseline, once per round
        _store_outcomes(ctx.db_path, rnd.id, None, mode, scorer.score([]))  # type: ignore[arg-type]
    for i, d in enumerate(todo, 1):
        ctx.check_cancelled()
        q = questions.get(d.parent_id)
        if q is None:
            continue
        demo = Demo(
            question=q.input or "", answer=d.answer or q.target or "", rationale=d.rationale
        )
        outcomes = scorer.score([demo])
        _store_outcomes(
            ctx.db_path, _id(rnd), d.id, mode, outcomes, accuracy(outcomes), mean_margin(outcomes)
        )
        ctx.progress(
            total - len(todo) + i, total, f"scored draft #{d.id}: {accuracy(outcomes):.2f}"
        )
    # Question score = mean of its rationales' scores.
    with write_session(ctx.db_path) as session:
        scored = session.exec(
            select(Draft).where(
                Draft.round_id == rnd.id,
                Draft.kind == "rationale",
                Draft.phase == "draft",
                col(Draft.score).is_not(None),
            )
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
    baseline = baseline_score(rnd.id, mode, ctx.db_path)  # type: ignore[arg-type]
    return {"scored": len(todo), "total": len(rationales), "baseline": baseline, "mode": mode}


def _store_outcomes(
    db_path: Path | None,
    round_id: int,
    draft_id: int | None,
    mode: str,
    outcomes: list[Any],
    score: float | None = None,
    margin: float | None = None,
) -> None:
    with write_session(db_path) as session:
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


def baseline_score(
    round_id: int, mode: str, db_path: Path | None, *, margin: bool = False
) -> float | None:
    """The zero-shot baseline: probe accuracy, or the mean gold margin."""
    with read_session(db_path) as session:
        rows = session.exec(
            select(ProbeResult).where(
                ProbeResult.round_id == round_id,
                col(ProbeResult.draft_id).is_(None),
                ProbeResult.mode == mode,
            )
        ).all()
    found = [(r.margin if margin else float(r.correct)) for r in rows]
    values = [v for v in found if v is not None]
    return sum(values) / len(values) if values else None


def stage_pairs(ctx: RunContext, run: Run) -> dict[str, Any]:
    """Candidates from scored drafts → the study's pair rule → stored automatic pairs.

    Question pairs keep the exact generation prompt (chat template and prefill); rationale
    pairs use the plain prompt ("prompt erasure"), as ARTE does.
    """
    from teachlab import pairs, review
    from teachlab.prompts import load_tokenizer, plain_prompt_for, question_completion_for

    study, rnd, cfg = load_round(run, ctx.db_path)
    with read_session(ctx.db_path) as session:
        drafts = session.exec(
            select(Draft).where(
                Draft.round_id == rnd.id, Draft.phase == "draft", Draft.status == "ok"
            )
        ).all()
    questions = {d.id: d for d in drafts if d.kind == "question"}
    tokenizer = load_tokenizer(rnd.teacher)
    use_margin = cfg.pair_metric == "margin"

    def score_of(d: Draft) -> float | None:
        return d.margin_score if use_margin else d.score

    candidates = []
    for d in drafts:
        if d.kind == "question":
            candidates.append(
                pairs.Candidate(
                    draft_id=d.id,  # type: ignore[arg-type]
                    prompt=d.prompt,
                    text=question_completion_for(d),
                    score=score_of(d),
                    label=d.target,
                    level="question",
                    group=d.prompt,
                )
            )
            continue
        q = questions.get(d.parent_id)
        if q is None:
            continue
        candidates.append(
            pairs.Candidate(
                draft_id=d.id,  # type: ignore[arg-type]
                prompt=plain_prompt_for(study, rnd, q, tokenizer),
                text=d.rationale or d.raw_output,  # cut after its last </ans>
                score=score_of(d),
                label=d.answer,
                level="rationale",
                group=str(d.parent_id),
            )
        )
    specs = pairs.build_pairs(
        candidates,
        cfg.pair_rule,
        quantile=cfg.quantile,
        min_margin=cfg.min_margin,
        max_per_prompt=cfg.max_pairs_per_prompt,
        baseline=baseline_score(rnd.id, cfg.scorer, ctx.db_path, margin=use_margin),  # type: ignore[arg-type]
        label_balanced=cfg.label_balanced,
    )
    stored = review.store_pairs(rnd.id, specs, db_path=ctx.db_path)  # type: ignore[arg-type]
    ctx.progress(1, 1, f"{len(specs)} pairs ({stored} new)")
    return {"pairs": len(specs), "new": stored, "label_mix": pairs.label_mix(specs)}


def stage_align(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab import review
    from teachlab.train import train_dpo

    _study, rnd, cfg = load_round(run, ctx.db_path)
    chosen = review.training_pairs(rnd.id, use_unreviewed=cfg.use_unreviewed, db_path=ctx.db_path)  # type: ignore[arg-type]
    if not chosen:
        raise JobError(
            "No pairs to train on: build pairs first (stage pairs), and approve some on the Review "
            "page or allow unreviewed pairs in the study settings."
        )
    data = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in chosen]
    result = train_dpo(
        ctx,
        base_ref=rnd.teacher,
        adapter_in=rnd.teacher_adapter,
        pairs=data,
        config=cfg,
        run_dir=ctx.run_dir,
        db_path=ctx.db_path,
        run_id=run.id,
        ordered=cfg.pair_rule == "ranked",  # Curry-DPO: easy pairs first
    )
    runs.update_provenance(run.id, {"adapter_sha256": result.adapter_sha256}, ctx.db_path)  # type: ignore[arg-type]
    return {
        "adapter": str(result.output_dir),
        "adapter_sha256": result.adapter_sha256,
        "pairs": len(data),
        "steps": result.global_step,
        "resumed_from": result.resumed_from,
        "metrics": result.metrics,
    }


def stage_distill(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab.train import train_sft

    study, rnd, cfg = load_round(run, ctx.db_path)
    with read_session(ctx.db_path) as session:
        tailored = session.exec(
            select(Draft)
            .where(
                Draft.round_id == rnd.id,
                Draft.phase == "tailored",
                Draft.kind == "rationale",
                Draft.status == "ok",
            )
            .order_by(col(Draft.id))
        ).all()
        parents = {
            d.id: d
            for d in session.exec(
                select(Draft).where(
                    Draft.round_id == rnd.id, Draft.phase == "tailored", Draft.kind == "question"
                )
            )
        }
    from teachlab.score.prompt import description_segment, probe_segment

    description = study_task(study).description
    examples = []
    for d in tailored:
        q = parents.get(d.parent_id)
        if q is None or not q.input or not d.rationale:
            continue
        # The student learns to continue the very prompt it is scored and evaluated with.
        prompt = description_segment(description) + probe_segment(q.input, "generate")
        examples.append({"prompt": prompt, "completion": " " + d.rationale.strip()})
    if not examples:
        raise JobError("No tailored examples to distil on: run the regenerate stage first.")
    result = train_sft(
        ctx,
        base_ref=rnd.student,
        adapter_in=rnd.student_adapter,
        examples=examples,
        config=cfg,
        run_dir=ctx.run_dir,
        db_path=ctx.db_path,
        run_id=run.id,
    )
    runs.update_provenance(run.id, {"adapter_sha256": result.adapter_sha256}, ctx.db_path)  # type: ignore[arg-type]
    return {
        "adapter": str(result.output_dir),
        "adapter_sha256": result.adapter_sha256,
        "examples": len(examples),
        "steps": result.global_step,
        "resumed_from": result.resumed_from,
        "metrics": result.metrics,
    }


def stage_evaluate(ctx: RunContext, run: Run) -> dict[str, Any]:
    """Student before and after distillation, zero- and few-shot, on the held-out test split."""
    from teachlab import models
    from teachlab.score import Demo, Scorer
    from teachlab.stats import accuracy_ci

    study, rnd, cfg = load_round(run, ctx.db_path)
    task = study_task(study)
    test = probes_for(task, list(study.splits["test"]))
    demos = [
        Demo(question=task.examples[i].input, answer=task.examples[i].target)
        for i in list(study.splits["seed"])[: cfg.eval_shots]
    ]
    distilled = latest_result(rnd.id, "distill", ctx.db_path)  # type: ignore[arg-type]
    variants = [("student-before", rnd.student_adapter)]
    if distilled:
        variants.append(("student-after", distilled["adapter"]))
    with read_session(ctx.db_path) as session:
        done = {
            (e.model, e.shots)
            for e in session.exec(select(Evaluation).where(Evaluation.round_id == rnd.id))
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
            [o.correct for o in outcomes], n_resamples=cfg.bootstrap, seed=study.seed
        )
        with write_session(ctx.db_path) as session:
            session.add(
                Evaluation(
                    round_id=_id(rnd),
                    run_id=run.id,
                    model=name,
                    model_ref=rnd.student,  # type: ignore[arg-type]
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


def stage_round(ctx: RunContext, run: Run) -> dict[str, Any]:
    """Every stage in order as child runs; a resumed round skips stages that succeeded."""
    from teachlab.jobs.executor import execute

    results: dict[str, Any] = {}
    for i, kind in enumerate(ROUND_STAGES):
        ctx.check_cancelled()
        with read_session(ctx.db_path) as session:
            child = session.exec(
                select(Run)
                .where(Run.parent_id == run.id, Run.kind == kind)
                .order_by(col(Run.id).desc())
            ).first()
        if child is not None and child.status == "succeeded":
            results[kind] = child.result
            continue
        if child is None or child.status in ("failed", "cancelled", "interrupted"):
            if child is not None:
                runs.prepare_resume(child.id, ctx.db_path)  # type: ignore[arg-type]
            else:
                child = runs.create_run(
                    run.study_id,
                    kind,
                    round_id=run.round_id,
                    seed=run.seed,
                    parent_id=run.id,
                    db_path=ctx.db_path,
                )
        ctx.progress(i, len(ROUND_STAGES), f"stage {kind}")
        final = execute(child.id, ctx.db_path)  # type: ignore[arg-type]
        if final.status != "succeeded":
            raise JobError(
                f"Stage {kind} (run #{final.id}) {final.status}: {final.error or ''}".strip()
            )
        results[kind] = final.result
    next_round = advance_round(run, results, ctx.db_path)
    ctx.progress(len(ROUND_STAGES), len(ROUND_STAGES), f"round done; round {next_round} is ready")
    return {"stages": list(results), "next_round": next_round}


def advance_round(run: Run, results: dict[str, Any], db_path: Path | None) -> int:
    """Open the next round from the aligned teacher and the distilled student."""
    with write_session(db_path) as session:
        rnd = session.get(Round, run.round_id)
        assert rnd is not None
        rnd.status = "done"
        session.add(rnd)
        existing = session.exec(
            select(Round).where(Round.study_id == rnd.study_id, Round.index == rnd.index + 1)
        ).first()
        if existing is None:
            session.add(
                Round(
                    study_id=rnd.study_id,
                    index=rnd.index + 1,
                    teacher=rnd.teacher,
                    teacher_adapter=(results.get("align") or {}).get(
                        "adapter", rnd.teacher_adapter
                    ),
                    student=rnd.student,
                    student_adapter=(results.get("distill") or {}).get(
                        "adapter", rnd.student_adapter
                    ),
                )
            )
        return rnd.index + 1


def stage_check(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab.check import stage_check as check

    return check(ctx, run)


STAGES = {
    "check": stage_check,
    "draft": stage_draft,
    "score": stage_score,
    "pairs": stage_pairs,
    "align": stage_align,
    "regenerate": stage_regenerate,
    "distill": stage_distill,
    "evaluate": stage_evaluate,
    "round": stage_round,
}
