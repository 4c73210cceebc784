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
