"""Confidence intervals, tests and agreement statistics used across TeachLab.

Pure functions on plain sequences (numpy/scipy only); every random draw comes from a seeded Generator.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Literal

import numpy as np
from scipy import stats as sps

from teachlab.errors import DataError

Statistic = Callable[..., float]


def _as_float_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise DataError(f"No {what} were given, so no interval can be computed; pass at least one.")
    if not np.all(np.isfinite(arr)):
        raise DataError(
            f"The {what} contain NaN or infinite values; drop missing results before computing an interval."
        )
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise DataError(
            f"confidence must lie strictly between 0 and 1 (got {confidence}); use e.g. 0.95."
        )


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Statistic = np.mean,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic(values)``.

    Degenerate input (fewer than two values, or all equal) has no sampling spread to
    resample, so the interval collapses to ``(v, v)`` with ``v = statistic(values)``.
    """
    arr = _as_float_array(values, "values")
    _check_confidence(confidence)
    if arr.size < 2 or np.all(arr == arr[0]):
        v = float(statistic(arr))
        return v, v
    res = sps.bootstrap(
        (arr,),
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def binomial_ci(
    k: int,
    n: int,
    confidence: float = 0.95,
    method: Literal["exact", "wilson"] = "exact",
) -> tuple[float, float]:
    """Interval for a proportion k/n: Clopper-Pearson ("exact", the default) or Wilson.

    With n == 0 nothing is known, so the interval is the whole range (0, 1).
    """
    _check_confidence(confidence)
    if n < 0 or not 0 <= k <= n:
        raise DataError(f"A proportion needs 0 <= k <= n (got k={k}, n={n}).")
    if n == 0:
        return 0.0, 1.0
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method=method)
    return float(ci.low), float(ci.high)


