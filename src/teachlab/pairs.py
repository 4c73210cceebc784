"""Preference pairs from scored drafts: the pair-building rules of SPEC section 3.

Pure functions: scored ``Candidate``s in, ``PairSpec``s out; storing and reviewing them is
``teachlab.review``.

How candidates are grouped. A DPO pair needs one prompt, so pairs are only ever built inside a
group, keyed by ``(level, group)``: at question level ``group`` is the question-generation
prompt (ARTE shows the same three seed questions to every call of a round, so a round's calls
usually form one group); at rationale level it is the parent question's id and ``prompt`` is the
plain step-by-step prompt ("prompt erasure"), which the caller passes in. Every candidate of a
group must carry the same prompt; a mix is a caller bug (the teacher would be trained on a
prompt it never saw) and raises ``DataError``.

The rules, per group:

- ``arte``, question level: rank the drafts by score (ties broken by draft id), take the top
  ``k`` and the bottom ``k`` with ``k = max(1, floor(n * quantile))`` (two or more drafts), and
  pair the i-th best with the i-th worst. 250 drafts and the default 25% give 62 pairs.
- ``arte``, rationale level: the best against the worst draft of the group.
- ``margin`` (LbT): every pair whose score gap is at least ``min_margin``, largest gaps first,
  at most ``max_per_prompt`` per group.
- ``baseline``: every chosen above the zero-shot ``baseline`` with every rejected below it,
  largest gaps first, at most ``max_per_prompt`` per group; a score equal to the baseline
  takes no part.
- ``ranked`` (Curry-DPO): every ordered pair with distinct scores, easy (large gap) to hard,
  at most ``max_per_prompt`` per group; ``rank`` is the 1-based curriculum position within the
  group, so sorting all pairs by rank gives every prompt's easiest pair first (``rank`` is 0
  for the other rules).
- ``label_balanced`` (any rule): a group is split by answer label and the rule runs inside
  each part (quantiles and best/worst included), so chosen and rejected always share a label;
  drafts without a label take no part. The cap still counts per group.

Ties (gaps below ``EPS``) and missing or NaN scores never make pairs. Output order is
deterministic: level (question first), group, then gap descending (curriculum order for
``ranked``), then draft ids.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import product

from teachlab.config import PAIR_RULES
from teachlab.errors import ConfigError, DataError

LEVELS = ("question", "rationale")
# Scores are probe accuracies (k/n): 0.7 - 0.4 is 0.29999999999999993 in floats and must still
# count as a gap of 0.3, and 0.1 + 0.2 must still tie with 0.3.
EPS = 1e-9
NO_LABEL = "(none)"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One scored draft as the pair rules see it."""

    draft_id: int
    prompt: str  # the DPO prompt: generation prompt (question) or plain prompt (rationale)
    text: str  # the completion: tagged question, or the rationale
    score: float | None
    label: str | None  # question: its target; rationale: the answer inside <ans>…</ans>
    level: str  # question | rationale
    group: str  # question: the generation prompt; rationale: the parent question id


@dataclass(frozen=True, slots=True)
class PairSpec:
    """A proposed preference pair (not yet stored)."""

    level: str
    rule: str  # e.g. "arte" or "margin+label-balanced"
    group: str
    prompt: str
    chosen_id: int
    rejected_id: int
    chosen_text: str
    rejected_text: str
    chosen_score: float
    rejected_score: float
    margin: float  # chosen_score - rejected_score (> 0)
    rank: int = 0  # curriculum position within the group (ranked rule), else 0
    chosen_label: str | None = None
    rejected_label: str | None = None


_Pairs = list[tuple[Candidate, Candidate]]


def _scored(c: Candidate) -> bool:
    return c.score is not None and not math.isnan(c.score)


def _gap(chosen: Candidate, rejected: Candidate) -> float:
    return float(chosen.score) - float(rejected.score)  # type: ignore[arg-type]


def _ranked(members: Sequence[Candidate]) -> list[Candidate]:
    """Best first; equal scores in draft-id order so every run picks the same drafts."""
    return sorted(members, key=lambda c: (-float(c.score), c.draft_id))  # type: ignore[arg-type]


def _quantile_pairs(members: Sequence[Candidate], quantile: float) -> _Pairs:
    order = _ranked(members)
    if len(order) < 2:
        return []
    # At least one pair from two drafts, so the tiny CPU defaults (a handful of questions) work.
    k = max(1, math.floor(len(order) * quantile + EPS))
    top, bottom = order[:k], order[::-1][:k]  # disjoint, since quantile <= 0.5
    return [(c, r) for c, r in zip(top, bottom, strict=True) if _gap(c, r) > EPS]


def _best_vs_worst(members: Sequence[Candidate]) -> _Pairs:
    order = _ranked(members)
    if len(order) < 2 or _gap(order[0], order[-1]) <= EPS:
        return []
    return [(order[0], order[-1])]


def _all_ordered(members: Sequence[Candidate], min_gap: float) -> _Pairs:
    order = _ranked(members)
    return [
        (c, r)
        for i, c in enumerate(order)
        for r in order[i + 1 :]
        if _gap(c, r) > EPS and _gap(c, r) >= min_gap - EPS
    ]


def _baseline_pairs(members: Sequence[Candidate], baseline: float) -> _Pairs:
    order = _ranked(members)
    above = [c for c in order if float(c.score) > baseline + EPS]  # type: ignore[arg-type]
    below = [c for c in order if float(c.score) < baseline - EPS]  # type: ignore[arg-type]
    return list(product(above, below))


