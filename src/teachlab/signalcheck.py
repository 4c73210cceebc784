"""The signal check: is the student's preference signal worth spending compute on?

Shows accuracy against chance, split-half reliability of draft scores and the label confound (SPEC 3a).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy.stats import rankdata

from teachlab.errors import DataError
from teachlab.stats import accuracy_ci

Metric = Literal["accuracy", "margin"]
Level = Literal["ok", "warn", "stop"]
ProbeScores = Mapping[Hashable, Mapping[int, bool | float]] | np.ndarray


# --- the statistics ------------------------------------------------------------------------------


def _accuracy_block(
    correct: Sequence[bool] | None, chance_rate: float | None, confidence: float
) -> dict[str, Any] | None:
    if correct is None or len(correct) == 0:
        return None
    acc, low, high = accuracy_ci(correct, confidence=confidence)  # exact binomial interval
    n = len(correct)
    k = round(acc * n)
    return {
        "k": k,
        "n": n,
        "accuracy": k / n,
        "ci_low": low,
        "ci_high": high,
        # The whole interval must clear chance: a point estimate above it proves nothing.
        "above_chance": None if chance_rate is None else bool(low > chance_rate),
    }


def majority_answer(gold: Sequence[Hashable]) -> tuple[str, float] | None:
    """The commonest gold answer of the probe set and its share, when answers repeat."""
    if not gold:
        return None
    counts: dict[str, int] = {}
    for answer in gold:
        counts[str(answer)] = counts.get(str(answer), 0) + 1
    label, count = max(counts.items(), key=lambda kv: kv[1])
    return (label, count / len(gold)) if count > 1 else None


def student_vs_chance(
    correct_zero_shot: Sequence[bool] | None,
    correct_few_shot: Sequence[bool] | None,
    chance_rate: float | None,
    *,
    confidence: float = 0.95,
    majority: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """Zero- and few-shot accuracy on the probe set with exact binomial CIs, next to chance.

    Chance is the better of guessing uniformly (``chance_rate``, 1/choices) and always giving
    the probe set's commonest answer (``majority``: label and share): on a probe set that is
    71% "false", a student that always says "false" is not above chance. ``chance_rate`` in the
    result is that baseline; ``uniform_rate`` and ``majority_*`` are kept beside it.
    Each block is None when its outcomes are not given; ``above_chance`` is None for free-form
    tasks, which have no chance rate.
    """
    baseline = chance_rate
    by_majority = chance_rate is not None and majority is not None and majority[1] > chance_rate
    if by_majority and majority is not None:
        baseline = majority[1]
    return {
        "chance_rate": baseline,
        "uniform_rate": chance_rate,
        "majority_label": majority[0] if majority else None,
        "majority_rate": majority[1] if majority else None,
        "baseline": "majority" if by_majority else "uniform",
        "confidence": confidence,
        "zero_shot": _accuracy_block(correct_zero_shot, baseline, confidence),
        "few_shot": _accuracy_block(correct_few_shot, baseline, confidence),
    }


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of x with the same row of y; NaN where a row does not vary."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=-1) / den
    return np.where(den > 1e-12, r, np.nan)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _rowwise_pearson(rankdata(x, axis=-1), rankdata(y, axis=-1))


def spearman_brown(r: float) -> float:
    """Reliability of the full-length test from the correlation of its two halves: 2r / (1 + r).

    Negative half correlations mean no reliability at all; the formula would only exaggerate
    them, so they are passed through unchanged (keeps the mapping monotone for CI bounds).
    """
    if math.isnan(r) or r < 0:
        return r
    return 2 * r / (1 + r)


def _percentile_ci(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    # Resamples that pick drafts with identical scores have no correlation; if that is the
    # majority the interval would describe an odd subset, so report none.
    if finite.size < samples.size / 2:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def split_half_reliability(
    scores_half_a: Sequence[float] | np.ndarray,
    scores_half_b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement of draft scores measured on two disjoint halves of the probe set.

    Returns Spearman and Pearson r with percentile-bootstrap CIs (drafts resampled with their
    pair of scores), and ``reliability``: the Spearman–Brown step-up of the Spearman r, i.e. the
    expected rank agreement of two full-size probe sets. Spearman is the headline because pairs
    are built from ranks; ``reliability_pearson`` is the classical-test-theory counterpart.
    Drafts with a missing score on either half are left out.
    """
    a = np.asarray(scores_half_a, dtype=float).ravel()
    b = np.asarray(scores_half_b, dtype=float).ravel()
    if a.size != b.size:
        raise DataError(
            f"Both halves must score the same drafts in the same order (got {a.size} and {b.size})."
        )
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    nan_ci = (math.nan, math.nan)
    if n < 3:
        spearman = pearson = math.nan
        spearman_ci = pearson_ci = nan_ci
    else:
        spearman = float(_rowwise_spearman(a, b))
        pearson = float(_rowwise_pearson(a, b))
        idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
        spearman_ci = _percentile_ci(_rowwise_spearman(a[idx], b[idx]), confidence)
        pearson_ci = _percentile_ci(_rowwise_pearson(a[idx], b[idx]), confidence)
    return {
        "n_drafts": n,
        "confidence": confidence,
        "spearman": spearman,
        "spearman_ci": spearman_ci,
        "pearson": pearson,
        "pearson_ci": pearson_ci,
        "reliability": spearman_brown(spearman),
        "reliability_ci": (spearman_brown(spearman_ci[0]), spearman_brown(spearman_ci[1])),
        "reliability_pearson": spearman_brown(pearson),
    }


