"""Scoring a demonstration by the student's one-shot ICL results on the probe set.

``Scorer.score`` is the fast path (shared prefix cached once per draft, probes batched);
``Scorer.score_reference`` is the straightforward one that the fast path must match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from teachlab.errors import ConfigError, DataError
from teachlab.score.extract import answers_match, extract_answer, truncate_output
from teachlab.score.prompt import MODES, STOP, STOP_STRINGS, Demo, Probe, PromptBuilder

if TYPE_CHECKING:
    from teachlab.score.loglik import CandidateScores


@dataclass
class ProbeOutcome:
    """One draft × probe result (the fields of the ``ProbeResult`` table)."""

    probe_index: int
    predicted: str
    correct: bool
    gold_logprob: float | None  # loglik: sum of log p over the gold continuation's tokens
    margin: float | None  # loglik MC: log p(gold) − max log p(other choice)
    output: str = ""  # generate: the continuation, cut at the next "Question:"


def accuracy(outcomes: Sequence[ProbeOutcome]) -> float:
    """Share of probe items answered correctly: a rationale's score."""
    if not outcomes:
        raise DataError("No probe outcomes to score; the probe set is empty. Choose n_probe ≥ 2.")
    return sum(o.correct for o in outcomes) / len(outcomes)


def mean_margin(outcomes: Sequence[ProbeOutcome]) -> float | None:
    """Mean log-prob margin over the items that have one (None in generate mode)."""
    margins = [o.margin for o in outcomes if o.margin is not None]
    return sum(margins) / len(margins) if margins else None


def question_score(rationale_scores: Sequence[float]) -> float | None:
    """ARTE: a question's score is the mean of its rationales' scores (None without any)."""
    return sum(rationale_scores) / len(rationale_scores) if rationale_scores else None


def _outcome(probe: Probe, logprobs: Sequence[float]) -> ProbeOutcome:
    """Turn candidate log-probs into an outcome; shared by both paths so they cannot differ.

    Multiple choice: the prediction is the choice with the highest summed log-prob (no length
    normalisation; the first on a tie). Free-form: the only candidate is the target; the item
    is correct when greedy decoding would write exactly the target's tokens (each target token
    is the argmax under teacher forcing), and the prediction is the part of the student's
    greedy answer that teacher forcing reveals: the target's tokens up to and including the
    first token where the student departs from them.
    """
    if not probe.choices:
        return ProbeOutcome(probe.index, "", False, float(logprobs[0]), None)
    best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
    gold = probe.choices.index(probe.target)
    others = [lp for i, lp in enumerate(logprobs) if i != gold]
    margin = float(logprobs[gold] - max(others)) if others else None
    return ProbeOutcome(
        probe.index, probe.choices[best], best == gold, float(logprobs[gold]), margin
    )


