"""Drafting stages (ARTE steps 1, 2 and 7): the teacher writes questions, then rationales.

Pure cores (``check_target``, ``DuplicateIndex``, the parsers in ``teachlab.prompts``) and two
stage functions that store each completion as it arrives and, when rerun, skip stored keys.

- Keys: a question call's rows are ``q:{call}:{j}`` (the j-th ``<Question_k>`` block, whatever
  its k) or ``q:{call}:raw`` when the output had no block; a rationale is ``r:{question}:{strategy}``.
- Seeds: ``derive_seed(study.seed, round.index, phase, key)``, a hash, so no two calls, rounds
  or phases share one however many calls a stage makes.
- Targets: a task whose examples share one label set (plausible/implausible; BBH's (A)…(F))
  gives drafts that set as ``choices``; per-example choices (BIG-bench date_understanding) come
  from the draft's own ``Options:`` line, which must list two or more different options. The
  target must match a choice (case, spaces and parentheses aside) and is stored in its
  spelling; numeric tasks need a number. Else: rejected.
  An ``Options:`` line we appended to the seeds is stripped from the draft's input again, so a
  draft looks like a task example.
- Scaffold (study setting): one question per call, written field by field (``scaffold_generate``).
- Near-duplicates (rapidfuzz ratio ≥ 90, normalised) of seed, probe or test inputs, of stored
  questions or of an earlier block get status ``duplicate``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from teachlab import prompts
from teachlab.backends.base import ChoosingBackend, GenerationBackend, GenRequest
from teachlab.config import StudyConfig
from teachlab.db import Draft, Round, Study, read_session, write_session
from teachlab.errors import ConfigError, DataError, NotFoundError
from teachlab.jobs.context import StageContext
from teachlab.prompts import BlockResult as BlockResult  # the parsers, re-exported
from teachlab.prompts import ParsedQuestion as ParsedQuestion
from teachlab.prompts import parse_question_blocks, parse_rationale
from teachlab.prompts import parse_questions as parse_questions
from teachlab.tasks.model import Task, parse_number
from teachlab.tasks.splits import normalise

PHASES = ("draft", "tailored")
DUPLICATE_THRESHOLD = 90.0
CALL_CAP_FACTOR = 4  # stop after this many times the calls that a perfect parse would need
SCAFFOLD_CHUNK = 8  # scaffolded calls written together when the backend has no batch size
ERASED_STRATEGY = "erased"  # tailored rationales: the plain prompt, no strategy

# ---------------------------------------------------------------- targets (pure)


def _label_key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".").strip("()").strip()).casefold()


def shared_labels(task: Task) -> tuple[str, ...]:
    """The one label set all of a task's examples share (in first-seen order), else ``()``."""
    if not task.is_multiple_choice:
        return ()
    first = task.examples[0].choices
    wanted = {_label_key(c) for c in first}
    if all({_label_key(c) for c in e.choices} == wanted for e in task.examples):
        return tuple(first)
    return ()


def options_appended(task: Task, indices: Sequence[int]) -> bool:
    """Whether the seed inputs were shown with an ``Options:`` line added by us."""
    return any(
        task.examples[i].choices
        and prompts.question_text(task.examples[i].input, task.examples[i].choices)
        != task.examples[i].input
        for i in indices
    )


@dataclass(frozen=True)
class TargetCheck:
    input: str
    target: str
    choices: tuple[str, ...]
    flags: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """Why the target is unusable ("" when it is fine)."""
        messages = {
            "no-options": "the question lists no options to choose from",
            "one-option": "the question lists a single option",
            "repeated-options": "the question lists the same option more than once",
            "target-not-in-choices": f"target {self.target!r} is not one of: "
            + " | ".join(self.choices),
            "target-not-numeric": f"target {self.target!r} is not a number",
            "empty-target": "empty target",
            "empty-input": "the question has no text besides its options",
        }
        return "; ".join(messages[f] for f in self.flags if f in messages)


