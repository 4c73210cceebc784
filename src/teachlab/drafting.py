"""Drafting's pure cores (ARTE steps 1, 2 and 7): target checks, near-duplicates, request
seeds and keys, the scaffolded question writer, and the Draft fields of a teacher's output.

- Keys: a question call's rows are ``q:{call}:{j}`` (the j-th ``<Question_k>`` block, whatever
  its k) or ``q:{call}:raw`` when the output had no block; a rationale is
  ``r:{question's key}:{strategy}`` (``r:q:3:0:expert``).
- Seeds: ``derive_seed(study.seed, round.index, phase, key)``, a hash, so no two calls, rounds
  or phases share one however many calls a stage makes. Keys are made of positions, never
  row ids, so a study drafts the same texts whichever database it lives in.
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

The stages that call the teacher and store its drafts are ``teachlab.stages.draft`` and
``teachlab.stages.regenerate``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from teachlab import prompts
from teachlab.backends.base import GenerationBackend, GenRequest
from teachlab.db import Draft
from teachlab.prompts import parse_question_blocks
from teachlab.tasks.model import Task, parse_number
from teachlab.tasks.splits import normalise

PHASES = ("draft", "tailored")
DUPLICATE_THRESHOLD = 90.0
SCAFFOLD_CHUNK = 8  # scaffolded calls written together when the backend has no batch size
ERASED_STRATEGY = "erased"  # tailored rationales: the plain prompt, no strategy

# ---------------------------------------------------------------- targets (pure)


def label_key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".").strip("()").strip()).casefold()


def shared_labels(task: Task) -> tuple[str, ...]:
    """The one label set all of a task's examples share (in first-seen order), else ``()``."""
    if not task.is_multiple_choice:
        return ()
    first = task.examples[0].choices
    wanted = {label_key(c) for c in first}
    if all({label_key(c) for c in e.choices} == wanted for e in task.examples):
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
        elif len({label_key(c) for c in choices}) < len(choices):
            flags.append("repeated-options")
    else:
        choices = ()
    if choices:
        match = next((c for c in choices if label_key(c) == label_key(target)), None)
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


def sampling_record(request: GenRequest, backend: GenerationBackend) -> dict[str, Any]:
    return {
        "temperature": request.temperature,
        "max_new_tokens": request.max_new_tokens,
        "seed": request.seed,
        "top_p": 1.0,
        "backend": backend.name,
    }


def question_rows(
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


def forced_stem(completion: str) -> str:
    """The rationale as written, then the answer cue (its unfinished ``<ans>`` included)."""
    return completion.rstrip() + prompts.ANSWER_CUE


def rationale_flags(question: Draft, answer: str | None, reason: str) -> list[str]:
    if answer is None:
        return ["no-answer"]
    flags = ["unclosed-answer"] if reason == "unclosed <ans>" else []
    if question.choices and all(label_key(c) != label_key(answer) for c in question.choices):
        flags.append("answer-not-in-choices")
    if question.target is not None and label_key(answer) != label_key(question.target):
        flags.append("answer-disagrees-with-target")
    return flags
