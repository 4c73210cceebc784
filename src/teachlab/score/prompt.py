"""The student's one-shot ICL prompt: its text segments and their token ids.

Ids are built segment by segment (each segment tokenised alone, then concatenated), so the fast
path's cached prefix plus suffix and the reference's full prompt are the very same ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from teachlab.errors import ConfigError, DataError

MODES = ("loglik", "generate")
COT = "Let's think step by step."
# Where a generated continuation ends: the student starts the next question of the pattern
# (after a newline, maybe with spaces: "…</ans>\n\n Question:" was seen from SmolLM2).
STOP = re.compile(r"\n[ \t]*Question:")
STOP_STRINGS = ("\nQuestion:", "\n Question:")  # the same, for ``generate(stop_strings=…)``


@dataclass(frozen=True)
class Probe:
    """One probe item; ``choices`` is empty for a free-form item."""

    index: int  # the example's index in its task, kept on every outcome
    input: str
    target: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Demo:
    """One demonstration: a draft (question, rationale), or a plain (question, answer) shot."""

    question: str
    answer: str
    rationale: str | None = None


def description_segment(description: str) -> str:
    text = description.strip()
    return f"{text}\n\n" if text else ""


def demo_segment(demo: Demo) -> str:
    """A draft shows its rationale verbatim (it carries its own ``<ans>`` tag, as the teacher
    wrote it); a demonstration without rationale shows the bare answer."""
    if demo.rationale is None:
        return f"Question: {demo.question.strip()}\nAnswer: {demo.answer.strip()}\n\n"
    return f"Question: {demo.question.strip()}\nAnswer: {COT} {demo.rationale.strip()}\n\n"


def probe_segment(text: str, mode: str) -> str:
    """generate: ARTE's cue, the student reasons then answers. loglik: a rationale-free cue,
    each choice is scored as the direct continuation ``" {choice}"`` of ``"Answer:"``."""
    if mode == "generate":
        return f"Question: {text.strip()}\nAnswer: {COT}"
    return f"Question: {text.strip()}\nAnswer:"


def choice_segment(choice: str) -> str:
    return f" {choice.strip()}"


def render(
    description: str, demos: Sequence[Demo], probe: Probe, mode: str, choice: str = ""
) -> str:
    """The prompt as one string (for display; scoring uses the segment-wise ids)."""
    text = description_segment(description) + "".join(demo_segment(d) for d in demos)
    text += probe_segment(probe.input, mode)
    return text + (choice_segment(choice) if choice else "")


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before any text (BOS for Gemma, none for SmolLM)."""
    with_special = tokenizer("x")["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(bare) + 1):
        if with_special[start : start + len(bare)] == bare:
            return list(with_special[:start])
    return []


class PromptBuilder:
    """Token ids of every prompt part for one student tokenizer, task description and mode."""

    def __init__(self, tokenizer: Any, description: str, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(f"Unknown scoring mode {mode!r}; choose one of: {', '.join(MODES)}.")
        self.tokenizer = tokenizer
        self.description = description
        self.mode = mode
        self.special_ids = _leading_special_ids(tokenizer)
        self.description_ids = self.encode(description_segment(description))

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix_ids(self, demos: Sequence[Demo]) -> list[int]:
        """Special tokens, description and demonstrations: the part shared by every probe."""
        ids = self.special_ids + self.description_ids
        for demo in demos:
            ids = ids + self.encode(demo_segment(demo))
        return ids

    def question_ids(self, probe: Probe) -> list[int]:
        return self.encode(probe_segment(probe.input, self.mode))

    def candidate_ids(self, probe: Probe) -> list[list[int]]:
        """loglik continuations: one per choice, or the target alone for a free-form item."""
        texts = probe.choices or (probe.target,)
        ids = [self.encode(choice_segment(t)) for t in texts]
        if any(not seq for seq in ids):
            raise DataError(
                f"Probe item {probe.index} has an empty choice or target; fix the task data "
                "or leave the item out of the probe set."
            )
        return ids

    def prompt_ids(
        self, demos: Sequence[Demo], probe: Probe, choice: str | None = None
    ) -> list[int]:
        """The full ids the reference path feeds the model: prefix + question (+ choice)."""
        ids = self.prefix_ids(demos) + self.question_ids(probe)
        if choice is not None:
            ids = ids + self.encode(choice_segment(choice))
        return ids
