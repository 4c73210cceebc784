"""The experiment comparison on hand-made item results: paired differences, strata, Holm, MDE,
macro averages, refusals, the forest plot and the markdown tables (no database, no models)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from teachlab import charts
from teachlab.errors import ConfigError, DataError
from teachlab.experiments.compare import CostRow, Item, compare, markdown
from teachlab.stats import (
    binomial_ci,
    bootstrap_ci,
    clopper_pearson,
    holm,
    items_needed,
    min_detectable_effect,
    paired_permutation_pvalue,
    stratified_bootstrap_ci,
)

Z = 1.959964 + 0.841621  # z_0.975 + z_0.8, from a normal table


def outcomes(
    arm: str,
    correct: Sequence[bool | int],
    *,
    task: str = "t1",
    seed: int = 0,
    mode: str = "loglik",
    shots: int = 0,
    start: int = 0,
) -> list[Item]:
    """One item per outcome, numbered from ``start``."""
    return [Item(arm, task, seed, mode, shots, start + i, bool(c)) for i, c in enumerate(correct)]


def run(items: Sequence[Item], costs: Sequence[CostRow] = (), **kw: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "arms": ["ref", "arm"],
        "tasks": ["t1"],
        "seeds": [0],
        "reference": "ref",
    }
    settings.update(kw)
    return compare(items, costs, **settings)


def diff_row(result: dict[str, Any], arm: str = "arm", task: str = "t1", **kw: Any) -> dict:
    mode, shots = kw.get("mode", "loglik"), kw.get("shots", 0)
    (row,) = [
        d
        for d in result["differences"]
        if (d["arm"], d["task"], d["mode"], d["shots"]) == (arm, task, mode, shots)
    ]
    return row


def test_identical_arms_differ_by_zero_with_p_one() -> None:
    pattern = [i % 3 == 0 for i in range(60)]
    result = run(outcomes("ref", pattern) + outcomes("arm", pattern))
    for task in ("t1", "all"):
        row = diff_row(result, task=task)
        assert row["diff"] == 0 and row["n"] == 60 and row["vs"] == "ref"
        assert row["ci"][0] <= 0 <= row["ci"][1]
        assert row["p"] == pytest.approx(1.0) and row["p_holm"] == pytest.approx(1.0)
        assert row["n_needed"] is None  # nothing to detect


def test_balanced_disagreements_give_zero_with_a_real_interval_and_p_one() -> None:
    # The arm wins 10 items and loses 10: no effect, but the interval has width.
    ref = [True] * 10 + [False] * 10 + [True] * 30
    arm = [False] * 10 + [True] * 10 + [True] * 30
    row = diff_row(run(outcomes("ref", ref) + outcomes("arm", arm)))
    assert row["diff"] == 0
    assert row["ci"][0] < 0 < row["ci"][1]
    assert row["p"] > 0.9


def test_thirty_more_right_out_of_a_hundred() -> None:
    ref = [i < 40 for i in range(100)]
    arm = [i < 70 for i in range(100)]
    result = run(outcomes("ref", ref) + outcomes("arm", arm))
    row = diff_row(result)
    assert row["diff"] == pytest.approx(0.3) and row["n"] == 100
    assert row["p"] < 0.001
    # Bootstrap of 30 ones among 100: about 0.3 ± 1.96·√(0.21/100) = 0.3 ± 0.09.
    assert 0.19 < row["ci"][0] < 0.3 < row["ci"][1] < 0.41
    sd = math.sqrt(0.3 * 0.7 * 100 / 99)  # sample sd of 30 ones and 70 zeros
    assert row["sd"] == pytest.approx(sd)
    assert row["mde"] == pytest.approx(Z * sd / 10, rel=1e-5)
    assert row["n_needed"] == 19  # ⌈(2.801585 · 0.460566 / 0.3)²⌉ = ⌈18.50⌉
    macro = {m["arm"]: m["accuracy"] for m in result["macro"]}
    assert macro == {"ref": pytest.approx(0.4), "arm": pytest.approx(0.7)}


def _design() -> list[Item]:
    """Three arms, two tasks of different sizes, two seeds, two evaluation settings."""
    rng = np.random.default_rng(5)
    items = []
    for task, size in (("t1", 30), ("t2", 45)):
        for seed in (0, 1):
            for mode, shots in (("loglik", 0), ("cot", 3)):
                ref = rng.random(size) < 0.5
                better = ref | (rng.random(size) < 0.3)
                for arm, values in (("ref", ref), ("arm", better), ("twin", ref)):
                    items += outcomes(
                        arm, list(values), task=task, seed=seed, mode=mode, shots=shots
                    )
    return items


def test_pairing_is_on_the_items_not_the_input_order() -> None:
    items = _design()
    settings = {"arms": ["ref", "arm", "twin"], "tasks": ["t1", "t2"], "seeds": [0, 1]}
    first = run(items, **settings)
    shuffled = list(items)
    random.Random(3).shuffle(shuffled)
    second = run(shuffled, **settings)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    # The twin answered every item as the reference did: paired by item, every difference is 0
    # (paired by position in the shuffled list, they would not be).
    twins = [d for d in second["differences"] if d["arm"] == "twin"]
    assert len(twins) == 6 and all(d["sd"] == 0 and d["diff"] == 0 for d in twins)


def test_seeds_are_strata_so_a_seed_effect_is_not_noise() -> None:
    # Seed 0: the reference fails every item and the arm gets all right; seed 1: both get all
    # right. Within each seed the differences do not vary, so resampling within seeds gives no
    # spread, where resampling the pooled items would mix the seeds and widen the interval.
    items = (
        outcomes("ref", [False] * 20, seed=0)
        + outcomes("arm", [True] * 20, seed=0)
        + outcomes("ref", [True] * 20, seed=1)
        + outcomes("arm", [True] * 20, seed=1)
    )
    result = run(items, seeds=[0, 1])
    for task in ("t1", "all"):
        row = diff_row(result, task=task)
        assert row["diff"] == pytest.approx(0.5) and row["ci"] == pytest.approx([0.5, 0.5])
    unstratified = bootstrap_ci([1.0] * 20 + [0.0] * 20, seed=0)
    assert unstratified[0] < 0.4 and unstratified[1] > 0.6
    ref_macro = next(m for m in result["macro"] if m["arm"] == "ref")
    assert ref_macro["accuracy"] == pytest.approx(0.5) and ref_macro["ci"] == pytest.approx(
        [0.5, 0.5]
    )


def test_holm_matches_a_hand_computation() -> None:
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max(0.06, 0.04).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []
    with pytest.raises(DataError):
        holm([1.5])


def test_compare_applies_holm_over_the_whole_family() -> None:
    items = _design()
    result = run(items, arms=["ref", "arm", "twin"], tasks=["t1", "t2"], seeds=[0, 1])
    rows = result["differences"]
    # 2 arms × 2 settings × (2 tasks + pooled)
    assert len(rows) == 12
    assert [r["p_holm"] for r in rows] == pytest.approx(holm([r["p"] for r in rows]))
    assert any(r["p_holm"] > r["p"] for r in rows)
    assert any("12 differences" in n and "family-wise" in n for n in result["notes"])


def test_mde_and_items_needed_match_the_formula_by_hand() -> None:
    # Paired differences 1, 1, 0, 0: mean 0.5, sd = √(1/3) = 0.57735.
    row = diff_row(run(outcomes("ref", [0, 0, 1, 0]) + outcomes("arm", [1, 1, 1, 0])))
    assert row["diff"] == pytest.approx(0.5) and row["sd"] == pytest.approx(0.57735, abs=1e-5)
    assert row["mde"] == pytest.approx(2.801585 * 0.57735 / 2, rel=1e-5)  # 0.80875
    assert row["n_needed"] == 11  # ⌈(2.801585 · 0.57735 / 0.5)²⌉ = ⌈10.465⌉
    assert min_detectable_effect(0.57735, 4) == pytest.approx(0.80875, abs=1e-4)
    assert items_needed(0.0, 1.0) is None


def test_macro_is_the_mean_of_task_accuracies_not_the_pooled_mean() -> None:
    items = outcomes("ref", [i < 8 for i in range(10)], task="t1") + outcomes(
        "ref", [i < 6 for i in range(30)], task="t2"
    )
    result = compare(items, [], arms=["ref"], tasks=["t1", "t2"], seeds=[0], reference="ref")
    (macro,) = result["macro"]
    assert macro["accuracy"] == pytest.approx((0.8 + 0.2) / 2)  # not 14/40 = 0.35
    assert macro["n"] == 40 and macro["n_tasks"] == 2
    assert macro["ci"][0] < 0.5 < macro["ci"][1]
    cell = next(c for c in result["cells"] if c["task"] == "t1")
    assert cell["n"] == 10 and cell["accuracy"] == pytest.approx(0.8)
    assert cell["ci"] == pytest.approx([0.44390, 0.97479], abs=1e-5)  # Clopper–Pearson 8/10
    assert result["differences"] == []


def test_result_round_trips_through_json() -> None:
    costs = [CostRow(None, "draft", 0, None, 12.5, 100, 400, 900.0, None)]
    items = outcomes("ref", [1, 0, 1]) + outcomes("arm", [1, 1, 1])
    result = run(items, costs, seeds=[0, 7])  # seed 7 has no items: null accuracies
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    for key in ("arms", "tasks", "seeds", "cells", "macro", "differences", "cost", "notes"):
        assert key in result
    empty = next(c for c in result["cells"] if c["seed"] == 7)
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["ci"] is None
    assert any("no items" in n for n in result["notes"])
    assert any("fewer than 10 items" in n for n in result["notes"])


def test_unpaired_items_are_dropped_and_noted() -> None:
    # The reference has items 0–9, the arm 1–11: items 0, 10 and 11 have no partner.
    items = outcomes("ref", [True] * 10) + outcomes("arm", [True] * 11, start=1)
    result = run(items)
    assert diff_row(result)["n"] == 9
    assert any(
        "3 item result(s) without a partner" in n and "3 for arm vs ref" in n
        for n in result["notes"]
    )


def test_costs_sum_per_arm_and_stage_with_shared_steps_apart() -> None:
    costs = [
        CostRow(None, "draft", 0, "t1", 10.0, 100, 50, 800.0, None),
        CostRow(None, "draft", 1, "t1", 5.0, 20, 30, 1200.0, None),
        CostRow("arm", "distill", 0, "t1", 3.0, 0, 700, 500.0, 2.0),
        CostRow("arm", "align", 0, "t1", 1.0, 0, 10, 400.0, None),
        CostRow("arm", "distill", 1, "t2", 4.0, 0, 300, 600.0, None),
        CostRow("other", "distill", 0, "t1", 99.0),
    ]
    result = run(outcomes("ref", [1]) + outcomes("arm", [1]), costs)
    cost = {(c["arm"], c["stage"]): c for c in result["cost"]}
    assert list(cost) == [("shared", "draft"), ("arm", "align"), ("arm", "distill")]
    draft = cost[("shared", "draft")]
    assert (draft["seconds"], draft["tokens_generated"], draft["tokens_scored"]) == (15.0, 120, 80)
    assert (
        draft["tokens"] == 200 and draft["peak_rss_mb"] == 1200.0 and draft["gpu_seconds"] is None
    )
    distill = cost[("arm", "distill")]
    assert distill["seconds"] == 7.0 and distill["tokens"] == 1000 and distill["gpu_seconds"] == 2.0
    assert any("1 cost row(s)" in n for n in result["notes"])


@pytest.mark.parametrize(
    ("items", "settings", "error", "match"),
    [
        ([], {}, DataError, "No item results"),
        (outcomes("ref", [1]), {"arms": ["ref", "arm", "ref"]}, ConfigError, "Name each arm once"),
        (outcomes("arm", [1]), {}, DataError, "reference arm 'ref' has no item results"),
        (outcomes("ref", [1]), {"reference": "gold"}, ConfigError, "'gold' is not among"),
        (outcomes("ref", [1, 1]) + outcomes("ref", [0]), {}, DataError, "appears twice"),
        (outcomes("x", [1], task="t9"), {}, DataError, "None of the 1 item results"),
        (outcomes("ref", [1]), {"alpha": 1.5}, ConfigError, "alpha"),
    ],
)
def test_nonsense_is_refused_with_what_to_fix(
    items: list[Item], settings: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        run(items, **settings)


def test_same_seed_same_result_other_seed_other_intervals() -> None:
    items = _design()
    settings = {"arms": ["ref", "arm"], "tasks": ["t1", "t2"], "seeds": [0, 1]}
    a, b = run(items, seed=1, **settings), run(items, seed=1, **settings)
    assert a == b
    c = run(items, seed=2, **settings)
    assert [d["ci"] for d in c["differences"]] != [d["ci"] for d in a["differences"]]
    assert [d["diff"] for d in c["differences"]] == [d["diff"] for d in a["differences"]]


def test_forest_plot_one_marker_per_difference_and_a_zero_line() -> None:
    items = _design()
    result = run(items, arms=["ref", "arm", "twin"], tasks=["t1", "t2"], seeds=[0, 1])
    fig = charts.forest_plot(result["differences"], "ref")
    assert sum(len(t.x) for t in fig.data) == len(result["differences"]) == 12
    assert [t.name for t in fig.data] == ["loglik · 0-shot", "cot · 3-shot"]
    zero = [s for s in fig.layout.shapes if s.x0 == s.x1 == 0]
    assert len(zero) == 1
    assert "ref" in fig.layout.title.text
    # The pooled rows sit below every per-task row, in bold.
    labels = dict(zip(fig.layout.yaxis.ticktext, fig.layout.yaxis.tickvals, strict=True))
    pooled = [y for text, y in labels.items() if text.startswith("<b>")]
    tasks = [y for text, y in labels.items() if not text.startswith("<b>")]
    assert len(pooled) == 2 and len(tasks) == 4 and max(pooled) < min(tasks)
    first = fig.data[0]
    i = list(first.x).index(diff_row(result, task="t1")["diff"])
    row = diff_row(result, task="t1")
    assert first.error_x.array[i] == pytest.approx(row["ci"][1] - row["diff"])
    assert first.error_x.arrayminus[i] == pytest.approx(row["diff"] - row["ci"][0])


def test_forest_plot_without_differences_says_why() -> None:
    fig = charts.forest_plot([], "original")
    assert not fig.data and "original" in fig.layout.annotations[0].text


def test_markdown_shows_every_arm_and_task() -> None:
    items = _design()
    costs = [CostRow(None, "draft", 0, None, 12.5, 100, 400, 900.0, None)]
    result = run(items, costs, arms=["ref", "arm", "twin"], tasks=["t1", "t2"], seeds=[0, 1])
    text = markdown(result)
    for name in ("ref", "arm", "twin", "t1", "t2", "**all**", "**macro**"):
        assert name in text
    assert "### Accuracy: loglik, 0-shot" in text and "### Accuracy: cot, 3-shot" in text
    assert "| arm | task | mode | shots | diff [CI] | p | p_holm | n | MDE |" in text
    assert "| shared | draft | 12.5 | 500 |" in text
    # One row per task plus the macro row, per setting; one per difference; one per cost row.
    table_rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table_rows) == 2 * (1 + 2 + 1) + (1 + 12) + (1 + 1)


# The statistics helpers compare builds on --------------------------------------------------


def test_sign_flip_p_values_match_exact_enumeration() -> None:
    # Five equal wins: of the 32 sign patterns, only all-plus and all-minus are as extreme.
    assert paired_permutation_pvalue([1, 1, 1, 1, 1, 0], n=20000) == pytest.approx(
        2 / 32, abs=0.006
    )
    # Unequal sizes 0.5, 1.0, −0.2, 0.3 (sum 1.6): the patterns with |sum| ≥ 1.6 are all-plus
    # (2.0) and only the 0.2 negated (1.6), and their mirrors: 4 of 16.
    assert paired_permutation_pvalue([0.5, 1.0, -0.2, 0.3], n=20000) == pytest.approx(
        0.25, abs=0.015
    )
    assert paired_permutation_pvalue([0, 0, 0]) == 1.0
    # Equal sizes are counted exactly (no Monte-Carlo floor): 2 of 2**40 patterns.
    assert paired_permutation_pvalue([1] * 40, n=999) == pytest.approx(2 / 2**40)
    # Unequal sizes are sampled, with the +1 floor.
    assert paired_permutation_pvalue([1.0 + k / 100 for k in range(40)], n=999) == pytest.approx(
        1 / 1000
    )


def test_stratified_bootstrap_weights_and_degenerate_strata() -> None:
    # Resampling [0, 1] gives means 0, ½, 1 with chance ¼, ½, ¼: the 95% interval is [0, 1].
    assert stratified_bootstrap_ci([[0, 1]], [1.0]) == pytest.approx((0.5, 0.0, 1.0))
    assert stratified_bootstrap_ci([[1, 1], [0, 0, 0]], [0.5, 0.5]) == (0.5, 0.5, 0.5)
    est, lo, hi = stratified_bootstrap_ci([[0, 1] * 20, [1] * 10], [0.8, 0.2], seed=4)
    assert est == pytest.approx(0.8 * 0.5 + 0.2) and lo < est < hi
    with pytest.raises(DataError, match="one weight per stratum"):
        stratified_bootstrap_ci([[1]], [0.5, 0.5])


def test_clopper_pearson_matches_the_exact_binomial_interval() -> None:
    ks = [0, 1, 3, 5, 0, 17, 40]
    ns = [0, 1, 5, 5, 12, 40, 40]
    lows, highs = clopper_pearson(ks, ns)
    for k, n, lo, hi in zip(ks, ns, lows, highs, strict=True):
        assert (lo, hi) == pytest.approx(binomial_ci(k, n), abs=1e-9)


def test_arms_that_never_disagree_have_no_detectable_effect_figure() -> None:
    row = diff_row(run(outcomes("ref", [0, 1, 1, 0]) + outcomes("arm", [0, 1, 1, 0])))
    assert row["diff"] == 0 and row["sd"] == 0
    assert row["mde"] is None and row["n_needed"] is None


def test_mcnemar_planning_matches_connor_by_hand() -> None:
    from teachlab.errors import DataError
    from teachlab.stats import mcnemar_items_needed

    # δ = 0.05, π_d = 0.20: ((1.959964·√0.2 + 0.841621·√0.1975) / 0.05)² = 625.5 → 626.
    assert mcnemar_items_needed(0.05, 0.20) == 626
    assert mcnemar_items_needed(-0.05, 0.20) == 626
    # Fewer disagreements need fewer items for the same gain (each is more telling).
    assert mcnemar_items_needed(0.05, 0.10) < mcnemar_items_needed(0.05, 0.20)
    with pytest.raises(DataError, match="disagree"):
        mcnemar_items_needed(0.3, 0.2)