def accuracy_ci(
    correct: Sequence[bool] | np.ndarray,
    *,
    confidence: float = 0.95,
    method: Literal["exact", "wilson", "bootstrap"] = "exact",
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(accuracy, low, high) of a list of right/wrong outcomes.

    The exact binomial interval is the default because it stays meaningful at 0/n and n/n,
    where a bootstrap collapses to a point; ``method="bootstrap"`` is there for consistency
    with other bootstrapped figures.
    """
    arr = _as_float_array(correct, "outcomes")
    if not np.all((arr == 0) | (arr == 1)):
        raise DataError("Accuracy needs right/wrong outcomes (booleans or 0/1 values).")
    acc = float(arr.mean())
    if method == "bootstrap":
        low, high = bootstrap_ci(arr, n_resamples=n_resamples, confidence=confidence, seed=seed)
    else:
        low, high = binomial_ci(int(arr.sum()), arr.size, confidence, method=method)
    return acc, low, high


def _mean_diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean(a) − mean(b), low, high): percentile bootstrap, each sample resampled on its own."""
    x, y = _as_float_array(a, "values of a"), _as_float_array(b, "values of b")
    _check_confidence(confidence)
    diff = float(x.mean() - y.mean())
    # Nothing to resample when neither sample varies (or is a single value).
    if (x.size < 2 or np.all(x == x[0])) and (y.size < 2 or np.all(y == y[0])):
        return diff, diff, diff
    # A plain percentile bootstrap: scipy's refuses a one-value sample beside a varying one,
    # which is a legitimate (if weak) comparison here.
    rng = np.random.default_rng(seed)
    means_x = x[rng.integers(0, x.size, (n_resamples, x.size))].mean(axis=1)
    means_y = y[rng.integers(0, y.size, (n_resamples, y.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means_x - means_y, [tail, 100 - tail])
    return diff, float(low), float(high)


def permutation_pvalue(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided permutation p-value for a difference in means of two independent samples.

    Exact (all relabelings) when there are no more than ``n`` of them, Monte-Carlo otherwise.
    """
    x, y = _as_float_array(a, "values of a"), _as_float_array(b, "values of b")
    if np.all(np.concatenate([x, y]) == x[0]):
        return 1.0  # identical values: every relabeling gives the same difference
    res = sps.permutation_test(
        (x, y),
        _mean_diff,
        permutation_type="independent",
        alternative="two-sided",
        n_resamples=n,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two annotators' labels on the same items.

    kappa = (p_o − p_e) / (1 − p_e). When both annotators used one and the same label only,
    chance agreement is 1 and kappa is undefined: NaN is returned.
    """
    if len(a) != len(b):
        raise DataError(
            f"Kappa compares two annotators on the same items, but got {len(a)} and {len(b)} labels."
        )
    if len(a) == 0:
        raise DataError("Kappa needs at least one item labelled by both annotators.")
    labels = sorted(set(a) | set(b), key=repr)
    index = {label: i for i, label in enumerate(labels)}
    ia = np.fromiter((index[x] for x in a), dtype=int, count=len(a))
    ib = np.fromiter((index[x] for x in b), dtype=int, count=len(b))
    p_o = float(np.mean(ia == ib))
    pa = np.bincount(ia, minlength=len(labels)) / len(a)
    pb = np.bincount(ib, minlength=len(labels)) / len(b)
    p_e = float(pa @ pb)
    if np.isclose(p_e, 1.0):
        return float("nan")
    return (p_o - p_e) / (1 - p_e)


def stratified_bootstrap_ci(
    strata: Sequence[Sequence[float] | np.ndarray],
    weights: Sequence[float],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | Sequence[int] = 0,
) -> tuple[float, float, float]:
    """(Σ w_s · mean(stratum s), low, high): percentile bootstrap resampling each stratum on its
    own, so the strata's sizes stay fixed and differences between strata add no spread.

    ``weights`` give each stratum's share: ``n_s / N`` for a pooled mean, ``1 / S`` to average
    S strata equally. A stratum with one value, or all values equal, contributes no spread.
    """
    _check_confidence(confidence)
    arrays = [_as_float_array(s, "values of a stratum") for s in strata]
    if not arrays or len(arrays) != len(weights):
        raise DataError(
            f"A stratified bootstrap needs one weight per stratum and at least one stratum "
            f"(got {len(arrays)} strata, {len(weights)} weights)."
        )
    if n_resamples < 1:
        raise DataError(f"n_resamples must be at least 1 (got {n_resamples}).")
    rng = np.random.default_rng(seed)
    estimate = float(sum(w * a.mean() for w, a in zip(weights, arrays, strict=True)))
    draws = np.zeros(n_resamples)
    for w, a in zip(weights, arrays, strict=True):
        values, counts = np.unique(a, return_counts=True)
        if values.size == 1:
            draws += w * values[0]
            continue
        # A resample's mean depends only on how often each distinct value is drawn, and those
        # counts are multinomial: the same distribution as drawing indices, at a fraction of
        # the cost for right/wrong outcomes (two or three distinct values).
        picks = rng.multinomial(a.size, counts / a.size, size=n_resamples)
        draws += w * (picks @ values) / a.size
    if np.all(draws == draws[0]):
        return estimate, estimate, estimate
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    # Keep the interval around the estimate despite rounding in the weighted sums.
    return estimate, float(min(low, estimate)), float(max(high, estimate))


def paired_permutation_pvalue(
    diffs: Sequence[float] | np.ndarray, n: int = 10000, seed: int | Sequence[int] = 0
) -> float:
    """Two-sided sign-flip test that paired differences centre on 0 (their mean is the statistic).

    When every non-zero difference has the same size (right/wrong outcomes: d in {−1, 0, 1}) the
    flip distribution is a fair binomial and p is exact (the exact sign test, McNemar's exact
    test for paired right/wrong outcomes), so it has no floor however many comparisons a
    Holm correction spreads it over. Otherwise each sign is flipped at random ``n`` times and
    p = (1 + flips at least as extreme) / (n + 1). Flipping items one by one already keeps
    every item in its stratum, so strata need no special handling here.
    """
    d = _as_float_array(diffs, "paired differences")
    if n < 1:
        raise DataError(f"The permutation count must be at least 1 (got {n}).")
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return 1.0  # every flip gives the observed sum, 0
    observed = abs(float(nonzero.sum()))
    rng = np.random.default_rng(seed)
    size = np.abs(nonzero)
    if np.all(size == size[0]):
        # A flipped sum is |d| · (2·Binomial(k, ½) − k): count its tails exactly.
        wins = int(np.count_nonzero(nonzero > 0))
        return float(sps.binomtest(wins, nonzero.size, 0.5).pvalue)
    else:
        chunk = max(1, 2_000_000 // nonzero.size)  # bound the sign matrix's memory
        parts = []
        for start in range(0, n, chunk):
            signs = rng.choice((-1.0, 1.0), size=(min(chunk, n - start), nonzero.size))
            parts.append(np.abs(signs @ nonzero))
        sums = np.concatenate(parts)
    # A relative tolerance so that float rounding of an equal sum still counts as extreme.
    hits = int(np.count_nonzero(sums >= observed - 1e-9 * max(1.0, observed)))
    return (1 + hits) / (n + 1)


def holm(pvalues: Sequence[float] | np.ndarray) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order (step-down, monotone, ≤ 1).

    Rejecting where the adjusted p is ≤ α controls the family-wise error rate at α.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    if p.size == 0:
        return []
    if not np.all((p >= 0) & (p <= 1)):
        raise DataError("Holm's adjustment needs p-values between 0 and 1.")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return [float(x) for x in out]


def _power_z(alpha: float, power: float) -> float:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise DataError(f"alpha and power must lie between 0 and 1 (got {alpha}, {power}).")
    return float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean paired difference a two-sided test at ``alpha`` detects with ``power``
    (normal approximation): (z_{1−α/2} + z_power) · sd / √n."""
    if n < 1:
        raise DataError(f"A detectable effect needs at least one paired item (got n={n}).")
    return _power_z(alpha, power) * sd / float(np.sqrt(n))


def items_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Paired items needed to detect a mean difference ``effect`` (normal approximation):
    ⌈((z_{1−α/2} + z_power) · sd / effect)²⌉, at least 1; None when ``effect`` is 0."""
    if effect == 0:
        return None
    return max(1, int(np.ceil((_power_z(alpha, power) * sd / abs(effect)) ** 2 - 1e-9)))


def mcnemar_items_needed(
    effect: float, discordance: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Paired right/wrong items needed for McNemar's test to detect an accuracy difference
    ``effect`` when the arms disagree on a share ``discordance`` of the items (Connor 1987):
    ⌈((z_{1−α/2}·√π_d + z_power·√(π_d − δ²)) / δ)²⌉. For planning an experiment before its
    runs exist; ``effect`` must not exceed ``discordance`` (every gain is a disagreement)."""
    _power_z(alpha, power)
    delta = abs(effect)
    if not 0 < delta <= discordance <= 1:
        raise DataError(
            f"Planning needs 0 < |effect| <= discordance <= 1 (got effect {effect}, "
            f"discordance {discordance}): the arms must disagree on at least the items they "
            "are to differ by."
        )
    z_a, z_b = float(sps.norm.ppf(1 - alpha / 2)), float(sps.norm.ppf(power))
    root = z_a * np.sqrt(discordance) + z_b * np.sqrt(discordance - delta**2)
    return max(1, int(np.ceil((root / delta) ** 2 - 1e-9)))


def clopper_pearson(
    k: Sequence[int] | np.ndarray, n: Sequence[int] | np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper–Pearson) intervals for many proportions k/n at once, from beta quantiles:
    the same bounds as ``binomial_ci(..., method="exact")`` without a root search per interval.
    n == 0 gives (0, 1)."""
    _check_confidence(confidence)
    ks, ns = np.asarray(k, dtype=float).ravel(), np.asarray(n, dtype=float).ravel()
    if ks.shape != ns.shape or np.any(ns < 0) or np.any((ks < 0) | (ks > ns)):
        raise DataError("Proportions need 0 <= k <= n, one k per n.")
    tail = (1 - confidence) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(ks > 0, sps.beta.ppf(tail, ks, ns - ks + 1), 0.0)
        high = np.where(ks < ns, sps.beta.isf(tail, ks + 1, ns - ks), 1.0)
    return np.nan_to_num(low, nan=0.0), np.nan_to_num(high, nan=1.0)
