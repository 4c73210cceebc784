"""The draft stage (ARTE steps 1 and 2): the teacher writes questions, then rationales.

Each completion is stored as it arrives, in its own transaction, under an idempotency key; a
rerun skips stored keys, so a crash loses at most the requests in flight. The pure cores
(target checks, duplicates, seeds, the scaffold) are in ``teachlab.drafting``; the tailored
phase (step 7) is the same two functions with ``phase="tailored"`` (``stages.regenerate``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from teachlab import prompts
from teachlab.backends.base import ChoosingBackend, GenerationBackend, GenRequest
from teachlab.db import Draft, Round, Run, queries, read_session
from teachlab.drafting import (
    ERASED_STRATEGY,
    PHASES,
    DuplicateIndex,
    derive_seed,
    forced_stem,
    options_appended,
    question_rows,
    rationale_flags,
    sampling_record,
    scaffold_generate,
    shared_labels,
)
from teachlab.errors import ConfigError, DataError, JobError
from teachlab.jobs.context import StageContext
from teachlab.prompts import parse_rationale
from teachlab.rounds import LoadedRound, load_round

CALL_CAP_FACTOR = 4  # stop after this many times the calls that a perfect parse would need

Generate = Callable[[Sequence[GenRequest]], Iterator[tuple[GenRequest, str]]]


def stage_draft(ctx: StageContext, run: Run) -> dict[str, Any]:
    """Questions until the study's count is reached, then one rationale per strategy."""
    from teachlab.backends import make_backend

    loaded = load_round(run.round_id)
    rnd = loaded.round
    backend = make_backend(loaded.study.backend, rnd.teacher, adapter=rnd.teacher_adapter)
    try:
        questions = draft_questions(ctx, loaded.id, backend)
        if not questions.get("total_ok"):
            raise JobError(
                f"The teacher wrote no usable question in {questions.get('calls', 0)} calls "
                f"(parse rate {questions.get('parse_rate') or 0:.0%}); raise max_new_tokens, turn "
                "prefill on or lower the question temperature in the study settings, then resume."
            )
        rationales = draft_rationales(ctx, loaded.id, backend, phase="draft")
        tokens = dict(getattr(backend, "tokens", {}))
    finally:
        backend.close()
    return {"questions": questions, "rationales": rationales, "tokens": tokens}


# ---------------------------------------------------------------- shared helpers


def _load(round_id: int, phase: str) -> LoadedRound:
    if phase not in PHASES:
        raise ConfigError(f"Unknown drafting phase {phase!r}; use one of {', '.join(PHASES)}.")
    return load_round(round_id)


def _tokenizer(backend: GenerationBackend, ref: str, tokenizer: Any) -> Any:
    # The OpenAI backend has no tokenizer: the chat template is applied here, from the ref.
    return tokenizer or getattr(backend, "tokenizer", None) or prompts.load_tokenizer(ref)


def _adapter_hash(backend: GenerationBackend, rnd: Round) -> str | None:
    own = getattr(backend, "adapter_hash", None)
    if own or not rnd.teacher_adapter:
        return own
    from teachlab.models import trained_hash

    return trained_hash(rnd.teacher_adapter)


def _store(ctx: StageContext, rows: list[Draft]) -> bool:
    """Write one completion's rows in their own transaction; False if already stored."""
    try:
        with ctx.write() as session:
            session.add_all(rows)
    except IntegrityError:
        # Another run stored this key first (a duplicate worker); its rows stand.
        ctx.log(f"{rows[0].idem_key}: already stored, skipped")
        return False
    return True


# ---------------------------------------------------------------- questions


@dataclass(frozen=True)
class QuestionPrompt:
    """How one round and phase asks its teacher for questions."""

    prompt: str  # the chat-templated prompt, prefill included
    prefill: str
    stops: tuple[str, ...]
    strip_options: bool  # the seeds showed an Options: line we appended
    per_call: int  # questions one call asks for
    generate: Generate  # the backend's generate, or the field-by-field scaffold


def question_prompt(
    loaded: LoadedRound, backend: GenerationBackend, tokenizer: Any
) -> QuestionPrompt:
    """The question-drafting prompt: the task, its seed examples, a request for more."""
    cfg, task = loaded.config, loaded.task
    seed_idx = loaded.split("seed")[: cfg.n_seed]
    if not seed_idx:
        raise DataError(
            f"Study {loaded.study.name!r} has no seed examples in its splits; recreate its splits."
        )
    per_call = 1 if cfg.scaffold else cfg.questions_per_call
    examples = [
        {"input": prompts.question_text(ex.input, ex.choices), "target": ex.target}
        for ex in (task.examples[i] for i in seed_idx)
    ]
    messages = prompts.question_messages(task.name, task.description, examples, per_call)
    # A scaffold starts where the prefill ends, so it always writes the prefill.
    prefill = prompts.question_prefill(len(examples)) if cfg.prefill or cfg.scaffold else ""
    strip = options_appended(task, seed_idx)
    generate: Generate = (
        functools.partial(
            scaffold_generate,
            backend,
            number=len(examples) + 1,
            options=(shared_labels(task) or ()) if strip else None,
        )
        if cfg.scaffold
        else backend.generate
    )
    return QuestionPrompt(
        prompt=prompts.render_chat(
            _tokenizer(backend, loaded.round.teacher, tokenizer), messages, prefill
        ),
        prefill=prefill,
        stops=prompts.question_stops(len(examples), per_call),
        strip_options=strip,
        per_call=per_call,
        generate=generate,
    )


