"""Tests for teachlab.signalcheck on simulated drafts with known reliability and label effect."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import expit

from teachlab.errors import DataError
from teachlab.signalcheck import (
    label_variance_explained,
    probe_halves,
    signal_check,
    spearman_brown,
    split_half_reliability,
    student_vs_chance,
    verdict,
)

LABELS = ("plausible", "implausible")


def simulate_drafts(
    n_drafts: int = 80,
    n_probes: int = 40,
    *,
    seed: int = 0,
    quality_sd: float = 1.5,
    label_effect: float = 0.0,
    margins: bool = False,
):
    """Draft i has quality q_i (plus a label effect); probe j has an easiness e_j.

    Accuracy: outcome ~ Bernoulli(sigmoid(q_i + e_j)). Margin: q_i + e_j + N(0, 1).
    """
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_drafts)
    q = rng.normal(0, quality_sd, n_drafts) + label_effect * (label - 0.5)
    e = rng.normal(0, 1, n_probes)
    if margins:
        scores = q[:, None] + e[None, :] + rng.normal(0, 1, (n_drafts, n_probes))
    else:
        scores = rng.random((n_drafts, n_probes)) < expit(q[:, None] + e[None, :])
    return scores, [LABELS[x] for x in label]


def fixed_outcomes(k: int, n: int) -> list[bool]:
    return [True] * k + [False] * (n - k)


GOOD_STUDENT = {
    "zero_shot_correct": fixed_outcomes(26, 40),
    "few_shot_correct": fixed_outcomes(32, 40),
}


# --- the statistics ------------------------------------------------------------------------------


def test_student_vs_chance_blocks():
    out = student_vs_chance(fixed_outcomes(20, 40), fixed_outcomes(30, 40), 0.5)
    zero, few = out["zero_shot"], out["few_shot"]
    assert (zero["k"], zero["n"], zero["accuracy"]) == (20, 40, 0.5)
    assert zero["ci_low"] == pytest.approx(0.338, abs=1e-3)
    assert zero["ci_high"] == pytest.approx(0.662, abs=1e-3)
    assert zero["above_chance"] is False
    assert few["above_chance"] is True
    # Six-choice task: the pilot's 11/40 beats 1/6 as a point estimate, but its exact interval
    # (0.146–0.439) still reaches chance; 15/40 clears it.
    six = student_vs_chance(None, fixed_outcomes(11, 40), 1 / 6)["few_shot"]
    assert six["accuracy"] > 1 / 6 and six["ci_low"] < 1 / 6 and six["above_chance"] is False
    assert student_vs_chance(None, fixed_outcomes(15, 40), 1 / 6)["few_shot"]["above_chance"]
    free_form = student_vs_chance([True, False], None, None)
    assert free_form["zero_shot"]["above_chance"] is None and free_form["few_shot"] is None


def test_spearman_brown():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(1.0) == 1.0
    assert spearman_brown(0.0) == 0.0
    assert spearman_brown(-0.2) == -0.2
    assert np.isnan(spearman_brown(float("nan")))


def test_split_half_reliability_matches_scipy_and_is_seeded():
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + rng.normal(size=30)
    out = split_half_reliability(a, b, seed=1)
    assert out["n_drafts"] == 30
    assert out["spearman"] == pytest.approx(sps.spearmanr(a, b).statistic)
    assert out["pearson"] == pytest.approx(sps.pearsonr(a, b).statistic)
    assert out["spearman_ci"][0] < out["spearman"] < out["spearman_ci"][1]
    assert out["reliability"] == pytest.approx(spearman_brown(out["spearman"]))
    assert out["reliability_ci"][0] == pytest.approx(spearman_brown(out["spearman_ci"][0]))
    assert split_half_reliability(a, b, seed=1) == out
    assert split_half_reliability(a, b, seed=2)["spearman_ci"] != out["spearman_ci"]


def test_split_half_reliability_recovers_a_known_correlation():
    # Halves = true score + independent noise of equal variance: true half correlation 0.5,
    # full-length (Spearman-Brown) reliability 2/3.
    rng = np.random.default_rng(3)
    true = rng.normal(size=600)
    a, b = true + rng.normal(size=600), true + rng.normal(size=600)
    out = split_half_reliability(a, b, n_resamples=500)
    assert out["pearson"] == pytest.approx(0.5, abs=0.07)
    assert out["pearson_ci"][0] < 0.5 < out["pearson_ci"][1]
    assert out["reliability_pearson"] == pytest.approx(2 / 3, abs=0.07)


def test_split_half_reliability_degenerate_inputs():
    out = split_half_reliability([1.0, np.nan, 2.0], [1.0, 2.0, np.nan])
    assert out["n_drafts"] == 1 and np.isnan(out["spearman"]) and np.isnan(out["reliability"])
    constant = split_half_reliability([0.5] * 10, list(range(10)))
    assert np.isnan(constant["pearson"]) and np.isnan(constant["spearman_ci"][0])
    with pytest.raises(DataError):
        split_half_reliability([1.0, 2.0], [1.0])


def test_label_variance_explained_hand_computed():
    # Grand mean 2.5; label means 1.5 and 3.5 → between SS 4, total SS 5.
    assert label_variance_explained([1, 2, 3, 4], ["a", "a", "b", "b"]) == pytest.approx(0.8)
    assert label_variance_explained([1, 2, 1, 2], ["a", "a", "b", "b"]) == pytest.approx(0.0)
    assert label_variance_explained([0.3, 0.3], ["a", "b"]) == 0.0
    assert label_variance_explained([1, 3, np.nan], ["a", "b", "a"]) == pytest.approx(1.0)
    with pytest.raises(DataError):
        label_variance_explained([1.0, 2.0], ["a"])


def test_label_variance_explained_recovers_a_simulated_share():
    # score = 2·(label − ½) + N(0, 1): label variance 1, noise variance 1 → share 0.5.
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 2000)
    scores = 2 * (labels - 0.5) + rng.normal(size=2000)
    assert label_variance_explained(scores, labels.tolist()) == pytest.approx(0.5, abs=0.04)


# --- the whole check -----------------------------------------------------------------------------


def test_high_signal_drafts_pass():
    scores, labels = simulate_drafts(seed=0)
    result = signal_check(scores, labels, chance_rate=0.5, seed=0, **GOOD_STUDENT)
    rel = result.reliability
    assert rel["spearman"] > 0.7 and rel["reliability"] > 0.8
    assert rel["reliability_ci"][0] > 0.5
    assert result.label_share < 0.1
    assert result.verdict.level == "ok" and result.verdict.ok
    assert result.verdict.reasons == []


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_pure_noise_drafts_are_flagged(seed):
    # Like any test at the 5% level, a pure-noise sample passes now and then (about 1 seed
    # in 20 here); these seeds are typical ones.
    scores, labels = simulate_drafts(n_drafts=100, seed=seed, quality_sd=0.0)
    result = signal_check(scores, labels, chance_rate=0.5, seed=seed, **GOOD_STUDENT)
    rel = result.reliability
    assert abs(rel["spearman"]) < 0.25
    assert result.verdict.level != "ok"
    reason = next(r for r in result.verdict.reasons if r.startswith("reliability"))
    r_text = f"{rel['reliability']:.2f}".replace("-", "−")
    low_text = f"{rel['reliability_ci'][0]:.2f}".replace("-", "−")
    assert r_text in reason and low_text in reason and "95% CI" in reason


def test_pure_noise_with_low_point_estimate_stops_with_the_documented_message():
    scores, labels = simulate_drafts(n_drafts=100, seed=1, quality_sd=0.0)
    result = signal_check(scores, labels, chance_rate=0.5, seed=1, **GOOD_STUDENT)
    assert result.reliability["reliability"] < 0.3
    assert result.verdict.level == "stop" and not result.verdict.ok
    assert any(
        "draft scores barely agree between probe halves — use more probe items" in r
        for r in result.verdict.reasons
    )


def test_student_at_chance_is_flagged_with_its_numbers():
    scores, labels = simulate_drafts(seed=1)
    result = signal_check(
        scores, labels, fixed_outcomes(19, 40), fixed_outcomes(20, 40), chance_rate=0.5, seed=1
    )
    assert result.chance["few_shot"]["above_chance"] is False
    assert result.verdict.level == "stop"
    assert result.verdict.reasons[0] == (
        "student at chance on this task (few-shot 0.50, chance 0.50, 95% CI 0.34–0.66): "
        "preferences will be noise — pick another task or a larger student"
    )


def test_a_student_that_always_gives_the_commonest_answer_is_not_above_chance():
    # 30 of 40 probes are "false": always answering "false" scores 0.75 without reading them.
    scores, labels = simulate_drafts(seed=1)
    gold = {j: "false" if j < 30 else "true" for j in range(40)}
    always_false = [g == "false" for g in gold.values()]
    result = signal_check(
        scores, labels, always_false, always_false, chance_rate=0.5, seed=1, probe_labels=gold
    )
    chance = result.chance
    assert chance["uniform_rate"] == 0.5 and chance["majority_rate"] == 0.75
    assert chance["chance_rate"] == 0.75 and chance["baseline"] == "majority"
    assert chance["few_shot"]["accuracy"] == 0.75 and chance["few_shot"]["above_chance"] is False
    assert result.verdict.level == "stop"
    assert result.verdict.reasons[0].startswith(
        "student at chance on this task (few-shot 0.75, chance 0.75 by always answering 'false', "
    )
    # Without the probes' answers (or on a balanced probe set) chance is one over the choices.
    blind = signal_check(scores, labels, always_false, always_false, chance_rate=0.5, seed=1)
    assert blind.chance["chance_rate"] == 0.5 and blind.chance["few_shot"]["above_chance"]
    balanced = {j: "false" if j % 2 else "true" for j in range(40)}
    even = signal_check(scores, labels, None, always_false, chance_rate=0.5, probe_labels=balanced)
    assert even.chance["baseline"] == "uniform" and even.chance["majority_rate"] == 0.5


def test_answers_that_never_repeat_leave_chance_uniform():
    scores, labels = simulate_drafts(seed=2)
    gold = {j: f"movie {j}" for j in range(40)}
    result = signal_check(
        scores, labels, chance_rate=0.25, seed=2, probe_labels=gold, **GOOD_STUDENT
    )
    assert result.chance["chance_rate"] == 0.25 and result.chance["majority_label"] is None


def test_margin_scores_at_chance_only_warn():
    # SPEC 3a: the log-prob margin can stay informative where accuracy is pinned at chance.
    scores, labels = simulate_drafts(seed=2, margins=True)
    result = signal_check(
        scores, labels, None, fixed_outcomes(20, 40), chance_rate=0.5, seed=2, metric="margin"
    )
    assert result.reliability["reliability"] > 0.8
    assert result.verdict.level == "warn" and result.verdict.ok
    assert "margin scores may still" in result.verdict.reasons[0]


def test_strong_label_effect_is_flagged():
    scores, labels = simulate_drafts(seed=3, quality_sd=0.3, label_effect=3.0)
    result = signal_check(scores, labels, chance_rate=0.5, seed=3, **GOOD_STUDENT)
    assert result.label_share > 0.6
    best = max(result.label_means, key=result.label_means.get)
    assert result.verdict.level == "warn"
    (reason,) = result.verdict.reasons
    assert f"explains {round(100 * result.label_share)}% of score variance" in reason
    assert f"always answer {best}" in reason and "turn on label-balanced pairing" in reason
    # Already protected: reported, but no longer a warning.
    protected = verdict(result, label_balanced=True)
    assert protected.level == "ok" and "label-balanced pairing is on" in protected.reasons[0]


def test_label_share_is_near_the_simulated_share():
    # Margin scores are linear in quality: label variance 1, residual variance 1 → share ≈ 0.5.
    scores, labels = simulate_drafts(
        n_drafts=300, seed=4, quality_sd=1.0, label_effect=2.0, margins=True
    )
    result = signal_check(scores, labels, None, None, None, seed=4, metric="margin")
    assert result.label_share == pytest.approx(0.5, abs=0.1)
    assert sum(result.label_counts.values()) == 300


def test_halves_are_disjoint_cover_the_probes_and_follow_the_seed():
    scores, labels = simulate_drafts(n_drafts=20, n_probes=25, seed=5)
    first = signal_check(scores, labels, None, None, 0.5, seed=7)
    half_a, half_b = first.halves
    assert not set(half_a) & set(half_b)
    assert sorted(half_a + half_b) == list(range(25))
    assert len(half_a) == 13 and len(half_b) == 12
    assert signal_check(scores, labels, None, None, 0.5, seed=7).to_dict() == first.to_dict()
    assert signal_check(scores, labels, None, None, 0.5, seed=8).halves != first.halves


def test_dict_input_matches_matrix_input():
    scores, labels = simulate_drafts(n_drafts=15, n_probes=10, seed=6)
    ids = [f"d{i}" for i in range(15)]
    nested = {d: {j: bool(scores[i, j]) for j in range(10)} for i, d in enumerate(ids)}
    by_id = dict(zip(ids, labels, strict=True))
    from_dict = signal_check(nested, by_id, None, None, 0.5, seed=1)
    from_matrix = signal_check(scores, labels, None, None, 0.5, seed=1)
    assert from_dict.to_dict() == from_matrix.to_dict()


def test_missing_probe_results_are_skipped():
    scores, labels = simulate_drafts(n_drafts=30, seed=7)
    matrix = scores.astype(float)
    matrix[0, :] = np.nan  # a draft that was never scored
    matrix[1:, 3] = np.nan
    result = signal_check(matrix, labels, None, None, 0.5, seed=0)
    assert result.reliability["n_drafts"] == 29
    assert sum(result.label_counts.values()) == 29


def test_to_dict_is_strict_json():
    scores, _ = simulate_drafts(n_drafts=2, n_probes=4, seed=8)
    result = signal_check(scores, None, None, None, None)
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["reliability"]["spearman"] is None  # two drafts: no correlation
    assert data["verdict"]["level"] == "stop"
    assert "reliability cannot be measured" in data["verdict"]["reasons"][0]


def test_thresholds_and_override_are_the_researchers():
    scores, labels = simulate_drafts(seed=0)
    result = signal_check(scores, labels, chance_rate=0.5, seed=0, **GOOD_STUDENT)
    strict = verdict(result, min_reliability=0.99)
    assert strict.level == "stop"
    overridden = strict.override("pilot run, accepting noise")
    assert overridden.ok and overridden.level == "stop"
    assert overridden.reasons == strict.reasons
    assert overridden.override_note == "pilot run, accepting noise"


def test_bad_inputs_are_rejected():
    with pytest.raises(DataError, match="metric='margin'"):
        signal_check(np.full((4, 6), 0.3), None, None, None, 0.5)
    with pytest.raises(DataError):
        signal_check(np.ones((4, 6)), None, None, None, 0.5, metric="loss")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        signal_check(np.ones((4, 1)), None, None, None, 0.5)
    with pytest.raises(DataError):
        signal_check(np.ones((4, 6)), ["a", "b"], None, None, 0.5)


def test_unique_labels_are_not_reported_as_a_confound() -> None:
    """Free-form answers (each draft its own label) would give eta² = 1 by construction."""
    rng = np.random.default_rng(5)
    per_draft = {d: {p: bool(rng.random() < 0.5) for p in range(20)} for d in range(24)}
    labels = {d: f"answer {d}" for d in range(24)}
    result = signal_check(per_draft, labels, [True] * 20, [True] * 20, 0.2, seed=0)
    assert math.isnan(result.label_share)
    assert not any("label explains" in r for r in result.verdict.reasons)


# --- halves stratified by the probes' gold answers -----------------------------------------------


def test_probe_halves_keep_each_gold_label_mix():
    probes = list(range(100, 117))  # 17 probe ids: 8 'yes', 9 'no'
    gold = {p: "yes" if p % 5 < 2 else "no" for p in probes}
    for seed in range(5):
        a, b = probe_halves(probes, gold, seed)
        assert not set(a) & set(b) and sorted([*a, *b]) == list(range(17))
        assert abs(len(a) - len(b)) <= 1
        yes_a = sum(gold[probes[j]] == "yes" for j in a)
        yes_b = sum(gold[probes[j]] == "yes" for j in b)
        assert yes_a + yes_b == 8 and abs(yes_a - yes_b) <= 1
    assert [list(h) for h in probe_halves(probes, gold, 3)] == [
        list(h) for h in probe_halves(probes, gold, 3)
    ]
    # Unique labels (free-form answers) cannot be stratified on: the plain seeded shuffle.
    unique = {p: str(p) for p in probes}
    plain = probe_halves(probes, None, 2)
    assert [list(h) for h in probe_halves(probes, unique, 2)] == [list(h) for h in plain]


def test_stratified_halves_keep_a_bias_dominated_score_reliable():
    # Margin = quality + bias towards one answer (signed by each probe's gold) + noise. A half
    # with more 'p' items rewards the bias that the other half punishes: random halves with
    # unequal mixes lose the reliability that the drafts' quality really has.
    rng = np.random.default_rng(0)
    gold = np.array([1] * 5 + [-1] * 11)
    rng.shuffle(gold)
    quality, bias = rng.normal(0, 0.5, 40), rng.normal(0, 2, 40)
    scores = quality[:, None] + bias[:, None] * gold[None, :] + rng.normal(0, 0.5, (40, 16))
    labels = {j: "p" if g > 0 else "i" for j, g in enumerate(gold)}

    def p_items(half):
        return int((gold[list(half)] > 0).sum())

    for seed in range(6):
        kwargs = {"seed": seed, "metric": "margin"}
        plain = signal_check(scores, None, None, None, None, n_splits=1, **kwargs)
        strat = signal_check(scores, None, None, None, None, probe_labels=labels, **kwargs)
        assert abs(p_items(strat.halves[0]) - p_items(strat.halves[1])) == 1
        assert strat.reliability["reliability"] > 0.9
        assert strat.reliability["split_range"][0] > 0.85  # every stratified split agrees
        if abs(p_items(plain.halves[0]) - p_items(plain.halves[1])) >= 3:
            assert plain.reliability["reliability"] < 0.7
    # Unstratified, the splits with unequal mixes drag the spread of single splits down.
    many = signal_check(scores, None, None, None, None, seed=0, metric="margin")
    assert many.reliability["split_range"][0] < 0.7


def test_averaging_over_splits_is_steadier_than_one_split():
    # The same drafts, split by 12 seeds: single splits scatter, 100-split averages do not.
    scores, labels = simulate_drafts(n_drafts=24, n_probes=24, seed=9, quality_sd=0.5)

    def estimates(n_splits):
        return [
            signal_check(scores, labels, None, None, 0.5, seed=s, n_splits=n_splits).reliability[
                "reliability"
            ]
            for s in range(12)
        ]

    single, averaged = np.array(estimates(1)), np.array(estimates(100))
    assert averaged.std() < single.std() / 3
    low, high = signal_check(scores, labels, None, None, 0.5, seed=0).reliability["split_range"]
    assert low < averaged.mean() < high and single.min() < averaged.mean() < single.max()
