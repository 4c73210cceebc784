"""Compute estimates before spending: per stage, the tokens, FLOPs and time an experiment takes,
here (calibrated by a short measured pass on the bundled models) and on a named accelerator."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from teachlab.config import StudyConfig
from teachlab.errors import ConfigError
from teachlab.experiments.calibration import (
    CAL_DECODE,
    Calibration,
    calibrate_here,
    describe_machine,
)
from teachlab.experiments.lengths import (
    SAMPLE,
    ModelInfo,
    TaskShape,
    attention_flops,
    forward_flops,
    model_info,
    task_shape,
    token_counter,
)
from teachlab.experiments.spec import ARM_KINDS, ExperimentSpec, expand_tasks

STAGE_ORDER = ("draft", "score", "pairs", "align", "regenerate", "distill", "evaluate")
SHARED = "shared"  # the arm cost tables give steps the arms share (None in an estimate's rows)
StageKey = tuple[str, str | None]


@dataclass(frozen=True)
class Accelerator:
    """One GPU as its vendor's datasheet gives it (dense, no sparsity)."""

    name: str
    label: str
    peak_flops: float  # dense bf16 tensor FLOP/s (the T4 has no bf16: its fp16 figure)
    bandwidth: float  # memory bytes/s
    memory_gb: float
    source: str = "vendor datasheet peak"


ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in (
        Accelerator("h200", "NVIDIA H200 SXM 141GB", 989e12, 4.8e12, 141),
        Accelerator("h100", "NVIDIA H100 SXM 80GB", 989e12, 3.35e12, 80),
        Accelerator("a100", "NVIDIA A100 SXM 80GB", 312e12, 2.039e12, 80),
        Accelerator("l4", "NVIDIA L4 24GB", 121e12, 0.3e12, 24),
        Accelerator(
            "a10g",
            "NVIDIA A10G 24GB",
            125e12,
            0.6e12,
            24,
            "vendor datasheet peak of the A10 (AWS publishes none for its A10G variant)",
        ),
        Accelerator(
            "t4", "NVIDIA T4 16GB", 65e12, 0.32e12, 16, "vendor datasheet peak (fp16: no bf16)"
        ),
    )
}

# Fractions of the peak a well-run job reaches on an accelerator: large batched matmuls for
# prefill and scoring, a fine-tuning framework for training (its model-FLOPs utilisation), and
# for decoding the memory bandwidth (each step rereads the weights for the whole batch).
UTILISATION = {"prefill": 0.5, "train": 0.4, "decode_bandwidth": 0.6}
GPU_DECODE_ROWS = 64  # sequences a serving engine decodes together on an accelerator
BF16_BYTES = 2
# Full fine-tuning with Adam in mixed precision: bf16 weights and gradients, fp32 master weights
# and two fp32 moments; activations not counted.
FULL_TRAIN_BYTES = 16
PARSE_RATE = 1.0  # share of teacher calls that parse; 0.5 would double the question calls


# ---------------------------------------------------------------- what an estimate holds


@dataclass(frozen=True)
class Work:
    """One kind of model work inside a row: prefill (forward), decode or train."""

    kind: str
    role: str
    tokens: float
    flops: float


@dataclass
class StageRow:
    """One stage (for one arm, or shared), summed over its tasks and seeds."""

    stage: str
    arm: str | None  # None: shared by the arms
    models: str  # which roles do the work
    runs: int  # times the stage runs: tasks x seeds, or seeds when pooled over tasks
    tokens_generated: float
    tokens_scored: float  # tokens read by forward passes: prompts, scoring, evaluation
    tokens_trained: float
    flops: float
    seconds_here: float | None
    seconds_gpu: float | None
    note: str = ""
    work: list[Work] = field(default_factory=list)


