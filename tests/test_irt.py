"""Tests for teachlab.irt: 2PL recovery on simulated data with known parameters, and item selection."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from teachlab.errors import DataError
from teachlab.irt import IRTFit, fit_2pl, response_matrix, select_items


def simulate(n_subjects: int, n_items: int, seed: int, missing: float = 0.0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1, n_subjects)
    a = rng.uniform(0.4, 2.5, n_items)
    b = rng.normal(0, 1, n_items)
    R = (rng.random((n_subjects, n_items)) < expit(a * (theta[:, None] - b))).astype(float)
    R[rng.random(R.shape) < missing] = np.nan
    return R, theta, a, b


def corr(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1])


@pytest.mark.parametrize(("seed", "missing"), [(0, 0.0), (3, 0.0), (2, 0.1)])
def test_fit_2pl_recovers_known_parameters(seed, missing):
    R, theta, a, b = simulate(200, 40, seed, missing)
    fit = fit_2pl(R)
    assert fit.converged
    assert corr(fit.a, a) > 0.7
    assert corr(fit.b, b) > 0.9
    assert corr(fit.theta, theta) > 0.85
    assert np.all(fit.a > 0)
    top_true = set(np.argsort(-a)[:10].tolist())
    assert len(top_true & set(select_items(fit, 10))) >= 6


def test_fit_2pl_is_deterministic_and_nll_is_the_data_term():
    R, *_ = simulate(60, 12, seed=5)
    first, second = fit_2pl(R, seed=3), fit_2pl(R, seed=3)
    np.testing.assert_array_equal(first.a, second.a)
    np.testing.assert_array_equal(first.theta, second.theta)
    p = first.prob()
    assert p.shape == R.shape
    expected = -np.sum(R * np.log(p) + (1 - R) * np.log(1 - p))
    assert first.nll == pytest.approx(expected, rel=1e-9)
    # Another start converges to nearly the same optimum.
    np.testing.assert_allclose(fit_2pl(R, seed=9).b, first.b, atol=1e-3)


def test_fit_2pl_small_study_with_extreme_rows_and_columns_stays_finite():
    # The size of a CPU study: 8 subjects (students × shot counts) × 16 candidate items,
    # with an item everyone gets right, one nobody gets right, one never asked,
    # and a subject who is always right.
    rng = np.random.default_rng(1)
    R = (rng.random((8, 16)) < 0.5).astype(float)
    R[:, 0], R[:, 1], R[:, 2] = 1.0, 0.0, np.nan
    R[0, 3:] = 1.0
    R[4, 7] = np.nan
    fit = fit_2pl(R)
    for arr in (fit.theta, fit.a, fit.b):
        assert np.all(np.isfinite(arr))
    assert np.isfinite(fit.nll)
    assert fit.theta[0] == fit.theta.max()  # the always-right subject is the ablest
    assert fit.b[0] < fit.b[1]  # the item everyone solves is easier than the one nobody does
    chosen = select_items(fit, 16)
    assert sorted(chosen) == list(range(16))
    # Items that separate nobody in the data (0, 1, 2 and any that chance made uniform)
    # come last, whatever their fitted a.
    observed = ~np.isnan(R)
    flat = [j for j in range(16) if len(set(R[observed[:, j], j])) < 2]
    assert {0, 1, 2} <= set(flat) and len(flat) < 8
    assert set(chosen[-len(flat) :]) == set(flat)


def hand_fit(a, b, theta, item_p=None) -> IRTFit:
    a = np.asarray(a, dtype=float)
    return IRTFit(
        theta=np.asarray(theta, dtype=float),
        a=a,
        b=np.asarray(b, dtype=float),
        converged=True,
        nll=0.0,
        item_p=np.full(a.size, 0.5) if item_p is None else np.asarray(item_p, dtype=float),
    )


def test_select_items_ranks_by_discrimination_then_closeness_to_mean_ability():
    fit = hand_fit(a=[0.5, 2.0, 1.0, 2.0, 2.0], b=[0.0, 3.0, 0.0, 1.2, 0.9], theta=[0.0, 2.0])
    # Mean ability is 1.0: among the a = 2 items, b = 0.9 and 1.2 are closer than b = 3.0.
    assert select_items(fit, 5) == [4, 3, 1, 2, 0]
    assert select_items(fit, 2) == [4, 3]
    assert select_items(fit, 0) == []
    with pytest.raises(DataError):
        select_items(fit, 6)


def test_select_items_puts_items_without_spread_last():
    fit = hand_fit(a=[3.0, 1.0, 2.0], b=[0, 0, 0], theta=[0, 0], item_p=[1.0, 0.4, np.nan])
    assert select_items(fit, 3) == [1, 0, 2]


def test_response_matrix_from_nested_mapping():
    results = {("smollm2", 0): {"q1": True, "q2": False}, ("smollm2", 3): {"q2": True}}
    R, subjects, items = response_matrix(results)
    assert subjects == [("smollm2", 0), ("smollm2", 3)]
    assert items == ["q1", "q2"]
    np.testing.assert_array_equal(R, [[1.0, 0.0], [np.nan, 1.0]])


@pytest.mark.parametrize(
    "bad",
    [
        np.array([1.0, 0.0]),
        np.array([[1.0, 0.0]]),
        np.array([[0.0, 2.0], [1.0, 0.0]]),
        np.full((3, 2), np.nan),
    ],
)
def test_fit_2pl_rejects_malformed_matrices(bad):
    with pytest.raises(DataError):
        fit_2pl(bad)


def test_objective_gradient_matches_finite_differences():
    from scipy.optimize import approx_fprime

    from teachlab.irt import _objective

    R, *_ = simulate(15, 6, seed=8, missing=0.2)
    mask = (~np.isnan(R)).astype(float)
    y = np.nan_to_num(R)
    x = np.random.default_rng(0).normal(0, 0.7, 15 + 12)
    _, grad = _objective(x, y, mask, 15, 6)
    numeric = approx_fprime(x, lambda p: _objective(p, y, mask, 15, 6)[0], 1e-6)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-4)
