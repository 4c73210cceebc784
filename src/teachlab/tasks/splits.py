"""Seed / probe / test splits of a task, and checks that no test item leaks into the others.

Splits are deterministic in their seed and never share an input; the overlap report finds
near duplicates (reworded or re-cased copies) across splits with rapidfuzz.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from teachlab.errors import DataError
from teachlab.tasks.model import Task

SPLIT_NAMES = ("seed", "probe", "test")
MIN_PROBE = 2
MIN_TEST = 2


@dataclass(frozen=True)
class Splits:
    """Indices into ``task.examples``: seed examples shown to the teacher, probes the student
    is scored on while drafting, and held-out test items."""

    seed: tuple[int, ...]
    probe: tuple[int, ...]
    test: tuple[int, ...]

    def items(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("seed", self.seed), ("probe", self.probe), ("test", self.test)]


def make_splits(
    task: Task, n_seed: int = 3, n_probe: int = 16, n_test: int = 40, seed: int = 0
) -> Splits:
    """Disjoint, deterministic splits of ``task``.

    Exact-duplicate inputs are dropped first (the first occurrence stays), so a duplicate can
    never be in two splits. The remaining indices are shuffled once with ``random.Random(seed)``.
    A small task shrinks the test split first, then the probes (to 2 each at least); fewer
    than ``n_seed + 4`` distinct inputs is an error.
    """
    if n_seed < 1 or n_probe < MIN_PROBE or n_test < MIN_TEST:
        raise DataError(
            f"Split sizes seed={n_seed}, probe={n_probe}, test={n_test} are too small: "
            f"use at least 1 seed example, {MIN_PROBE} probes and {MIN_TEST} test items."
        )
    first_seen: dict[str, int] = {}
    for index, example in enumerate(task.examples):
        first_seen.setdefault(example.input, index)
    indices = sorted(first_seen.values())
    available = len(indices)
    if available < n_seed + MIN_PROBE + MIN_TEST:
        raise DataError(
            f"Task {task.name!r} has {available} distinct inputs, too few for {n_seed} seed "
            f"examples plus at least {MIN_PROBE} probes and {MIN_TEST} test items; "
            "add examples or lower the number of seed examples."
        )
    n_test = max(MIN_TEST, min(n_test, available - n_seed - n_probe))
    n_probe = min(n_probe, available - n_seed - n_test)
    random.Random(seed).shuffle(indices)
    seed_part = indices[:n_seed]
    probe_part = indices[n_seed : n_seed + n_probe]
    test_part = indices[n_seed + n_probe : n_seed + n_probe + n_test]
    return Splits(
        seed=tuple(sorted(seed_part)),
        probe=tuple(sorted(probe_part)),
        test=tuple(sorted(test_part)),
    )


class Overlap(NamedTuple):
    """One pair of similar inputs in two splits; ``score`` is 0-100 (100: identical)."""

    split_a: str
    idx_a: int
    split_b: str
    idx_b: int
    score: float


@dataclass(frozen=True)
class OverlapReport:
    """Inputs shared across splits: ``exact`` (equal once normalised) and ``near`` (similar at
    or above ``threshold``)."""

    threshold: float
    exact: list[Overlap] = field(default_factory=list)
    near: list[Overlap] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.exact and not self.near


def normalise(text: str) -> str:
    """Case-folded, with runs of whitespace collapsed: what counts as the same input."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def near_duplicates(
    texts: list[str], against: list[str], threshold: float = 90
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, score)`` where ``texts[i]`` and ``against[j]`` are at least ``threshold``
    similar (rapidfuzz ``fuzz.ratio`` on normalised text, 0-100), best first."""
    if not texts or not against:
        return []
    import numpy as np
    from rapidfuzz import fuzz, process

    scores = process.cdist(
        [normalise(t) for t in texts],
        [normalise(t) for t in against],
        scorer=fuzz.ratio,
        score_cutoff=threshold,
        workers=-1,
    )
    rows, cols = np.nonzero(scores >= threshold)
    pairs = [(int(i), int(j), float(scores[i, j])) for i, j in zip(rows, cols, strict=True)]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def overlap_report(task: Task, splits: Splits, threshold: float = 90) -> OverlapReport:
    """Exact and near-duplicate inputs between every pair of splits."""
    report = OverlapReport(threshold=threshold)
    parts = splits.items()
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            name_a, idx_a = parts[a]
            name_b, idx_b = parts[b]
            texts_a = [task.examples[i].input for i in idx_a]
            texts_b = [task.examples[i].input for i in idx_b]
            for i, j, score in near_duplicates(texts_a, texts_b, threshold):
                overlap = Overlap(name_a, idx_a[i], name_b, idx_b[j], round(score, 1))
                if normalise(texts_a[i]) == normalise(texts_b[j]):
                    report.exact.append(overlap)
                else:
                    report.near.append(overlap)
    return report