def check_target(
    task: Task, input_text: str, target: str, strip_options: bool = True
) -> TargetCheck:
    """Choices for a drafted question and whether its target is an acceptable answer form.

    See the module docstring for the rule. ``strip_options``: remove a trailing ``Options:``
    line from the input (do this when the seeds were shown with one appended).
    """
    bare, options = prompts.split_options(input_text)
    stored_input = bare if strip_options and options else input_text
    labels = shared_labels(task)
    flags: list[str] = []
    target = target.strip()
    if not target:
        return TargetCheck(stored_input, target, labels or options, ("empty-target",))
    if not stored_input.strip():
        return TargetCheck(stored_input, target, labels or options, ("empty-input",))
    if labels:
        choices = labels
    elif task.is_multiple_choice:
        choices = options
        if not choices:
            flags.append("no-options")
        elif len(choices) == 1:
            flags.append("one-option")
        elif len({_label_key(c) for c in choices}) < len(choices):
            flags.append("repeated-options")
    else:
        choices = ()
    if choices:
        match = next((c for c in choices if _label_key(c) == _label_key(target)), None)
        if match is None:
            flags.append("target-not-in-choices")
        else:
            target = match
    elif task.is_numeric and parse_number(target) is None:
        flags.append("target-not-numeric")
    return TargetCheck(stored_input, target, tuple(choices), tuple(flags))


# ---------------------------------------------------------------- near-duplicates (pure)


@dataclass
class DuplicateIndex:
    """Texts a new question must not repeat: named reference inputs plus accepted questions."""

    threshold: float = DUPLICATE_THRESHOLD
    texts: list[str] = field(default_factory=list)  # normalised as tasks.splits does
    labels: list[str] = field(default_factory=list)

    def add(self, text: str, label: str) -> None:
        self.texts.append(normalise(text))
        self.labels.append(label)

    def find(self, text: str) -> str | None:
        """Why ``text`` is a near-duplicate (the closest match), or None."""
        from rapidfuzz import fuzz, process

        hit = process.extractOne(
            normalise(text), self.texts, scorer=fuzz.ratio, score_cutoff=self.threshold
        )
        return f"near-duplicate of {self.labels[hit[2]]} (similarity {hit[1]:.0f})" if hit else None


# ---------------------------------------------------------------- helpers


def derive_seed(study_seed: int, round_index: int, phase: str, key: str) -> int:
    """A 31-bit seed for one request, unique per (study seed, round, phase, key)."""
    text = f"{study_seed}:{round_index}:{phase}:{key}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1


def _load(
    db_path: Any, round_id: int, task: Task | None, phase: str
) -> tuple[Study, Round, StudyConfig, Task]:
    if phase not in PHASES:
        raise ConfigError(f"Unknown drafting phase {phase!r}; use one of {', '.join(PHASES)}.")
    with read_session(db_path) as session:
        rnd = session.get(Round, round_id)
        study = session.get(Study, rnd.study_id) if rnd else None
    if rnd is None or study is None:
        raise NotFoundError(f"Round {round_id} does not exist; choose a round of a study.")
    if task is None:
        from teachlab.tasks import resolve_task

        task = resolve_task(study.task_ref)
    return study, rnd, StudyConfig.from_dict(study.config), task


def _split(study: Study, name: str) -> list[int]:
    return [int(i) for i in (study.splits or {}).get(name, [])]


def _tokenizer(backend: GenerationBackend, ref: str, tokenizer: Any) -> Any:
    # The OpenAI backend has no tokenizer: the chat template is applied here, from the ref.
    return tokenizer or getattr(backend, "tokenizer", None) or prompts.load_tokenizer(ref)


def _adapter_hash(backend: GenerationBackend, rnd: Round) -> str | None:
    own = getattr(backend, "adapter_hash", None)
    if own or not rnd.teacher_adapter:
        return own
    from pathlib import Path

    from teachlab.models import hash_folder

    return hash_folder(Path(rnd.teacher_adapter), "adapter_model.safetensors")