def reference_inputs(loaded: LoadedRound) -> DuplicateIndex:
    """The texts a drafted question must not repeat: the seed, probe and test items."""
    dupes = DuplicateIndex()
    for name in ("seed", "probe", "test"):
        for i in loaded.split(name):
            dupes.add(loaded.task.examples[i].input, f"{name} item {i}")
    return dupes


def _calls(done: set[int], count: int, start: int) -> tuple[list[int], int]:
    """The next ``count`` call numbers not done yet, from ``start``; and where to go on."""
    wave: list[int] = []
    while len(wave) < count:
        if start not in done:
            wave.append(start)
        start += 1
    return wave, start


def draft_questions(
    ctx: StageContext,
    round_id: int,
    backend: GenerationBackend,
    phase: str = "draft",
    *,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Draft questions until ``n_questions`` (``n_tailored`` when tailored) are ok, or the cap.

    Each call shows the seed examples and asks for ``questions_per_call`` more; calls go out in
    waves sized to what is still missing. Returns counts for the run's result.
    """
    loaded = _load(round_id, phase)
    cfg, rnd = loaded.config, loaded.round
    wanted = cfg.n_questions if phase == "draft" else cfg.n_tailored
    ask = question_prompt(loaded, backend, tokenizer)
    cap = CALL_CAP_FACTOR * math.ceil(wanted / ask.per_call)
    dupes = reference_inputs(loaded)
    with read_session() as session:
        stored = session.exec(queries.drafts(round_id, kind="question", phase=phase)).all()
    done_calls = {int(d.idem_key.split(":")[1]) for d in stored}
    ok = 0
    for d in stored:
        if d.status == "ok" and d.input is not None:
            ok += 1
            dupes.add(d.input, f"draft #{d.id}")
    base: dict[str, Any] = {
        "kind": "question",
        "phase": phase,
        "round_id": round_id,
        "prompt": ask.prompt,
        "prefill": ask.prefill,
        "template_version": prompts.TEMPLATE_VERSIONS["question"],
        "teacher": rnd.teacher,
        "adapter_hash": _adapter_hash(backend, rnd),
    }
    counts = {"calls": 0, "ok": 0, "rejected": 0, "duplicate": 0}
    ctx.progress(min(ok, wanted), wanted, f"{ok} of {wanted} questions")
    next_call = 0
    while ok < wanted and len(done_calls) < cap:
        wave, next_call = _calls(
            done_calls,
            min(math.ceil((wanted - ok) / ask.per_call), cap - len(done_calls)),
            next_call,
        )
        requests = [
            GenRequest(
                key=f"q:{call}",
                prompt=ask.prompt,
                temperature=cfg.question_temperature,
                max_new_tokens=cfg.max_new_tokens,
                seed=derive_seed(loaded.study.seed, loaded.seed_index, phase, f"q:{call}"),
                stop=ask.stops,
            )
            for call in wave
        ]
        for request, completion in ask.generate(requests):
            call = int(request.key.split(":")[1])
            sampling = sampling_record(request, backend) | (
                {"scaffold": True} if cfg.scaffold else {}
            )
            rows = question_rows(
                loaded.task, request.key, completion, ask.prefill, ask.strip_options, dupes
            )
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


# ---------------------------------------------------------------- rationales


@dataclass
class RationaleWriter:
    """Turns the teacher's rationale completions into stored drafts and keeps the counts."""

    ctx: StageContext
    loaded: LoadedRound
    backend: GenerationBackend
    phase: str
    prefill: str
    by_key: dict[str, tuple[Draft, str]]  # request key -> (question, strategy)
    total: int
    finished: int
    adapter_hash: str | None

    def __post_init__(self) -> None:
        self.counts = {"ok": 0, "rejected": 0}
        self.template = "plain" if self.phase == "tailored" else "rationale"
        self.ctx.progress(self.finished, self.total, self._message())

    def _message(self) -> str:
        return f"{self.finished} of {self.total} rationales"

    def store(self, request: GenRequest, completion: str, forced: str = "") -> None:
        q, strategy = self.by_key[request.key]
        rationale, answer, reason = parse_rationale(self.prefill + completion)
        flags = rationale_flags(q, answer, reason) + (["forced-answer"] if forced else [])
        if forced == "choice":
            flags.append("answer-chosen")
        status = "ok" if rationale else "rejected"
        draft = Draft(
            round_id=self.loaded.id,
            kind="rationale",
            phase=self.phase,
            parent_id=q.id,
            idem_key=request.key,
            strategy=strategy,
            prompt=request.prompt,
            prefill=self.prefill,
            raw_output=completion,
            input=q.input,
            target=q.target,
            choices=list(q.choices),
            rationale=rationale or None,
            answer=answer,
            status=status,
            reason=reason,
            flags=flags,
            template_version=prompts.TEMPLATE_VERSIONS[self.template],
            sampling=sampling_record(request, self.backend),
            teacher=self.loaded.round.teacher,
            adapter_hash=self.adapter_hash,
        )
        if _store(self.ctx, [draft]):
            self.counts[status] += 1
        self.finished += 1
        self.ctx.progress(self.finished, self.total, self._message())
        self.ctx.check_cancelled()

    def result(self) -> dict[str, Any]:
        done = self.counts["ok"] + self.counts["rejected"]
        return {**self.counts, "total": self.total, "skipped": self.total - done}


def _rationale_requests(
    loaded: LoadedRound,
    questions: Iterable[Draft],
    strategies: Sequence[str],
    done: set[tuple[int | None, str | None]],
    *,
    phase: str,
    temperature: float,
    prefill: str,
    tokenizer: Any,
) -> tuple[list[GenRequest], dict[str, tuple[Draft, str]]]:
    """One request per (question, strategy) not in ``done`` (question ids and strategies),
    keyed ``r:{question's key}:{strategy}`` (``r:q:3:0:expert``): made of the question's own
    key, not its row id, so the same study samples the same rationales in any database."""
    task = loaded.task
    by_key: dict[str, tuple[Draft, str]] = {}
    requests = []
    for q in questions:
        text = prompts.question_text(q.input or "", q.choices)
        for strategy in strategies:
            key = f"r:{q.idem_key}:{strategy}"
            if (q.id, strategy) in done:
                continue
            if strategy == ERASED_STRATEGY:
                messages = prompts.plain_messages(text)
            else:
                messages = prompts.rationale_messages(strategy, task.name, task.description, text)
            by_key[key] = (q, strategy)
            requests.append(
                GenRequest(
                    key=key,
                    prompt=prompts.render_chat(tokenizer, messages, prefill),
                    temperature=temperature,
                    max_new_tokens=loaded.config.max_new_tokens,
                    seed=derive_seed(loaded.study.seed, loaded.seed_index, phase, key),
                    stop=(prompts.TURN_STOP,),
                )
            )
    return requests, by_key


def draft_rationales(
    ctx: StageContext,
    round_id: int,
    backend: GenerationBackend,
    phase: str = "draft",
    *,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """One rationale per (ok question, strategy); tailored: one greedy plain-prompt rationale.

    Draft phase: the first ``n_rationales`` strategies at ``rationale_temperature``. Tailored
    phase (SPEC step 7): the plain prompt ("prompt erasure") at temperature 0.
    """
    loaded = _load(round_id, phase)
    cfg = loaded.config
    prefill = prompts.RATIONALE_PREFILL if cfg.prefill else ""
    if phase == "draft":
        strategies = list(cfg.strategies[: cfg.n_rationales])
        temperature = cfg.rationale_temperature
    else:
        strategies, temperature = [ERASED_STRATEGY], 0.0
    with read_session() as session:
        questions = session.exec(
            queries.drafts(round_id, kind="question", phase=phase, status="ok")
        ).all()
        # By question and strategy: rows stored before rationale keys named the question's key
        # (``r:{row id}:{strategy}``) count as done too.
        done = {
            (d.parent_id, d.strategy)
            for d in session.exec(queries.drafts(round_id, kind="rationale", phase=phase))
        }
    requests, by_key = _rationale_requests(
        loaded,
        questions,
        strategies,
        done,
        phase=phase,
        temperature=temperature,
        prefill=prefill,
        tokenizer=_tokenizer(backend, loaded.round.teacher, tokenizer),
    )
    total = len(questions) * len(strategies)
    writer = RationaleWriter(
        ctx,
        loaded,
        backend,
        phase,
        prefill,
        by_key,
        total=total,
        finished=total - len(requests),
        adapter_hash=_adapter_hash(backend, loaded.round),
    )
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
            writer.store(request, completion)
    if unanswered:
        ctx.log(f"forcing an answer on {len(unanswered)} rationales without <ans>")
        force_answers(writer, backend, unanswered)
    return writer.result()


def force_answers(
    writer: RationaleWriter,
    backend: GenerationBackend,
    unanswered: dict[str, tuple[GenRequest, str]],
) -> None:
    """Close each rationale with an answer: the question's option the teacher finds likeliest
    after the cue, where the backend can rank continuations; else the teacher finishes the cue
    greedily."""
    choosing = isinstance(backend, ChoosingBackend)
    forcing = []
    for key, (request, completion) in unanswered.items():
        stem = forced_stem(completion)
        choices = list(writer.by_key[key][0].choices or ())
        if choosing and choices:
            scores = backend.choose(request.prompt + stem, choices, prompts.ANSWER_CLOSE)  # type: ignore[attr-defined]
            best = choices[max(range(len(choices)), key=scores.__getitem__)]
            writer.store(request, stem + best + prompts.ANSWER_CLOSE, forced="choice")
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
        writer.store(
            request,
            forced_stem(completion) + tail.strip() + prompts.ANSWER_CLOSE,
            forced="greedy",
        )
