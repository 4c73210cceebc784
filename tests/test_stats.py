"""Tests for teachlab.stats: intervals, permutation test and kappa against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from teachlab.errors import DataError
from teachlab.stats import (
    accuracy_ci,
    binomial_ci,
    bootstrap_ci,
    cohen_kappa,
    diff_ci,
    permutation_pvalue,
)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(1).normal(2.0, 1.0, 50)
    low, high = bootstrap_ci(values, seed=3)
    assert low < values.mean() < high
    # Roughly mean ± 1.96·sd/√n for a normal sample.
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / np.sqrt(50), rel=0.25)
    assert bootstrap_ci(values, seed=3) == (low, high)
    assert bootstrap_ci(values, seed=4) != (low, high)


def test_bootstrap_ci_narrows_with_more_data_and_lower_confidence():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=500)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(bootstrap_ci(large)) < width(bootstrap_ci(small))
    assert width(bootstrap_ci(small, confidence=0.5)) < width(bootstrap_ci(small))


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(7)
    hits = 0
    for seed in range(100):
        low, high = bootstrap_ci(rng.exponential(1.0, 40), n_resamples=400, seed=seed)
        hits += low <= 1.0 <= high
    assert 85 <= hits <= 99


def test_bootstrap_ci_degenerate_input_collapses_to_the_value():
    assert bootstrap_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7))
    assert bootstrap_ci([3.0]) == (3.0, 3.0)


def test_bootstrap_ci_other_statistics():
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    low, high = bootstrap_ci(values, statistic=np.median)
    assert 1.0 <= low <= 3.0 <= high <= 100.0
    # A statistic without an ``axis`` argument still works (resampled one by one).
    low2, high2 = bootstrap_ci(values, statistic=lambda x: float(max(x)), n_resamples=200)
    assert low2 >= 3.0 and high2 == 100.0


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_bootstrap_ci_rejects_empty_or_missing_values(bad):
    with pytest.raises(DataError):
        bootstrap_ci(bad)


def test_binomial_ci_matches_known_clopper_pearson_and_wilson_values():
    assert binomial_ci(5, 10) == pytest.approx((0.187086, 0.812914), abs=1e-5)
    assert binomial_ci(5, 10, method="wilson") == pytest.approx((0.236593, 0.763407), abs=1e-5)
    low, high = binomial_ci(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    assert binomial_ci(0, 0) == (0.0, 1.0)
    assert binomial_ci(5, 10, confidence=0.5)[1] < 0.812914


@pytest.mark.parametrize(("k", "n"), [(11, 10), (-1, 10), (0, -1)])
def test_binomial_ci_rejects_impossible_counts(k, n):
    with pytest.raises(DataError):
        binomial_ci(k, n)


def test_accuracy_ci_methods():
    correct = [True] * 30 + [False] * 10
    acc, low, high = accuracy_ci(correct)
    assert acc == 0.75
    assert (low, high) == binomial_ci(30, 40)
    acc_b, low_b, high_b = accuracy_ci(correct, method="bootstrap", seed=1)
    assert acc_b == 0.75 and low_b < 0.75 < high_b
    # At n/n the exact interval stays open below; a bootstrap would collapse to (1, 1).
    assert accuracy_ci([True] * 8)[1] < 1.0
    with pytest.raises(DataError):
        accuracy_ci([0.5, 1.0])


def test_diff_ci_recovers_a_known_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    diff, low, high = diff_ci(a, b, seed=5)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert low < 1.0 < high and low > 0.5
    assert diff_ci(a, b, seed=5) == (diff, low, high)
    assert diff_ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 1.0, 1.0)


def test_diff_ci_contains_zero_for_identical_distributions():
    rng = np.random.default_rng(3)
    _, low, high = diff_ci(rng.normal(size=100), rng.normal(size=100))
    assert low < 0 < high


def test_permutation_pvalue_exact_small_case():
    # 20 ways to split six values into 3 + 3; only the two extreme splits reach |diff| = 3.
    assert permutation_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert permutation_pvalue([1, 1, 1], [1, 1, 1]) == 1.0


def test_permutation_pvalue_separates_shifted_from_equal_samples():
    rng = np.random.default_rng(4)
    same = permutation_pvalue(rng.normal(size=40), rng.normal(size=40), n=2000)
    shifted = permutation_pvalue(rng.normal(1, 1, 40), rng.normal(size=40), n=2000)
    assert same > 0.05
    assert shifted < 0.01
    assert permutation_pvalue([1, 2, 5, 7], [0, 1, 2], n=500, seed=1) == permutation_pvalue(
        [1, 2, 5, 7], [0, 1, 2], n=500, seed=1
    )


def test_cohen_kappa_hand_computed():
    # p_o = 0.75; marginals (0.5, 0.5) and (0.75, 0.25) give p_e = 0.5, so kappa = 0.5.
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa(["approve", "reject", "swap"], ["approve", "reject", "swap"]) == 1.0
    # Systematic disagreement is worse than chance.
    assert cohen_kappa(["a", "b", "a", "b"], ["b", "a", "b", "a"]) == pytest.approx(-1.0)


def test_cohen_kappa_larger_table():
    # 3×3 confusion [[20, 5, 0], [3, 15, 2], [1, 4, 10]]: p_o = 45/60, p_e from the marginals.
    conf = np.array([[20, 5, 0], [3, 15, 2], [1, 4, 10]])
    a = [i for i in range(3) for j in range(3) for _ in range(conf[i, j])]
    b = [j for i in range(3) for j in range(3) for _ in range(conf[i, j])]
    p_o = np.trace(conf) / conf.sum()
    p_e = (conf.sum(1) / 60) @ (conf.sum(0) / 60)
    assert cohen_kappa(a, b) == pytest.approx((p_o - p_e) / (1 - p_e))


def test_cohen_kappa_undefined_and_invalid_cases():
    assert np.isnan(cohen_kappa(["x", "x"], ["x", "x"]))
    with pytest.raises(DataError):
        cohen_kappa([1, 2], [1])
    with pytest.raises(DataError):
        cohen_kappa([], [])


def test_diff_ci_compares_a_single_value_with_a_varying_sample() -> None:
    diff, low, high = diff_ci([0.9], [0.1, 0.3, 0.5, 0.7], seed=1)
    assert diff == pytest.approx(0.5)
    # Only b varies: the interval is 0.9 minus the bootstrap range of b's mean, inside [0.2, 0.8].
    assert 0.2 <= low < diff < high <= 0.8