class Scorer:
    """The student (model + tokenizer), a task description and a probe set, tokenised once.

    The prompt is a plain-text completion, not the student's chat template: ICL accuracy is
    about continuing a pattern, the template would wrap every demonstration in turn markers
    the paper does not use, and plain segments tokenise the same way whatever the model.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        description: str,
        probes: Sequence[Probe],
        mode: str = "loglik",
        batch_size: int = 16,
        max_new_tokens: int = 48,
        cache_budget_mb: int = 1024,
        tree_mask: bool | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"Unknown scoring mode {mode!r}; choose one of: {', '.join(MODES)}.")
        if not probes:
            raise DataError("The probe set is empty; choose n_probe ≥ 2 so drafts can be scored.")
        if batch_size < 1 or max_new_tokens < 1:
            raise ConfigError("batch_size and max_new_tokens must be at least 1.")
        for probe in probes:
            if probe.choices and probe.target not in probe.choices:
                raise DataError(
                    f"Probe item {probe.index}: its target {probe.target!r} is not one of its "
                    "choices; fix the task data or leave the item out of the probe set."
                )
        self.model = model
        self.tokenizer = tokenizer
        self.description = description
        self.probes = tuple(probes)
        self.mode = mode
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.cache_budget_bytes = cache_budget_mb << 20
        self.tree_mask = tree_mask  # loglik strategy; None picks the packed one when exact
        self.builder = PromptBuilder(tokenizer, description, mode)
        self.question_ids = [self.builder.question_ids(p) for p in self.probes]
        self.candidate_ids = (
            [self.builder.candidate_ids(p) for p in self.probes] if mode == "loglik" else []
        )
        from teachlab.decoding import eos_ids  # here: torch stays out of start-up

        # Tokens the student read (demonstrations, questions, choices) and wrote (cot mode).
        self.tokens = {"scored": 0, "generated": 0}
        self.pad_id = _pad_id(tokenizer)
        self.eos_ids = eos_ids(model, tokenizer)

    # -- public API ---------------------------------------------------------------------------

    def score(self, demos: Sequence[Demo] = ()) -> list[ProbeOutcome]:
        """Fast path: the demonstration prefix is encoded once and its cache reused."""
        # Imported here so torch stays out of the UI's and the CLI's start-up.
        from teachlab import decoding
        from teachlab.score import loglik

        prefix = self.builder.prefix_ids(demos)
        self.tokens["scored"] += len(prefix) + sum(len(q) for q in self.question_ids)
        if self.mode == "loglik":
            self.tokens["scored"] += sum(len(c) for cands in self.candidate_ids for c in cands)
            results = loglik.loglik_batched(
                self.model,
                prefix,
                self.question_ids,
                self.candidate_ids,
                pad_id=self.pad_id,
                batch_size=self.batch_size,
                budget_bytes=self.cache_budget_bytes,
                tree=self.tree_mask,
            )
            return [self._loglik_outcome(p, r) for p, r in zip(self.probes, results, strict=True)]
        tokens = decoding.generate_batched(
            self.model,
            prefix,
            self.question_ids,
            pad_id=self.pad_id,
            eos_ids=self.eos_ids,
            max_new_tokens=self.max_new_tokens,
            stopped=self._stopped,
            batch_size=self.batch_size,
            budget_bytes=self.cache_budget_bytes,
        )
        self.tokens["generated"] += sum(len(t) for t in tokens)
        return [self._generate_outcome(p, t) for p, t in zip(self.probes, tokens, strict=True)]

    def score_reference(self, demos: Sequence[Demo] = ()) -> list[ProbeOutcome]:
        """Straightforward path: one full forward (or one ``generate``) per item and choice."""
        from teachlab import decoding
        from teachlab.score import loglik

        outcomes = []
        for i, probe in enumerate(self.probes):
            if self.mode == "loglik":
                full = [
                    self.builder.prompt_ids(demos, probe, choice)
                    for choice in (probe.choices or (probe.target,))
                ]
                result = loglik.loglik_reference(self.model, full, self.candidate_ids[i])
                outcomes.append(self._loglik_outcome(probe, result))
            else:
                ids = self.builder.prompt_ids(demos, probe)
                new = decoding.generate_reference(
                    self.model,
                    self.tokenizer,
                    ids,
                    pad_id=self.pad_id,
                    eos_ids=self.eos_ids,
                    max_new_tokens=self.max_new_tokens,
                    stop_strings=STOP_STRINGS,
                )
                outcomes.append(self._generate_outcome(probe, new))
        return outcomes

    def prompt_ids(
        self, demos: Sequence[Demo], probe: Probe, choice: str | None = None
    ) -> list[int]:
        """The full token ids of one prompt, exactly as the reference path feeds them."""
        return self.builder.prompt_ids(demos, probe, choice)

    def fast_path_ids(
        self, demos: Sequence[Demo], position: int, candidate: int | None = None
    ) -> list[int]:
        """The ids the fast path sees for probe ``position``: cached prefix + question
        (+ candidate continuation), for checking that both paths see the same ids."""
        ids = self.builder.prefix_ids(demos) + self.question_ids[position]
        if candidate is not None:
            ids = ids + self.candidate_ids[position][candidate]
        return ids

    # -- helpers ------------------------------------------------------------------------------

    def _stopped(self, ids: Sequence[int]) -> bool:
        # Only rows that stop early save work; the text is cut at the same place either way.
        return STOP.search(self._decode(ids)) is not None

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _loglik_outcome(self, probe: Probe, result: CandidateScores) -> ProbeOutcome:
        outcome = _outcome(probe, result.logprobs)
        if not probe.choices:
            target, greedy = result.candidates[0], result.greedy_ids[0]
            miss = next(
                (k for k, (t, g) in enumerate(zip(target, greedy, strict=True)) if t != g), None
            )
            outcome.correct = miss is None
            if miss is None:
                outcome.predicted = probe.target
            else:
                outcome.predicted = self._decode([*target[:miss], greedy[miss]]).strip()
        return outcome

    def _generate_outcome(self, probe: Probe, new_ids: Sequence[int]) -> ProbeOutcome:
        ids = list(new_ids)
        for k, token in enumerate(ids):
            if token in self.eos_ids:
                ids = ids[:k]
                break
        output = truncate_output(self._decode(ids))
        predicted = extract_answer(output, probe.choices)
        if probe.choices:
            correct = predicted == probe.target
        else:
            correct = answers_match(predicted, probe.target)
        return ProbeOutcome(probe.index, predicted, correct, None, None, output)


def _pad_id(tokenizer: Any) -> int:
    # Any valid id works: padded positions are masked out and never scored.
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


__all__ = [
    "ProbeOutcome",
    "Scorer",
    "accuracy",
    "mean_margin",
    "question_score",
]
