"""Two-parameter logistic (2PL) item response theory, used to pick a discriminative probe set.

ARTE keeps the probe items that best separate weak from strong students (0–3-shot runs of small models).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy.special import expit, log_expit

from teachlab.errors import DataError

# Weak priors make joint maximum likelihood identifiable and keep estimates finite when an item
# is answered by everyone (or no one) or a subject is always right: θ ~ N(0, 1) fixes the
# location and scale of the ability axis, log a ~ N(0, 0.5²) keeps discriminations positive
# and moderate, b ~ N(0, 2²) stops difficulties from running off to ±∞.
LOG_A_PRIOR_SD = 0.5
B_PRIOR_SD = 2.0


@dataclass(frozen=True)
class IRTFit:
    """Fitted 2PL parameters: P(subject i right on item j) = sigmoid(a_j · (theta_i − b_j))."""

    theta: np.ndarray  # ability per subject (row of R)
    a: np.ndarray  # discrimination per item (column of R), > 0
    b: np.ndarray  # difficulty per item
    converged: bool
    nll: float  # negative log-likelihood of the observed responses (priors excluded)
    item_p: np.ndarray  # observed share correct per item (NaN where unobserved)

    def prob(self) -> np.ndarray:
        """Model probability of a correct answer, subjects × items."""
        return expit(self.a[None, :] * (self.theta[:, None] - self.b[None, :]))


def response_matrix(
    results: Mapping[Hashable, Mapping[Hashable, bool]],
) -> tuple[np.ndarray, list[Hashable], list[Hashable]]:
    """Turn ``{subject: {item: correct}}`` into (R, subjects, items), NaN where not observed.

    A subject is one student × shot-count configuration, e.g. ``("smollm2", 3)``.
    """
    subjects = list(results)
    items = sorted({item for row in results.values() for item in row}, key=repr)
    col = {item: j for j, item in enumerate(items)}
    R = np.full((len(subjects), len(items)), np.nan)
    for i, s in enumerate(subjects):
        for item, correct in results[s].items():
            R[i, col[item]] = float(bool(correct))
    return R, subjects, items


def _validate(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] < 2 or R.shape[1] < 1:
        raise DataError(
            f"IRT needs a subjects × items matrix with at least two subjects (got shape {R.shape}); "
            "run more students or shot counts on the candidate items."
        )
    observed = ~np.isnan(R)
    if not np.all((R[observed] == 0) | (R[observed] == 1)):
        raise DataError("IRT responses must be 0 (wrong), 1 (right) or NaN (not asked).")
    if not observed.any():
        raise DataError("The response matrix has no observed answers; score some items first.")
    return R


def _objective(
    params: np.ndarray, y: np.ndarray, mask: np.ndarray, n: int, m: int
) -> tuple[float, np.ndarray]:
    theta, log_a, b = params[:n], params[n : n + m], params[n + m :]
    a = np.exp(log_a)
    diff = theta[:, None] - b[None, :]
    z = a[None, :] * diff
    # log p(y) = y·z + log σ(−z), written with log_expit to stay finite for large |z|.
    loglik = mask * (y * z + log_expit(-z))
    nll = -float(loglik.sum())
    penalty = 0.5 * (
        float(theta @ theta)
        + float(log_a @ log_a) / LOG_A_PRIOR_SD**2
        + float(b @ b) / B_PRIOR_SD**2
    )
    r = mask * (y - expit(z))  # d loglik / dz
    g_theta = -(r * a[None, :]).sum(axis=1) + theta
    g_log_a = -(r * z).sum(axis=0) + log_a / LOG_A_PRIOR_SD**2
    g_b = (r * a[None, :]).sum(axis=0) + b / B_PRIOR_SD**2
    return nll + penalty, np.concatenate([g_theta, g_log_a, g_b])


def fit_2pl(R: np.ndarray, seed: int = 0, max_iter: int = 2000) -> IRTFit:
    """Fit abilities and item parameters by penalised joint maximum likelihood (L-BFGS-B).

    ``R`` is subjects × items with 0/1 responses and NaN for missing ones. Discrimination is
    parametrised as ``a = exp(log a)`` so it stays positive. ``seed`` only jitters the starting
    point slightly (deterministic for a given seed); the priors make the optimum unique enough
    that different seeds agree closely.
    """
    R = _validate(R)
    n, m = R.shape
    mask = (~np.isnan(R)).astype(float)
    y = np.nan_to_num(R, nan=0.0)

    # Start from the observed proportions: a subject's logit share right, an item's negated one.
    with np.errstate(invalid="ignore", divide="ignore"):
        p_subj = (y.sum(1) + 0.5) / (mask.sum(1) + 1.0)
        p_item = (y.sum(0) + 0.5) / (mask.sum(0) + 1.0)
    theta0 = np.log(p_subj / (1 - p_subj))
    theta0 = (theta0 - theta0.mean()) / (theta0.std() or 1.0)
    b0 = -np.log(p_item / (1 - p_item))
    rng = np.random.default_rng(seed)
    x0 = np.concatenate([theta0, np.zeros(m), b0]) + rng.normal(0, 0.01, n + 2 * m)

    res = optimize.minimize(
        _objective,
        x0,
        args=(y, mask, n, m),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "maxfun": 4 * max_iter, "ftol": 1e-12, "gtol": 1e-7},
    )
    theta, a, b = res.x[:n], np.exp(res.x[n : n + m]), res.x[n + m :]
    z = a[None, :] * (theta[:, None] - b[None, :])
    nll = -float((mask * (y * z + log_expit(-z))).sum())
    with np.errstate(invalid="ignore"):
        item_p = np.where(mask.sum(0) > 0, y.sum(0) / np.maximum(mask.sum(0), 1), np.nan)
    return IRTFit(theta=theta, a=a, b=b, converged=bool(res.success), nll=nll, item_p=item_p)


def select_items(fit: IRTFit, k: int) -> list[int]:
    """Indices of the ``k`` most discriminative items, best first.

    Ranked by discrimination ``a`` (highest first); ties — and near-ties within 1e-6 — go to
    the item whose difficulty ``b`` lies closest to the mean ability, because such an item
    separates the students actually studied rather than hypothetical much weaker or stronger
    ones. Items that every subject answered the same way (observed share right of 0 or 1, or
    never asked) separate nobody in the data whatever their fitted ``a``, so they come last.
    """
    m = fit.a.size
    if not 0 <= k <= m:
        raise DataError(f"Cannot select {k} items out of {m}; choose k between 0 and {m}.")
    uninformative = ~((fit.item_p > 0) & (fit.item_p < 1))  # NaN compares False → uninformative
    closeness = np.abs(fit.b - float(np.mean(fit.theta)))
    a_key = np.round(fit.a, 6)
    # np.lexsort sorts by the last key first.
    order = np.lexsort((closeness, -a_key, uninformative))
    return [int(j) for j in order[:k]]