@dataclass
class Estimate:
    """An experiment's estimate: its rows, what it assumed and measured, where and when."""

    experiment: str
    tasks: list[str]
    arms: list[str]
    seeds: list[int]
    models: dict[str, ModelInfo]
    gpu: str | None  # e.g. "8x NVIDIA A100 SXM 80GB"
    rows: list[StageRow]
    assumptions: list[str]
    calibration: list[Calibration]
    shapes: list[TaskShape]
    machine: str
    created: str
    warnings: list[str] = field(default_factory=list)

    def total(self) -> StageRow:
        here = [r.seconds_here for r in self.rows]
        gpu = [r.seconds_gpu for r in self.rows]
        return StageRow(
            stage="total",
            arm=None,
            models="",
            runs=sum(r.runs for r in self.rows),
            tokens_generated=sum(r.tokens_generated for r in self.rows),
            tokens_scored=sum(r.tokens_scored for r in self.rows),
            tokens_trained=sum(r.tokens_trained for r in self.rows),
            flops=sum(r.flops for r in self.rows),
            seconds_here=None if None in here else sum(s or 0.0 for s in here),
            seconds_gpu=None if None in gpu else sum(s or 0.0 for s in gpu),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row in data["rows"]:
            row.pop("work")
        total = asdict(self.total())
        total.pop("work")
        data["total"] = total
        return data


# ---------------------------------------------------------------- public API


def estimate(spec: ExperimentSpec, *, gpu: str | None = None, calibrate: bool = True) -> Estimate:
    """The experiment's compute, stage by stage: token lengths from its tasks' data, parameter
    counts from its models (or ``[sizes]``), time here from a short measured pass (skipped with
    ``calibrate=False``), time on ``gpu`` (``h100``, ``8xa100``...) from its datasheet."""
    if gpu is not None:
        accelerator(gpu)  # an unknown name fails before any work
    machine = describe_machine()  # its load before our own work adds to it
    refs = {"teacher": spec.teacher, "student": spec.student}
    sizes = {"teacher": spec.sizes.teacher_params, "student": spec.sizes.student_params}
    counters = {role: token_counter(ref) for role, ref in refs.items()}
    models = {
        role: replace(model_info(ref, role, sizes[role]), tokenizer=counters[role].name)
        for role, ref in refs.items()
    }
    tasks = expand_tasks(spec.tasks)
    shapes = {t: task_shape(t, spec.study, counters["teacher"], counters["student"]) for t in tasks}
    calibration = calibrate_here() if calibrate else []
    return build(spec, shapes, models, calibration=calibration, gpu=gpu, machine=machine)


def build(
    spec: ExperimentSpec,
    shapes: Mapping[str, TaskShape],
    models: Mapping[str, ModelInfo],
    *,
    calibration: Sequence[Calibration] = (),
    gpu: str | None = None,
    machine: str | None = None,
) -> Estimate:
    """The estimate from measured inputs (``estimate`` measures them; tests hand-make them)."""
    device = accelerator(gpu) if gpu is not None else None
    rates = {c.role: c for c in calibration}
    per_seed = _stage_works(spec, shapes, models)
    seeds = len(spec.seeds)
    rows = []
    for (stage, arm), (runs, works, note) in per_seed.items():
        merged = _merge(works)
        scaled = [Work(w.kind, w.role, w.tokens * seeds, w.flops * seeds) for w in merged]
        rows.append(_row(stage, arm, runs * seeds, scaled, note, models, rates, device))
    est = Estimate(
        experiment=spec.name,
        tasks=list(shapes),
        arms=list(spec.arms),
        seeds=list(spec.seeds),
        models=dict(models),
        gpu=_gpu_label(device),
        rows=rows,
        assumptions=assumptions(spec, models, device, bool(calibration)),
        calibration=list(calibration),
        shapes=list(shapes.values()),
        machine=machine or describe_machine(),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    est.warnings = _warnings(spec, models, device, shapes, calibration)
    return est


def accelerator(name: str) -> tuple[Accelerator, int]:
    """An accelerator by name, with a count: ``h100``, ``8xa100`` (or ``8×a100``)."""
    text = (name or "").strip().lower().replace("×", "x")
    count, sep, base = text.partition("x")
    if not (sep and count.isdigit()):
        count, base = "1", text
    if base not in ACCELERATORS or int(count) < 1:
        raise ConfigError(
            f"Unknown GPU {name!r}; choose one of {', '.join(ACCELERATORS)}, "
            "optionally with a count (e.g. 8xa100)."
        )
    return ACCELERATORS[base], int(count)


def against(
    est: Estimate | Mapping[str, Any],
    measured: Iterable[Mapping[str, Any]],
    *,
    on_gpu: bool = False,
) -> list[dict[str, Any]]:
    """Estimated against measured, per stage and arm: seconds (here; on the GPU with ``on_gpu``,
    against the rows' ``gpu_seconds``), tokens generated, and tokens read (the estimate's scored
    + trained tokens: a run's cost record counts training tokens among those read).

    ``est`` is an Estimate or its stored ``to_dict()``. Measured rows (``stage``, ``arm``,
    ``seconds``, ``tokens_generated``, ``tokens_scored``; per task or seed, or already summed)
    are summed per stage and arm; arm None or "shared" is a step the arms share. ``ratio`` is
    measured / estimated, None where either side is missing; "total" rows sum the stages both
    sides have."""
    seconds_key = "gpu_seconds" if on_gpu else "seconds"
    sums: dict[StageKey, dict[str, float]] = {}
    for row in measured:
        key = (str(row["stage"]), _arm(row.get("arm")))
        into = sums.setdefault(key, {"seconds": 0.0, "tokens_generated": 0.0, "tokens_read": 0.0})
        into["seconds"] += float(row.get(seconds_key) or 0.0)
        into["tokens_generated"] += float(row.get("tokens_generated") or 0)
        into["tokens_read"] += float(row.get("tokens_scored") or 0)
    rows = [asdict(r) for r in est.rows] if isinstance(est, Estimate) else list(est["rows"])
    estimated: dict[StageKey, dict[str, float | None]] = {
        (str(r["stage"]), _arm(r.get("arm"))): {
            "seconds": r["seconds_gpu"] if on_gpu else r["seconds_here"],
            "tokens_generated": r["tokens_generated"],
            "tokens_read": r["tokens_scored"] + r["tokens_trained"],
        }
        for r in rows
    }
    keys = list(estimated) + [k for k in sums if k not in estimated]
    out: list[dict[str, Any]] = []
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for key in keys:
        for quantity in ("seconds", "tokens_generated", "tokens_read"):
            guess = estimated.get(key, {}).get(quantity)
            seen = sums[key][quantity] if key in sums else None
            out.append(_compared(key[0], key[1], quantity, guess, seen))
            if guess is not None and seen is not None:
                totals[quantity][0] += guess
                totals[quantity][1] += seen
    for quantity, (guess, seen) in totals.items():
        out.append(_compared("total", None, quantity, guess, seen))
    return out


def _arm(arm: Any) -> str | None:
    return None if arm in (None, "", SHARED) else str(arm)


def _compared(
    stage: str, arm: str | None, quantity: str, guess: float | None, seen: float | None
) -> dict[str, Any]:
    ratio = seen / guess if guess and seen is not None else None
    return {
        "stage": stage,
        "arm": arm,
        "quantity": quantity,
        "estimated": guess,
        "measured": seen,
        "ratio": ratio,
    }


# ---------------------------------------------------------------- the arithmetic


def generation(
    m: ModelInfo, role: str, *, calls: float, prompt: float, new: float, shared: bool = False
) -> list[Work]:
    """Teacher calls: the prompt read (once when every call shares it: the backend caches it and
    feeds each row only its last token), then ``new`` tokens decoded a call."""
    if shared and calls:
        read = (prompt - 1) + calls
        prefill = forward_flops(m, prompt - 1) + calls * forward_flops(m, 1, prompt - 1)
    else:
        read = calls * prompt
        prefill = calls * forward_flops(m, prompt)
    decode = calls * forward_flops(m, new, prompt)
    return [Work("prefill", role, read, prefill), Work("decode", role, calls * new, decode)]


def scoring(
    m: ModelInfo,
    role: str,
    *,
    prefixes: float,
    prefix: float,
    items: float,
    question: float,
    choices: float = 0.0,
    generate: float = 0.0,
) -> list[Work]:
    """The scorer's fast path, ``prefixes`` times: the prefix read once, then each item's
    question and its choices (loglik), or its question and ``generate`` greedy tokens."""
    read = prefix + items * (question + choices)
    flops = (
        forward_flops(m, prefix)
        + items * forward_flops(m, question, prefix)
        + items * forward_flops(m, choices, prefix + question)
    )
    works = [Work("prefill", role, prefixes * read, prefixes * flops)]
    if generate:
        decode = items * forward_flops(m, generate, prefix + question)
        works.append(Work("decode", role, prefixes * items * generate, prefixes * decode))
    return works


def training(
    m: ModelInfo, role: str, *, rows: float, length: float, attention: float, lora: bool, dpo: bool
) -> Work:
    """``rows`` training rows of mean sequence ``length`` (mean attention FLOPs ``attention``);
    a DPO row is two sequences (chosen, rejected), each also run through the reference."""
    sequences = rows * (2 if dpo else 1)
    per_token = (4.0 if lora else 6.0) * m.params + (2.0 * m.params if dpo else 0.0)
    flops = sequences * (per_token * length + (3.0 + (1.0 if dpo else 0.0)) * attention)
    return Work("train", role, sequences * length, flops)


def pair_counts(config: StudyConfig) -> tuple[int, int]:
    """(question pairs, rationale pairs) one task's round yields, at most (ties drop pairs)."""
    nq, nr = config.n_questions, config.n_rationales
    if config.pair_rule == "arte":
        # The top and bottom quantile of the questions paired; per question, best vs worst.
        questions = max(1, math.floor(nq * config.quantile + 1e-9)) if nq >= 2 else 0
        return questions, nq if nr >= 2 else 0
    cap = config.max_pairs_per_prompt

    def most(n: int) -> int:
        pairs = (n // 2) * ((n + 1) // 2) if config.pair_rule == "baseline" else n * (n - 1) // 2
        return min(cap, pairs)

    return most(nq), nq * most(nr)


def training_rows(n: float, epochs: float, batch: int, max_steps: int) -> tuple[int, int]:
    """(optimizer steps, rows processed) as the trainer runs them: ``max_steps`` batches when
    set, else the epochs' batches (a row the trainer sees twice counts twice)."""
    if n <= 0:
        return 0, 0
    steps = max_steps if max_steps > 0 else math.ceil(epochs * n / batch)
    return steps, steps * batch


def split_sizes(shape: TaskShape, config: StudyConfig) -> tuple[int, int, int]:
    """(probe items, test items, examples outside the splits) as ``make_splits`` sizes them."""
    if shape.available is None:
        return config.n_probe, config.n_test, config.n_tailored
    free = shape.available - config.n_seed
    n_test = max(2, min(config.n_test, free - config.n_probe))
    n_probe = min(config.n_probe, free - n_test)
    return n_probe, n_test, max(0, free - n_probe - n_test)


def _score_generate_tokens() -> int:
    """The scorer's generation allowance in generate mode (the score stage keeps its default)."""
    import inspect

    from teachlab.score import Scorer

    return int(inspect.signature(Scorer.__init__).parameters["max_new_tokens"].default)


Found = dict[StageKey, tuple[int, list[Work], str]]


def _stage_works(
    spec: ExperimentSpec, shapes: Mapping[str, TaskShape], models: Mapping[str, ModelInfo]
) -> Found:
    """Every stage's work for one seed: {(stage, arm): (runs, works, note)}, in pipeline order."""
    cfg = spec.study
    teacher, student = models["teacher"], models["student"]
    found: Found = {}

    def add(stage: str, arm: str | None, works: list[Work], note: str, runs: int = 1) -> None:
        old_runs, old, old_note = found.get((stage, arm), (0, [], ""))
        found[(stage, arm)] = (old_runs + runs, old + works, old_note or note)

    per_call = 1 if cfg.scaffold else cfg.questions_per_call
    drafts = cfg.n_questions * cfg.n_rationales
    for shape in shapes.values():
        calls = math.ceil(cfg.n_questions / per_call) / PARSE_RATE
        add(
            "draft",
            None,
            _questions(shape, cfg, teacher, calls)
            + generation(
                teacher, "teacher", calls=drafts, prompt=shape.rationale_prompt, new=_rationale(cfg)
            ),
            f"{calls:g} question calls + {drafts} rationale calls a task",
        )
        add("score", None, _score(shape, cfg, student, teacher), _score_note(cfg, shape))
        add("pairs", None, [], "no model work")
    for arm in spec.arms:
        kind = ARM_KINDS[arm]
        if kind.pairs is not None:
            works, note = _align(shapes, cfg, teacher)
            add("align", arm, works, note)
        if kind.tailored:
            calls = math.ceil(cfg.n_tailored / per_call) / PARSE_RATE
            for shape in shapes.values():
                add(
                    "regenerate",
                    arm,
                    _questions(shape, cfg, teacher, calls)
                    + generation(
                        teacher,
                        "teacher",
                        calls=cfg.n_tailored,
                        prompt=shape.plain_prompt,
                        new=_rationale(cfg),
                    ),
                    f"{cfg.n_tailored} tailored questions + greedy rationales a task",
                )
        if kind.trains_student:
            works, note = _distill(shapes, cfg, student, gold=kind.gold)
            add("distill", arm, works, note)
        for shape in shapes.values():
            add(
                "evaluate",
                arm,
                _evaluate(shape, spec, student),
                f"{'/'.join(spec.eval_modes)} x {'/'.join(map(str, spec.eval_shots))}-shot "
                "on the test items",
            )
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    arms = {a: i for i, a in enumerate(spec.arms)}
    return dict(
        sorted(found.items(), key=lambda kv: (order[kv[0][0]], arms.get(kv[0][1] or "", -1)))
    )


def _rationale(cfg: StudyConfig) -> float:
    return float(cfg.max_new_tokens)  # every rationale writes its full allowance


def _questions(shape: TaskShape, cfg: StudyConfig, teacher: ModelInfo, calls: float) -> list[Work]:
    """Question calls of one task: one shared prompt; each writes questions_per_call questions
    as long as the task's own (at most max_new_tokens)."""
    per_call = 1 if cfg.scaffold else cfg.questions_per_call
    new = min(float(cfg.max_new_tokens), per_call * shape.question_block)
    works = generation(
        teacher, "teacher", calls=calls, prompt=shape.question_prompt, new=new, shared=True
    )
    if shape.scaffold_passes:
        # After the shared input pass each row has its own text: every later pass (target,
        # options) reads the whole prompt and what the row wrote again. Its few new tokens are
        # counted in ``new`` above.
        prompt = shape.question_prompt + new
        calls *= shape.scaffold_passes
        works.append(
            Work("prefill", "teacher", calls * prompt, calls * forward_flops(teacher, prompt))
        )
    return works


def _score(
    shape: TaskShape, cfg: StudyConfig, student: ModelInfo, teacher: ModelInfo
) -> list[Work]:
    """Each draft as the one demonstration before the probes, the zero-shot baseline, and IRT
    probe selection where the study asks for it."""
    n_probe, _, outside = split_sizes(shape, cfg)
    generate = cfg.scorer == "generate"
    probes = {
        "items": n_probe,
        "question": shape.question_cot if generate else shape.question,
        "choices": 0.0 if generate else shape.choices,
        "generate": float(_score_generate_tokens()) if generate else 0.0,
    }
    head = shape.special + shape.description
    demo = shape.demo_head + _rationale(cfg)
    drafts = cfg.n_questions * cfg.n_rationales
    works = scoring(student, "student", prefixes=drafts, prefix=head + demo, **probes)
    works += scoring(student, "student", prefixes=1, prefix=head, **probes)  # the baseline
    if cfg.probe_selection == "irt":
        # Candidates (3 x n_probe outside seeds and tests) answered in loglik mode by the
        # student and the teacher at 0..3 shots; the teacher's lengths taken as the student's.
        pool = min(3 * n_probe, n_probe + outside)
        for role, m in (("student", student), ("teacher", teacher)):
            for shots in range(min(3, cfg.n_seed) + 1):
                works += scoring(
                    m,
                    role,
                    prefixes=1,
                    prefix=head + shots * shape.shot,
                    items=pool,
                    question=shape.question,
                    choices=shape.choices,
                )
    return works


def _score_note(cfg: StudyConfig, shape: TaskShape) -> str:
    n_probe = split_sizes(shape, cfg)[0]
    irt = ", IRT probe selection" if cfg.probe_selection == "irt" else ""
    return (
        f"{cfg.n_questions * cfg.n_rationales} drafts x {n_probe} probes a task, {cfg.scorer}{irt}"
    )


def _align(
    shapes: Mapping[str, TaskShape], cfg: StudyConfig, teacher: ModelInfo
) -> tuple[list[Work], str]:
    """DPO on the pairs of every task at once: question pairs (drafting prompt + a question)
    and rationale pairs (the plain prompt + a rationale)."""
    q_pairs, r_pairs = pair_counts(cfg)
    pool: list[tuple[float, float]] = []  # (pairs, sequence length)
    for shape in shapes.values():
        pool.append((q_pairs, shape.question_prompt + shape.question_block))
        pool.append((r_pairs, shape.plain_prompt + _rationale(cfg)))
    n = sum(c for c, _ in pool)
    steps, rows = training_rows(n, cfg.dpo_epochs, cfg.dpo_batch_size, cfg.dpo_max_steps)
    note = (
        f"DPO on {n:g} pairs ({q_pairs} question + {r_pairs} rationale a task), {steps} steps "
        f"of {cfg.dpo_batch_size}, {'LoRA' if cfg.lora else 'full fine-tuning'}"
    )
    if not rows:
        return [], note
    length = sum(c * x for c, x in pool) / n
    attention = sum(c * attention_flops(teacher, x, 0.0) for c, x in pool) / n
    work = training(
        teacher, "teacher", rows=rows, length=length, attention=attention, lora=cfg.lora, dpo=True
    )
    return [work], note


def _distill(
    shapes: Mapping[str, TaskShape], cfg: StudyConfig, student: ModelInfo, *, gold: bool
) -> tuple[list[Work], str]:
    """SFT on every task's examples at once: tailored (description + question + rationale) or
    gold (the task's own question + answer, as many as it has outside its splits)."""
    pool: list[tuple[float, float]] = []  # (examples, sequence length)
    for shape in shapes.values():
        head = shape.special + shape.description + shape.question_cot
        if gold:
            pool.append((min(cfg.n_tailored, split_sizes(shape, cfg)[2]), head + shape.answer))
        else:
            pool.append((cfg.n_tailored, head + 1 + _rationale(cfg)))
    n = sum(c for c, _ in pool)
    steps, rows = training_rows(n, cfg.sft_epochs, cfg.sft_batch_size, cfg.sft_max_steps)
    note = (
        f"SFT on {n:g} {'gold' if gold else 'tailored'} examples, {steps} steps of "
        f"{cfg.sft_batch_size}, {'LoRA' if cfg.lora else 'full fine-tuning'}"
    )
    if not rows:
        return [], note
    length = sum(c * x for c, x in pool) / n
    attention = sum(c * attention_flops(student, x, 0.0) for c, x in pool) / n
    work = training(
        student, "student", rows=rows, length=length, attention=attention, lora=cfg.lora, dpo=False
    )
    return [work], note


def _evaluate(shape: TaskShape, spec: ExperimentSpec, student: ModelInfo) -> list[Work]:
    """One task's test items in each mode and shot count: loglik reads the question and the
    choices; cot reads the question and writes up to cot_max_tokens."""
    _, n_test, _ = split_sizes(shape, spec.study)
    works: list[Work] = []
    for mode in spec.eval_modes:
        for shots in spec.eval_shots:
            prefix = shape.special + shape.description + min(shots, spec.study.n_seed) * shape.shot
            if mode == "cot":
                works += scoring(
                    student,
                    "student",
                    prefixes=1,
                    prefix=prefix,
                    items=n_test,
                    question=shape.question_cot,
                    generate=float(spec.cot_max_tokens),
                )
            else:
                works += scoring(
                    student,
                    "student",
                    prefixes=1,
                    prefix=prefix,
                    items=n_test,
                    question=shape.question,
                    choices=shape.choices,
                )
    return works


def _merge(works: Iterable[Work]) -> list[Work]:
    """Works of one kind and role summed (every figure is linear in them)."""
    sums: dict[tuple[str, str], list[float]] = {}
    for w in works:
        acc = sums.setdefault((w.kind, w.role), [0.0, 0.0])
        acc[0] += w.tokens
        acc[1] += w.flops
    return [Work(kind, role, tokens, flops) for (kind, role), (tokens, flops) in sums.items()]


def _row(
    stage: str,
    arm: str | None,
    runs: int,
    works: list[Work],
    note: str,
    models: Mapping[str, ModelInfo],
    rates: Mapping[str, Calibration],
    device: tuple[Accelerator, int] | None,
) -> StageRow:
    roles = sorted({w.role for w in works}, key=("teacher", "student").index)
    here: float | None = None
    if all(role in rates for role in roles):
        here = sum(w.flops / rates[w.role].rate(w.kind) for w in works)
        # Each run of the stage loads its models once; a larger model loads in proportion.
        here += runs * sum(
            rates[r].load_seconds * models[r].params / rates[r].params for r in roles
        )
    gpu = sum(gpu_seconds(w, models[w.role], device) for w in works) if device else None
    return StageRow(
        stage=stage,
        arm=arm,
        models="+".join(roles) or "-",
        runs=runs,
        tokens_generated=sum(w.tokens for w in works if w.kind == "decode"),
        tokens_scored=sum(w.tokens for w in works if w.kind == "prefill"),
        tokens_trained=sum(w.tokens for w in works if w.kind == "train"),
        flops=sum(w.flops for w in works),
        seconds_here=here if rates else None,
        seconds_gpu=gpu,
        note=note,
        work=works,
    )


def gpu_seconds(w: Work, m: ModelInfo, device: tuple[Accelerator, int] | None) -> float:
    """Seconds of one work on ``count`` accelerators (ideal scaling across them): FLOPs at the
    stated utilisation; decoding at the slower of that and rereading the bf16 weights once a
    step of GPU_DECODE_ROWS rows at the stated share of the memory bandwidth."""
    if device is None:
        return 0.0
    gpu, count = device
    if w.kind == "train":
        return w.flops / (count * gpu.peak_flops * UTILISATION["train"])
    compute = w.flops / (count * gpu.peak_flops * UTILISATION["prefill"])
    if w.kind == "prefill":
        return compute
    steps = w.tokens / GPU_DECODE_ROWS
    memory = (
        steps * BF16_BYTES * m.params / (count * gpu.bandwidth * UTILISATION["decode_bandwidth"])
    )
    return max(compute, memory)


def _gpu_label(device: tuple[Accelerator, int] | None) -> str | None:
    if device is None:
        return None
    gpu, count = device
    return f"{count}x {gpu.label}" if count > 1 else gpu.label


def _warnings(
    spec: ExperimentSpec,
    models: Mapping[str, ModelInfo],
    device: tuple[Accelerator, int] | None,
    shapes: Mapping[str, TaskShape],
    calibration: Sequence[Calibration],
) -> list[str]:
    out = []
    cores = os.cpu_count() or 1
    for c in calibration:
        if c.load is not None and c.load > cores:
            out.append(
                f"The machine was busy while the {c.role} was measured (load average "
                f"{c.load:.1f} on {cores} cores): other jobs share its cores, so the time here is "
                "likely too long; estimate again when the machine is quiet."
            )
    defaults = [s.task for s in shapes.values() if s.source != "task data"]
    if defaults:
        out.append(
            f"No task data here for {', '.join(defaults)}: its lengths are the stated defaults."
        )
    if device is None:
        return out
    gpu, count = device
    memory = gpu.memory_gb * count
    label = _gpu_label(device)
    for role, m in models.items():
        weights = BF16_BYTES * m.params / 1e9
        if weights > memory:
            out.append(
                f"The {role}'s bf16 weights ({weights:,.0f} GB) do not fit in {label} "
                f"({memory:,.0f} GB): it needs more GPUs or quantisation; times assume it runs."
            )
    trains = {"teacher": any(ARM_KINDS[a].pairs for a in spec.arms)}
    trains["student"] = any(ARM_KINDS[a].trains_student for a in spec.arms)
    for role, m in models.items():
        if not trains[role]:
            continue
        per_param = BF16_BYTES if spec.study.lora else FULL_TRAIN_BYTES
        per_param += BF16_BYTES if role == "teacher" else 0  # DPO's reference model
        need = per_param * m.params / 1e9
        if need > memory:
            out.append(
                f"Training the {role} ({'LoRA' if spec.study.lora else 'full fine-tuning'}) "
                f"needs about {need:,.0f} GB for weights, gradients and optimizer states "
                f"(activations aside), more than {label} holds ({memory:,.0f} GB): shard with "
                "ZeRO-3/FSDP and offload, or use more GPUs; times assume it runs."
            )
    return out


def assumptions(
    spec: ExperimentSpec,
    models: Mapping[str, ModelInfo],
    device: tuple[Accelerator, int] | None,
    calibrated: bool,
) -> list[str]:
    """The estimate's assumptions as sentences, with this experiment's numbers in them."""
    cfg = spec.study
    out = [
        "Per seed every stage runs again; shared stages (draft, score, pairs) run once per task; "
        "align and distill pool their tasks into one training run per arm; regenerate and "
        "evaluate run per arm and task. The signal check is not counted, nor model loading on "
        "the GPU.",
        f"Every teacher call parses ({PARSE_RATE:.0%}): no repeated question calls, no forced "
        "answers; a lower parse rate multiplies the question calls (up to the stage's cap of 4x).",
        f"Generation writes its full allowance: max_new_tokens={cfg.max_new_tokens} a rationale, "
        f"cot_max_tokens={spec.cot_max_tokens} a chain-of-thought answer, "
        f"{_score_generate_tokens()} a generate-mode probe answer; a question call writes "
        f"questions_per_call questions as long as the task's own (at most max_new_tokens). "
        "Calls that stop early cost less: generation figures are upper bounds.",
        "Question calls of a task share one prompt, read once (the backend caches it); every "
        "rationale call reads its own prompt. The scorer reads each demonstration once and each "
        "probe's question and choices after it (its fast path, docs/performance.md).",
        "Token lengths: the stages' own prompt templates rendered on up to "
        f"{SAMPLE} examples of each task, counted with the teacher's tokenizer for teacher "
        f"prompts ({models['teacher'].tokenizer or '?'}) and the student's for the student's "
        f"({models['student'].tokenizer or '?'}); a teacher's rationale is counted as the same "
        "number of student tokens in demonstrations and SFT examples.",
        "Pairs a task (arte rule): the top and bottom quantile of the questions paired "
        f"(floor({cfg.n_questions} x {cfg.quantile}) = {pair_counts(cfg)[0]}) and one best-vs-worst "
        f"rationale pair per question ({pair_counts(cfg)[1]}); ties would drop some. Other rules: "
        "their caps as upper bounds."
        if cfg.pair_rule == "arte"
        else f"Pairs a task ({cfg.pair_rule} rule): at most {pair_counts(cfg)[0]} question and "
        f"{pair_counts(cfg)[1]} rationale pairs (the rule's cap, an upper bound).",
        "Training rows: max_steps x batch when max_steps is set, else the epochs' batches; a "
        "question pair is its drafting prompt + one question, a rationale pair the plain prompt "
        "+ a rationale; a tailored SFT example is description + question + rationale; gold "
        "examples (the gold arm) are min(n_tailored, the task's examples outside its splits), "
        "question + answer.",
        "Evaluation: each arm's own student (the untouched one for the student arm) on the test "
        "items, in each mode and shot count; shots are task examples as question + answer.",
        "FLOPs: 2 P a token forward (P: every stored weight once; tied embeddings count once, as "
        "the output head), 6 P a trained token for full fine-tuning and 4 P with LoRA (no weight "
        "gradients for frozen weights), plus 2 P for DPO's reference forward; attention adds "
        "4 x layers x (heads x head dim) per (query, key) pair over the causal context (x3 when "
        "trained), omitted for a model whose shape is not readable here "
        f"({', '.join(r for r, m in models.items() if not m.layers) or 'none'}); at the paper's "
        "lengths (under ~2k tokens) it is a few per cent of 2 P for billion-parameter models.",
    ]
    for role, m in models.items():
        out.append(f"The {role} {m.ref}: {m.params / 1e9:.3g}B parameters ({m.source}).")
    if calibrated:
        out.append(
            "Time here: FLOPs / the FLOP/s measured on this machine for the same kind of work "
            "(prefill, decode at the backend's batch of "
            f"{CAL_DECODE[0]} rows, training step) by the bundled model in the same role; a "
            "larger model is assumed to reach the same FLOP/s (time scales with parameters), "
            "and needs the memory to hold it. Each run of a stage also loads its models once "
            "(the measured load time, scaled by parameters); parse failures, forced answers "
            "and trainer set-up are not counted."
        )
    else:
        out.append("Time here: not calibrated (calibrate=False).")
    if device is not None:
        gpu, count = device
        out.append(
            f"Time on {_gpu_label(device)}: {gpu.peak_flops / 1e12:g} TFLOP/s dense bf16 and "
            f"{gpu.bandwidth / 1e12:g} TB/s a GPU ({gpu.source}); utilisation "
            f"{UTILISATION['prefill']:.0%} of peak for prefill and scoring, "
            f"{UTILISATION['train']:.0%} for training; decoding is memory-bound: each step of "
            f"{GPU_DECODE_ROWS} rows rereads the bf16 weights at "
            f"{UTILISATION['decode_bandwidth']:.0%} of the bandwidth (KV-cache reads not counted; "
            "they add ~10-20% for a 70B at 64 rows x 1k tokens), or the FLOPs bound where slower."
            + (
                f" {count} GPUs scale ideally (no communication cost, no idle GPUs)."
                if count > 1
                else ""
            )
        )
    return out