def _group(candidates: Iterable[Candidate]) -> dict[tuple[str, str], list[Candidate]]:
    groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in candidates:
        if c.level not in LEVELS:
            raise DataError(
                f"Draft {c.draft_id} has level {c.level!r}; pairs are built from "
                f"{' or '.join(LEVELS)} drafts. Pass one of those levels."
            )
        if _scored(c):
            groups[(c.level, c.group)].append(c)
    for (level, group), members in groups.items():
        if len({c.prompt for c in members}) > 1:
            ids = ", ".join(str(c.draft_id) for c in members)
            raise DataError(
                f"The {level} drafts of group {group[:60]!r} (drafts {ids}) carry different "
                "prompts, but a DPO pair needs the one prompt both texts answer. Group the "
                "drafts by prompt (question level) or pass the plain prompt for every rationale."
            )
    return groups


def _validate(
    rule: str, quantile: float, min_margin: float, max_per_prompt: int, baseline: float | None
) -> None:
    if rule not in PAIR_RULES:
        raise ConfigError(f"Unknown pair rule {rule!r}; choose one of {', '.join(PAIR_RULES)}.")
    if not 0 < quantile <= 0.5:
        raise ConfigError(
            f"quantile is {quantile}, but it must be in (0, 0.5] so the top and bottom sets "
            "cannot overlap; ARTE uses 0.25."
        )
    if min_margin < 0:
        raise ConfigError(f"min_margin is {min_margin}; a score gap cannot be negative.")
    if max_per_prompt < 1:
        raise ConfigError(f"max_per_prompt is {max_per_prompt}; allow at least one pair.")
    if rule == "baseline" and (baseline is None or math.isnan(baseline)):
        raise ConfigError(
            "The baseline rule needs the student's zero-shot accuracy; run the signal check "
            "first or choose another pair rule."
        )


def build_pairs(
    candidates: Iterable[Candidate],
    rule: str = "arte",
    *,
    quantile: float = 0.25,
    min_margin: float = 0.3,
    max_per_prompt: int = 8,
    baseline: float | None = None,
    label_balanced: bool = False,
) -> list[PairSpec]:
    """Propose preference pairs from scored drafts by one of the rules (module docstring)."""
    _validate(rule, quantile, min_margin, max_per_prompt, baseline)
    name = f"{rule}+label-balanced" if label_balanced else rule
    out: list[PairSpec] = []
    groups = _group(candidates)
    for level, group in sorted(groups, key=lambda k: (LEVELS.index(k[0]), k[1])):
        members = groups[(level, group)]
        pairs: _Pairs = []
        for part in _label_parts(members) if label_balanced else [members]:
            pairs += _rule_fn(rule, level, quantile, min_margin, baseline)(part)
        pairs.sort(key=lambda p: (-round(_gap(*p), 9), p[0].draft_id, p[1].draft_id))
        if rule != "arte":
            pairs = pairs[:max_per_prompt]
        for i, (c, r) in enumerate(pairs):
            out.append(
                PairSpec(
                    level=level,
                    rule=name,
                    group=group,
                    prompt=c.prompt,
                    chosen_id=c.draft_id,
                    rejected_id=r.draft_id,
                    chosen_text=c.text,
                    rejected_text=r.text,
                    chosen_score=float(c.score),  # type: ignore[arg-type]
                    rejected_score=float(r.score),  # type: ignore[arg-type]
                    margin=_gap(c, r),
                    rank=i + 1 if rule == "ranked" else 0,
                    chosen_label=c.label,
                    rejected_label=r.label,
                )
            )
    return out


def _label_parts(members: Sequence[Candidate]) -> list[list[Candidate]]:
    parts: dict[str, list[Candidate]] = defaultdict(list)
    for c in members:
        if c.label is not None:  # an unlabelled draft cannot be matched on its label
            parts[c.label].append(c)
    return [parts[label] for label in sorted(parts)]


def _rule_fn(
    rule: str, level: str, quantile: float, min_margin: float, baseline: float | None
) -> Callable[[Sequence[Candidate]], _Pairs]:
    if rule == "arte":
        if level == "question":
            return lambda part: _quantile_pairs(part, quantile)
        return _best_vs_worst
    if rule == "margin":
        return lambda part: _all_ordered(part, min_margin)
    if rule == "baseline":
        return lambda part: _baseline_pairs(part, float(baseline))  # type: ignore[arg-type]
    return lambda part: _all_ordered(part, 0.0)


def label_mix(pairs: Iterable[PairSpec]) -> dict[str, dict[str, int]]:
    """Counts of answer labels on the chosen and on the rejected side, and of same-label pairs.

    A chosen side that is all one label is the pilot's warning sign: DPO would learn to
    answer that label every time.
    """
    chosen: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    same = 0
    for p in pairs:
        chosen[p.chosen_label if p.chosen_label is not None else NO_LABEL] += 1
        rejected[p.rejected_label if p.rejected_label is not None else NO_LABEL] += 1
        same += p.chosen_label is not None and p.chosen_label == p.rejected_label
    return {
        "chosen": dict(sorted(chosen.items())),
        "rejected": dict(sorted(rejected.items())),
        "pairs": {"same_label": same, "total": sum(chosen.values())},
    }