N_SPLITS = 100
BOOT_SPLITS = 20  # splits each bootstrap resample averages over (the CI is about the drafts)


def random_split_reliability(
    matrix: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Split-half reliability averaged over many random splits of the probe set.

    One split is a noisy estimate: on 24 probes, two draws of halves can give 0.1 and 0.6 for
    the same drafts. Each split of ``splits`` (column indices of its two halves) gives every
    draft a score per half; the reported Spearman and Pearson r are the means over splits of
    the half correlations, ``reliability`` their Spearman–Brown step-up, and the CIs
    percentile-bootstrap intervals that resample drafts (each resample averaged over the first
    ``BOOT_SPLITS`` splits). ``split_range`` is the 5th–95th percentile of single-split reliabilities: how much
    a single split would have varied. Drafts missing a score on any half are left out.
    """
    if not splits:
        raise DataError("Random-split reliability needs at least one split of the probe set.")
    halves_a = np.stack([_row_means(matrix[:, a]) for a, _ in splits])  # splits × drafts
    halves_b = np.stack([_row_means(matrix[:, b]) for _, b in splits])
    keep = np.isfinite(halves_a).all(axis=0) & np.isfinite(halves_b).all(axis=0)
    a, b = halves_a[:, keep], halves_b[:, keep]
    n = int(a.shape[1])
    nan_ci = (math.nan, math.nan)
    result: dict[str, Any] = {"n_drafts": n, "confidence": confidence, "n_splits": len(splits)}
    if n < 3:
        return result | {
            "spearman": math.nan,
            "spearman_ci": nan_ci,
            "pearson": math.nan,
            "pearson_ci": nan_ci,
            "reliability": math.nan,
            "reliability_ci": nan_ci,
            "reliability_pearson": math.nan,
            "split_range": nan_ci,
        }
    per_split = _rowwise_spearman(a, b)  # one r per split
    spearman = _mean_r(per_split)
    pearson = _mean_r(_rowwise_pearson(a, b))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    a_boot, b_boot = a[:BOOT_SPLITS, idx], b[:BOOT_SPLITS, idx]  # splits × resamples × drafts
    boot_s = _mean_r(_rowwise_spearman(a_boot, b_boot), axis=0)  # one per resample
    boot_p = _mean_r(_rowwise_pearson(a_boot, b_boot), axis=0)
    spearman_ci = _percentile_ci(boot_s, confidence)
    stepped = np.array([spearman_brown(float(r)) for r in per_split])
    finite = stepped[np.isfinite(stepped)]
    spread = (
        (float(np.percentile(finite, 5)), float(np.percentile(finite, 95)))
        if finite.size
        else nan_ci
    )
    return result | {
        "spearman": spearman,
        "spearman_ci": spearman_ci,
        "pearson": pearson,
        "pearson_ci": _percentile_ci(boot_p, confidence),
        "reliability": spearman_brown(spearman),
        "reliability_ci": (spearman_brown(spearman_ci[0]), spearman_brown(spearman_ci[1])),
        "reliability_pearson": spearman_brown(pearson),
        "split_range": spread,
    }


def _mean_r(r: np.ndarray, axis: int | None = None) -> Any:
    """Mean of correlations over splits; NaN where most splits have none (constant scores)."""
    finite = np.isfinite(r)
    counts = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, r, 0.0).sum(axis=axis) / counts
        enough = counts >= 0.5 * (r.size if axis is None else r.shape[axis])
    out = np.where(enough, mean, np.nan)
    return float(out) if axis is None else out


def label_variance_explained(
    scores: Sequence[float] | np.ndarray, labels: Sequence[Hashable]
) -> float:
    """Eta²: the share of the draft-score variance explained by the drafts' answer labels.

    Between-label sum of squares over the total sum of squares; drafts with a missing score are
    left out, and 0.0 is returned when the scores do not vary (there is nothing to explain).
    """
    s = np.asarray(scores, dtype=float).ravel()
    if s.size != len(labels):
        raise DataError(f"Got {s.size} scores but {len(labels)} labels; give one label per draft.")
    keep = np.isfinite(s)
    s = s[keep]
    kept_labels = [label for label, k in zip(labels, keep, strict=True) if k]
    total = float(((s - s.mean()) ** 2).sum()) if s.size else 0.0
    if total <= 1e-12:
        return 0.0
    _, group = np.unique(np.array([repr(x) for x in kept_labels]), return_inverse=True)
    counts = np.bincount(group)
    means = np.bincount(group, weights=s) / counts
    between = float((counts * (means - s.mean()) ** 2).sum())
    return between / total


# --- the verdict ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """``level`` is "ok", "warn" (go ahead, but read the reasons) or "stop" (fix first).

    ``ok`` means nothing blocks the study: the level is not "stop", or a researcher overrode it.
    """

    ok: bool
    level: Level
    reasons: list[str] = field(default_factory=list)
    override_note: str | None = None

    def override(self, note: str) -> Verdict:
        """The researcher goes ahead anyway; the original level and reasons are kept for the record."""
        return Verdict(ok=True, level=self.level, reasons=list(self.reasons), override_note=note)


def _num(x: float) -> str:
    return f"{x:.2f}".replace("-", "−")


def _ci(low: float, high: float, confidence: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return f"no {round(100 * confidence)}% CI: too few varied resamples"
    return f"{round(100 * confidence)}% CI {_num(low)}–{_num(high)}"


def verdict(
    result: SignalCheckResult,
    *,
    min_reliability: float = 0.3,
    max_label_share: float = 0.3,
    label_balanced: bool = False,
) -> Verdict:
    """Plain-language verdict on a signal check; thresholds are the researcher's to change.

    - student not above chance (few-shot, else zero-shot): "stop" when scores are accuracies,
      which are then pure noise; "warn" for margin scores, which can stay informative at chance;
    - full-probe-set reliability below ``min_reliability`` (or not measurable): "stop";
      above it but with a CI reaching 0: "warn";
    - the answer label explaining more than ``max_label_share`` of score variance: "warn"
      (a note only when label-balanced pairing is already on).
    """
    reasons: list[str] = []
    levels: list[Level] = []
    chance = result.chance
    rate = chance["chance_rate"]
    block, which = chance["few_shot"], "few-shot"
    if block is None:
        block, which = chance["zero_shot"], "zero-shot"
    if rate is not None and block is not None and not block["above_chance"]:
        where = "below" if block["ci_high"] < rate else "at"
        baseline = f"chance {_num(rate)}"
        if chance.get("baseline") == "majority":
            baseline += f" by always answering '{chance['majority_label']}'"
        figures = (
            f"{which} {_num(block['accuracy'])}, {baseline}, "
            f"{_ci(block['ci_low'], block['ci_high'], chance['confidence'])}"
        )
        if result.metric == "accuracy":
            levels.append("stop")
            reasons.append(
                f"student {where} chance on this task ({figures}): preferences will be noise — "
                "pick another task or a larger student"
            )
        else:
            levels.append("warn")
            reasons.append(
                f"student {where} chance on this task ({figures}): accuracy carries no signal; "
                "margin scores may still — trust them only if the reliability below holds up"
            )

    rel = result.reliability
    r, (low, high) = rel["reliability"], rel["reliability_ci"]
    if math.isnan(r) and result.metric == "margin" and math.isnan(result.mean_score):
        levels.append("stop")
        reasons.append(
            "no margin scores: the margin exists only for multiple-choice probe items scored by "
            "log-likelihood — use the accuracy metric on this task or scorer"
        )
    elif math.isnan(r):
        levels.append("stop")
        reasons.append(
            f"reliability cannot be measured ({rel['n_drafts']} drafts with scores on both probe "
            "halves, or scores that do not vary) — score more drafts, use more probe items, or "
            "switch to the margin score"
        )
    elif r < min_reliability:
        levels.append("stop")
        reasons.append(
            f"reliability {_num(r)} ({_ci(low, high, rel['confidence'])}): draft scores barely "
            "agree between probe halves — use more probe items"
        )
    elif not math.isnan(low) and low <= 0:
        levels.append("warn")
        reasons.append(
            f"reliability {_num(r)} is uncertain ({_ci(low, high, rel['confidence'])}): "
            "score more drafts before trusting the ranking"
        )

    share = result.label_share
    if not math.isnan(share) and share > max_label_share:
        best = max(result.label_means, key=lambda k: result.label_means[k])
        text = (
            f"the answer label explains {round(100 * share)}% of score variance (drafts "
            f"answering '{best}' score highest): pairs may teach 'always answer {best}'"
        )
        if label_balanced:
            reasons.append(f"{text} — label-balanced pairing is on, so pairs are protected")
        else:
            levels.append("warn")
            reasons.append(f"{text} — turn on label-balanced pairing")

    level: Level = "stop" if "stop" in levels else "warn" if "warn" in levels else "ok"
    return Verdict(ok=level != "stop", level=level, reasons=reasons)


# --- the whole check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalCheckResult:
    metric: Metric
    seed: int
    n_drafts: int
    n_probes: int
    halves: tuple[tuple[int, ...], tuple[int, ...]]  # probe indices of each half
    mean_score: float  # mean draft score on the whole probe set
    chance: dict[str, Any]  # student_vs_chance()
    reliability: dict[str, Any]  # split_half_reliability()
    label_share: float  # eta², NaN without labels
    label_counts: dict[str, int] = field(default_factory=dict)
    label_means: dict[str, float] = field(default_factory=dict)
    verdict: Verdict | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists and NaN becomes None."""
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _as_matrix(
    per_draft_probe: ProbeScores, draft_labels: Mapping[Hashable, Hashable] | Sequence | None
) -> tuple[np.ndarray, list[int], list[Hashable] | None]:
    """(drafts × probes matrix with NaN gaps, probe indices, labels aligned with the rows)."""
    if isinstance(per_draft_probe, Mapping):
        draft_ids = list(per_draft_probe)
        probes = sorted({p for row in per_draft_probe.values() for p in row})
        col = {p: j for j, p in enumerate(probes)}
        matrix = np.full((len(draft_ids), len(probes)), np.nan)
        for i, d in enumerate(draft_ids):
            for p, v in per_draft_probe[d].items():
                matrix[i, col[p]] = float(v)
    else:
        matrix = np.asarray(per_draft_probe, dtype=float)
        if matrix.ndim != 2:
            raise DataError(
                "Probe scores must be a drafts × probes matrix or {draft: {probe: score}}."
            )
        draft_ids = list(range(matrix.shape[0]))
        probes = list(range(matrix.shape[1]))
    if draft_labels is None:
        labels = None
    elif isinstance(draft_labels, Mapping):
        labels = [draft_labels.get(d) for d in draft_ids]
    else:
        labels = list(draft_labels)
        if len(labels) != len(draft_ids):
            raise DataError(
                f"Got {len(labels)} labels for {len(draft_ids)} drafts; give one per draft."
            )
    return matrix, probes, labels


def _labels_repeat(labels: Sequence[Hashable]) -> bool:
    """Whether labels are shared by several items (a label set), not one per item."""
    return len({str(x) for x in labels}) <= max(2, len(labels) // 3)


def probe_halves(
    probes: Sequence[Hashable], probe_labels: Mapping[Hashable, Hashable] | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of the two halves: a seeded shuffle, dealt alternately per gold label.

    Halves with different gold-label mixes are not parallel: a demonstration that only moves
    the student towards one answer then raises one half and lowers the other, and the halves
    look anti-correlated however consistent that effect is (seen with a 135M student on a
    binary task: reliability −0.8 on 2 vs 3 'plausible' items). Stratifying gives each half
    the same mix. Labels unique to an item (free-form answers) cannot be stratified on.
    """
    rng = np.random.default_rng(seed)
    n = len(probes)
    labels = [None if probe_labels is None else probe_labels.get(p) for p in probes]
    if probe_labels is None or not _labels_repeat(labels):
        perm = rng.permutation(n)
        return np.sort(perm[: (n + 1) // 2]), np.sort(perm[(n + 1) // 2 :])
    groups: dict[str, list[int]] = {}
    for j, label in enumerate(labels):
        groups.setdefault(str(label), []).append(j)
    dealt: list[list[int]] = [[], []]
    turn = 0  # one counter over all groups keeps the halves' sizes within one of each other
    for key in sorted(groups):
        members = groups[key]
        for k in rng.permutation(len(members)):
            dealt[turn % 2].append(members[k])
            turn += 1
    return np.sort(np.array(dealt[0], dtype=int)), np.sort(np.array(dealt[1], dtype=int))


def _row_means(matrix: np.ndarray) -> np.ndarray:
    seen = np.isfinite(matrix)
    counts = seen.sum(axis=1)
    sums = np.where(seen, matrix, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def signal_check(
    per_draft_probe: ProbeScores,
    draft_labels: Mapping[Hashable, Hashable] | Sequence[Hashable] | None,
    zero_shot_correct: Sequence[bool] | None,
    few_shot_correct: Sequence[bool] | None,
    chance_rate: float | None,
    seed: int = 0,
    *,
    metric: Metric = "accuracy",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    min_reliability: float = 0.3,
    max_label_share: float = 0.3,
    label_balanced: bool = False,
    probe_labels: Mapping[Hashable, Hashable] | None = None,
    n_splits: int = N_SPLITS,
) -> SignalCheckResult:
    """Run the whole check on a sample of drafts scored on the probe set.

    ``per_draft_probe`` holds, per draft and probe item, whether the student got the probe right
    with that draft as the demonstration (``metric="accuracy"``) or its log-prob margin
    log p(gold) − log p(best other) (``metric="margin"``); a drafts × probes array with NaN
    gaps works too. The probe items are split into two disjoint halves by a seeded shuffle,
    stratified by ``probe_labels`` (each probe's gold answer) when given (see
    ``probe_halves``), ``n_splits`` times; a draft's score on a half is its mean over the items
    it was scored on there, and reliability is averaged over the splits
    (``random_split_reliability``). ``probe_labels`` also give the majority-answer baseline.
    """
    if metric not in ("accuracy", "margin"):
        raise DataError(f"Unknown score metric {metric!r}; use 'accuracy' or 'margin'.")
    matrix, probes, labels = _as_matrix(per_draft_probe, draft_labels)
    seen = matrix[np.isfinite(matrix)]
    if metric == "accuracy" and not np.all((seen == 0) | (seen == 1)):
        raise DataError(
            "Accuracy scores must be right/wrong (booleans or 0/1); for log-prob margins pass "
            "metric='margin'."
        )
    if len(probes) < 2:
        raise DataError(
            f"The split-half check needs at least 2 probe items (got {len(probes)}); "
            "20 or more give a usable estimate."
        )
    # The first split is the one recorded; reliability averages over ``n_splits`` of them.
    splits = [probe_halves(probes, probe_labels, seed + k) for k in range(max(1, n_splits))]
    cols_a, cols_b = splits[0]
    full = _row_means(matrix)

    label_share = math.nan
    label_counts: dict[str, int] = {}
    label_means: dict[str, float] = {}
    # A label shared by few drafts (free-form answers, per-question dates) cannot confound:
    # eta² would be near 1 by construction. Only measure it when labels repeat.
    if labels is not None and _labels_repeat(labels):
        label_share = label_variance_explained(full, labels)
        for lab in sorted({str(x) for x in labels}):
            rows = np.array([str(x) == lab for x in labels]) & np.isfinite(full)
            label_counts[lab] = int(rows.sum())
            if rows.any():
                label_means[lab] = float(full[rows].mean())

    result = SignalCheckResult(
        metric=metric,
        seed=seed,
        n_drafts=int(matrix.shape[0]),
        n_probes=len(probes),
        halves=(tuple(int(probes[j]) for j in cols_a), tuple(int(probes[j]) for j in cols_b)),
        mean_score=float(np.nanmean(full)) if np.isfinite(full).any() else math.nan,
        chance=student_vs_chance(
            zero_shot_correct,
            few_shot_correct,
            chance_rate,
            confidence=confidence,
            majority=majority_answer(list(probe_labels.values())) if probe_labels else None,
        ),
        reliability=random_split_reliability(
            matrix, splits, n_resamples=n_resamples, confidence=confidence, seed=seed
        ),
        label_share=label_share,
        label_counts=label_counts,
        label_means=label_means,
    )
    v = verdict(
        result,
        min_reliability=min_reliability,
        max_label_share=max_label_share,
        label_balanced=label_balanced,
    )
    return replace(result, verdict=v)