def _store(ctx: StageContext, rows: list[Draft]) -> bool:
    """Write one completion's rows in their own transaction; False if already stored."""
    try:
        with write_session(ctx.db_path) as session:
            session.add_all(rows)
    except IntegrityError:
        # Another run stored this key first (a duplicate worker); its rows stand.
        ctx.log(f"{rows[0].idem_key}: already stored, skipped")
        return False
    return True


# ---------------------------------------------------------------- stage: questions


def run_draft_questions(
    ctx: StageContext,
    round_id: int,
    backend: GenerationBackend,
    phase: str = "draft",
    *,
    task: Task | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Draft questions until ``n_questions`` (``n_tailored`` when tailored) are ok, or the cap.

    Each call shows the seed examples and asks for ``questions_per_call`` more; calls go out in
    waves sized to what is still missing. Returns counts for the run's result.
    """
    study, rnd, cfg, task = _load(ctx.db_path, round_id, task, phase)
    wanted = cfg.n_questions if phase == "draft" else cfg.n_tailored
    per_call = 1 if cfg.scaffold else cfg.questions_per_call
    cap = CALL_CAP_FACTOR * math.ceil(wanted / per_call)
    seed_idx = _split(study, "seed")[: cfg.n_seed]
    if not seed_idx:
        raise DataError(
            f"Study {study.name!r} has no seed examples in its splits; recreate its splits."
        )
    examples = [
        {"input": prompts.question_text(ex.input, ex.choices), "target": ex.target}
        for ex in (task.examples[i] for i in seed_idx)
    ]
    messages = prompts.question_messages(task.name, task.description, examples, per_call)
    # A scaffold starts where the prefill ends, so it always writes the prefill.
    prefill = prompts.question_prefill(len(examples)) if cfg.prefill or cfg.scaffold else ""
    prompt = prompts.render_chat(_tokenizer(backend, rnd.teacher, tokenizer), messages, prefill)
    strip = options_appended(task, seed_idx)
    stops = prompts.question_stops(len(examples), per_call)
    generate = (
        functools.partial(
            scaffold_generate,
            backend,
            number=len(examples) + 1,
            options=(shared_labels(task) or ()) if strip else None,
        )
        if cfg.scaffold
        else backend.generate
    )

    dupes = DuplicateIndex()
    for name in ("seed", "probe", "test"):
        for i in _split(study, name):
            dupes.add(task.examples[i].input, f"{name} item {i}")
    with read_session(ctx.db_path) as session:
        stored = session.exec(
            select(Draft).where(
                Draft.round_id == round_id, Draft.phase == phase, Draft.kind == "question"
            )
        ).all()
    done_calls = {int(d.idem_key.split(":")[1]) for d in stored}
    ok = 0
    for d in sorted(stored, key=lambda d: d.id or 0):
        if d.status == "ok" and d.input is not None:
            ok += 1
            dupes.add(d.input, f"draft #{d.id}")
    base: dict[str, Any] = {
        "kind": "question",
        "phase": phase,
        "round_id": round_id,
        "prompt": prompt,
        "prefill": prefill,
        "template_version": prompts.TEMPLATE_VERSIONS["question"],
        "teacher": rnd.teacher,
        "adapter_hash": _adapter_hash(backend, rnd),
    }
    counts = {"calls": 0, "ok": 0, "rejected": 0, "duplicate": 0}
    ctx.progress(min(ok, wanted), wanted, f"{ok} of {wanted} questions")
    next_call = 0
    while ok < wanted and len(done_calls) < cap:
        n_calls = min(math.ceil((wanted - ok) / per_call), cap - len(done_calls))
        wave: list[int] = []
        while len(wave) < n_calls:
            if next_call not in done_calls:
                wave.append(next_call)
            next_call += 1
        requests = [
            GenRequest(
                key=f"q:{call}",
                prompt=prompt,
                temperature=cfg.question_temperature,
                max_new_tokens=cfg.max_new_tokens,
                seed=derive_seed(study.seed, rnd.index, phase, f"q:{call}"),
                stop=stops,
            )
            for call in wave
        ]
        for request, completion in generate(requests):
            call = int(request.key.split(":")[1])
            sampling = _sampling(request, backend) | ({"scaffold": True} if cfg.scaffold else {})
            rows = _question_rows(task, request.key, completion, prefill, strip, dupes)
            drafts = [Draft(**base, **row, sampling=sampling) for row in rows]
            if _store(ctx, drafts):
                for d in drafts:
                    counts[d.status] += 1
                    if d.status == "ok":
                        ok += 1
                        dupes.add(d.input or "", f"a question of call {call}")
                counts["calls"] += 1
            done_calls.add(call)
            ctx.progress(min(ok, wanted), wanted, f"{ok} of {wanted} questions")
            ctx.check_cancelled()
    if ok < wanted:
        ctx.log(
            f"Stopped after {len(done_calls)} teacher calls (the cap, {CALL_CAP_FACTOR}x the "
            f"calls needed at a perfect parse) with {ok} of {wanted} questions; raise the "
            "temperature's parse rate (lower temperature, prefill on) or ask for fewer."
        )
    blocks = counts["ok"] + counts["rejected"] + counts["duplicate"]
    return {
        **counts,
        "total_ok": ok,
        "wanted": wanted,
        "parse_rate": (counts["ok"] + counts["duplicate"]) / blocks if blocks else None,
    }


def scaffold_generate(
    backend: GenerationBackend,
    requests: Sequence[GenRequest],
    number: int,
    *,
    options: Sequence[str] | None,
) -> Iterator[tuple[GenRequest, str]]:
    """Question calls written field by field (the ``scaffold`` setting).

    Each request's prompt ends with the prefill ``<Question_k><input>``. The teacher writes the
    input. ``options`` says how the seeds showed their choices: None, no ``Options:`` line;
    a label set the whole task shares, TeachLab writes that line itself; empty (every question
    has its own choices), TeachLab writes ``\nOptions:`` and the teacher the options. Then
    TeachLab writes ``</input><target>``, the teacher the target, and TeachLab closes the block.
    Every field is one batched pass at the request's temperature and seed, and ends at its
    closing tag, a newline where the format has none, or a tag the teacher starts.
    Requests go in chunks of the backend's batch size (8 without one); each request is yielded
    with its assembled block (without the prefill), which parses like any question output, once
    its chunk has written its last field: a crash loses at most the chunk in progress.
    """
    size = max(1, int(getattr(backend, "batch_size", SCAFFOLD_CHUNK)))
    for start in range(0, len(requests), size):
        yield from _scaffold_chunk(backend, requests[start : start + size], number, options)


def _scaffold_chunk(
    backend: GenerationBackend,
    requests: Sequence[GenRequest],
    number: int,
    options: Sequence[str] | None,
) -> Iterator[tuple[GenRequest, str]]:
    written = {r.key: "" for r in requests}

    def fill(name: str, cue: str, stops: tuple[str, ...], max_tokens: int) -> None:
        steps = {
            f"{r.key}:{name}": GenRequest(
                key=f"{r.key}:{name}",
                prompt=r.prompt + written[r.key] + cue,
                temperature=r.temperature,
                max_new_tokens=min(max_tokens, r.max_new_tokens),
                seed=r.seed,
                stop=stops,
            )
            for r in requests
        }
        for step, completion in backend.generate(list(steps.values())):
            key = step.key.rsplit(":", 1)[0]
            text = completion.strip()
            written[key] += f"{cue} {text}" if cue.endswith(":") else cue + text

    input_stops = prompts.INPUT_STOPS if options is None else prompts.INPUT_STOPS_BEFORE_OPTIONS
    fill("input", "", input_stops, requests[0].max_new_tokens if requests else 0)
    if options:
        line = prompts.question_text("", options)  # "\nOptions: a | b", as the seeds show it
        for r in requests:
            written[r.key] += line
    elif options is not None:
        fill("options", prompts.SCAFFOLD_OPTIONS, prompts.OPTIONS_STOPS, prompts.OPTIONS_TOKENS)
    fill("target", prompts.SCAFFOLD_TARGET, prompts.TARGET_STOPS, prompts.TARGET_TOKENS)
    for request in requests:
        yield request, f"{written[request.key]}</target></Question_{number}>"


def _sampling(request: GenRequest, backend: GenerationBackend) -> dict[str, Any]:
    return {
        "temperature": request.temperature,
        "max_new_tokens": request.max_new_tokens,
        "seed": request.seed,
        "top_p": 1.0,
        "backend": backend.name,
    }


def _question_rows(
    task: Task, key: str, completion: str, prefill: str, strip: bool, dupes: DuplicateIndex
) -> list[dict[str, Any]]:
    """The Draft fields for every block of one call's output (the raw row when none)."""
    blocks = parse_question_blocks(completion, prefill)
    if not blocks:
        return [
            {
                "idem_key": f"{key}:raw",
                "raw_output": completion,
                "status": "rejected",
                "reason": "no <Question_k> block in the output",
            }
        ]
    rows = []
    for block in blocks:
        row: dict[str, Any] = {"idem_key": f"{key}:{block.slot}", "raw_output": completion}
        if block.question is None:
            rows.append({**row, "status": "rejected", "reason": block.reason})
            continue
        check = check_target(task, block.question.input, block.question.target, strip)
        row.update(
            input=check.input,
            target=check.target,
            choices=list(check.choices),
            flags=list(check.flags),
        )
        reason = check.reason
        duplicate = None if reason else dupes.find(check.input)
        if reason:
            row.update(status="rejected", reason=reason)
        elif duplicate:
            row.update(status="duplicate", reason=duplicate)
        else:
            row.update(status="ok")
            dupes.add(check.input, f"block {block.slot} of {key}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- stage: rationales


def run_draft_rationales(
    ctx: StageContext,
    round_id: int,
    backend: GenerationBackend,
    phase: str = "draft",
    *,
    task: Task | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """One rationale per (ok question, strategy); tailored: one greedy plain-prompt rationale.

    Draft phase: the first ``n_rationales`` strategies at ``rationale_temperature``. Tailored
    phase (SPEC step 7): the plain prompt ("prompt erasure") at temperature 0.
    """
    study, rnd, cfg, task = _load(ctx.db_path, round_id, task, phase)
    tok = _tokenizer(backend, rnd.teacher, tokenizer)
    prefill = prompts.RATIONALE_PREFILL if cfg.prefill else ""
    if phase == "draft":
        strategies = list(cfg.strategies[: cfg.n_rationales])
        temperature = cfg.rationale_temperature
    else:
        strategies, temperature = [ERASED_STRATEGY], 0.0
    with read_session(ctx.db_path) as session:
        questions = session.exec(
            select(Draft)
            .where(
                Draft.round_id == round_id,
                Draft.phase == phase,
                Draft.kind == "question",
                Draft.status == "ok",
            )
            .order_by(col(Draft.id))
        ).all()
        done = set(
            session.exec(
                select(Draft.idem_key).where(
                    Draft.round_id == round_id, Draft.phase == phase, Draft.kind == "rationale"
                )
            ).all()
        )
    adapter_hash = _adapter_hash(backend, rnd)
    by_key: dict[str, tuple[Draft, str]] = {}
    requests = []
    for q in questions:
        text = prompts.question_text(q.input or "", q.choices)
        for strategy in strategies:
            key = f"r:{q.id}:{strategy}"
            if key in done:
                continue
            if strategy == ERASED_STRATEGY:
                messages = prompts.plain_messages(text)
            else:
                messages = prompts.rationale_messages(strategy, task.name, task.description, text)
            by_key[key] = (q, strategy)
            requests.append(
                GenRequest(
                    key=key,
                    prompt=prompts.render_chat(tok, messages, prefill),
                    temperature=temperature,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=derive_seed(study.seed, rnd.index, phase, key),
                    stop=(prompts.TURN_STOP,),
                )
            )
    total = len(questions) * len(strategies)
    finished = total - len(requests)
    counts = {"ok": 0, "rejected": 0}
    ctx.progress(finished, total, f"{finished} of {total} rationales")
    template = "plain" if phase == "tailored" else "rationale"

    def store(request: GenRequest, completion: str, forced: str = "") -> None:
        nonlocal finished
        q, strategy = by_key[request.key]
        rationale, answer, reason = parse_rationale(prefill + completion)
        flags = _rationale_flags(q, answer, reason) + (["forced-answer"] if forced else [])
        if forced == "choice":
            flags.append("answer-chosen")
        status = "ok" if rationale else "rejected"
        draft = Draft(
            round_id=round_id,
            kind="rationale",
            phase=phase,
            parent_id=q.id,
            idem_key=request.key,
            strategy=strategy,
            prompt=request.prompt,
            prefill=prefill,
            raw_output=completion,
            input=q.input,
            target=q.target,
            choices=list(q.choices),
            rationale=rationale or None,
            answer=answer,
            status=status,
            reason=reason,
            flags=flags,
            template_version=prompts.TEMPLATE_VERSIONS[template],
            sampling=_sampling(request, backend),
            teacher=rnd.teacher,
            adapter_hash=adapter_hash,
        )
        if _store(ctx, [draft]):
            counts[status] += 1
        finished += 1
        ctx.progress(finished, total, f"{finished} of {total} rationales")
        ctx.check_cancelled()

    # Rationales without an answer wait for one forcing pass (batched); a crash before it
    # loses only them, and a resume regenerates them with the same seeds.
    unanswered: dict[str, tuple[GenRequest, str]] = {}
    for request, completion in backend.generate(requests):
        if (
            cfg.force_answer
            and completion.strip()
            and parse_rationale(prefill + completion)[1] is None
        ):
            unanswered[request.key] = (request, completion)
        else:
            store(request, completion)
    if unanswered:
        ctx.log(f"forcing an answer on {len(unanswered)} rationales without <ans>")
        # A question with options gets the one the teacher finds likeliest after the cue, where
        # the backend can rank continuations; otherwise the teacher finishes the cue greedily.
        choosing = isinstance(backend, ChoosingBackend)
        forcing = []
        for key, (request, completion) in unanswered.items():
            stem = _forced_stem(completion)
            choices = list(by_key[key][0].choices or ())
            if choosing and choices:
                scores = backend.choose(request.prompt + stem, choices, prompts.ANSWER_CLOSE)  # type: ignore[attr-defined]
                best = choices[max(range(len(choices)), key=scores.__getitem__)]
                store(request, stem + best + prompts.ANSWER_CLOSE, forced="choice")
                continue
            forcing.append(
                GenRequest(
                    key=key,
                    prompt=request.prompt + stem,
                    temperature=0.0,
                    max_new_tokens=prompts.FORCED_ANSWER_TOKENS,
                    seed=request.seed,
                    stop=(prompts.ANSWER_CLOSE, prompts.TURN_STOP, "\n"),
                )
            )
        for forced, tail in backend.generate(forcing) if forcing else ():
            request, completion = unanswered[forced.key]
            store(
                request,
                _forced_stem(completion) + tail.strip() + prompts.ANSWER_CLOSE,
                forced="greedy",
            )
    return {**counts, "total": total, "skipped": total - counts["ok"] - counts["rejected"]}


def _forced_stem(completion: str) -> str:
    """The rationale as written, then the answer cue (its unfinished ``<ans>`` included)."""
    return completion.rstrip() + prompts.ANSWER_CUE


def _rationale_flags(question: Draft, answer: str | None, reason: str) -> list[str]:
    if answer is None:
        return ["no-answer"]
    flags = ["unclosed-answer"] if reason == "unclosed <ans>" else []
    if question.choices and all(_label_key(c) != _label_key(answer) for c in question.choices):
        flags.append("answer-not-in-choices")
    if question.target is not None and _label_key(answer) != _label_key(question.target):
        flags.append("answer-disagrees-with-target")
    return flags
