"""The pair-building rules (SPEC section 3) against hand-computed expectations.

Scores are made up by hand; each expected list was worked out on paper from the rule.
"""

from __future__ import annotations

import math
import random

import pytest

from teachlab.errors import ConfigError, DataError
from teachlab.pairs import Candidate, PairSpec, build_pairs, label_mix

PROMPT = "<question prompt>"


def q(draft_id: int, score: float | None, label: str | None = None, group: str = PROMPT):
    return Candidate(draft_id, group, f"question {draft_id}", score, label, "question", group)


def r(draft_id: int, score: float | None, label: str | None = None, group: str = "q1"):
    plain = f"plain prompt of {group}"
    return Candidate(draft_id, plain, f"rationale {draft_id}", score, label, "rationale", group)


def ids(pairs: list[PairSpec]) -> list[tuple[int, int]]:
    return [(p.chosen_id, p.rejected_id) for p in pairs]


def ladder(n: int) -> list[Candidate]:
    """n question drafts with distinct scores, id 1 the best."""
    return [q(i, 1.0 - i / (n + 1)) for i in range(1, n + 1)]


# ---- arte, question level -------------------------------------------------------------


def test_arte_questions_pair_ith_best_with_ith_worst() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    pairs = build_pairs([q(i, s) for i, s in enumerate(scores, 1)], "arte")
    assert ids(pairs) == [(1, 8), (2, 7)]  # k = floor(8 * 0.25) = 2
    assert [p.margin for p in pairs] == pytest.approx([0.7, 0.5])
    first = pairs[0]
    assert (first.level, first.rule, first.prompt, first.rank) == ("question", "arte", PROMPT, 0)
    assert (first.chosen_text, first.rejected_text) == ("question 1", "question 8")
    assert (first.chosen_score, first.rejected_score) == (0.9, 0.2)


@pytest.mark.parametrize(
    ("n", "quantile", "expected"),
    [
        (1, 0.25, []),
        (2, 0.25, [(1, 2)]),  # floor(0.5) = 0, raised to one pair
        (3, 0.25, [(1, 3)]),
        (10, 0.25, [(1, 10), (2, 9)]),  # floor(2.5) = 2
        (12, 0.25, [(1, 12), (2, 11), (3, 10)]),  # exactly 3
        (4, 0.5, [(1, 4), (2, 3)]),  # halves: every draft is used once
        (10, 0.1, [(1, 10)]),  # floor(1.0000000000000002) and floor(0.9999…) both give 1
    ],
)
def test_arte_quantile_boundaries(n: int, quantile: float, expected: list) -> None:
    assert ids(build_pairs(ladder(n), "arte", quantile=quantile)) == expected


def test_arte_ties_at_the_boundary_make_no_pair() -> None:
    scores = [0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1]
    # Ranked by (score desc, id): top = [1, 2], bottom (worst first) = [8, 7]; (2, 7) is a tie.
    assert ids(build_pairs([q(i, s) for i, s in enumerate(scores, 1)], "arte")) == [(1, 8)]
    assert build_pairs([q(i, 0.5) for i in range(1, 9)], "arte") == []


def test_missing_and_nan_scores_never_pair() -> None:
    drafts = [q(1, 0.9), q(2, None), q(3, math.nan), q(4, 0.1)]
    assert ids(build_pairs(drafts, "arte")) == [(1, 4)]  # two scored drafts → one pair
    for rule in ("margin", "ranked"):
        assert all(2 not in p and 3 not in p for p in ids(build_pairs(drafts, rule)))
    assert build_pairs([q(1, None), q(2, None)], "ranked") == []


def test_question_pairs_stay_within_their_prompt_group() -> None:
    drafts = [
        q(1, 0.9, group="A"),
        q(2, 0.1, group="A"),
        q(3, 0.8, group="B"),
        q(4, 0.2, group="B"),
    ]
    pairs = build_pairs(drafts, "arte")
    assert ids(pairs) == [(1, 2), (3, 4)]
    assert [p.prompt for p in pairs] == ["A", "B"]


# ---- arte, rationale level ------------------------------------------------------------


def test_arte_rationales_best_vs_worst_per_question() -> None:
    drafts = [
        r(11, 0.5),
        r(12, 0.75),
        r(13, 0.25),
        r(14, 0.75),  # ties with 12 for best: the lower id wins
        r(21, 0.5, group="q2"),  # all tied: no pair
        r(22, 0.5, group="q2"),
        r(31, 1.0, group="q3"),  # alone: no pair
    ]
    pairs = build_pairs(drafts, "arte")
    assert ids(pairs) == [(12, 13)]
    assert pairs[0].margin == pytest.approx(0.5)
    assert pairs[0].prompt == "plain prompt of q1"  # prompt erasure: the plain prompt is used
    assert pairs[0].group == "q1"


def test_arte_mixes_both_levels_questions_first() -> None:
    drafts = [r(11, 0.75), r(12, 0.25), q(1, 0.6), q(2, 0.4)]
    pairs = build_pairs(drafts, "arte")
    assert [(p.level, p.chosen_id, p.rejected_id) for p in pairs] == [
        ("question", 1, 2),
        ("rationale", 11, 12),
    ]


# ---- margin (LbT) ---------------------------------------------------------------------

MARGIN_SCORES = [1.0, 0.7, 0.4, 0.4, 0.0]  # ids 1..5
# Gaps ≥ 0.3, largest first, then ids: (3, 4) is a tie; 0.7 - 0.4 is 0.2999… in floats.
MARGIN_ALL = [(1, 5), (2, 5), (1, 3), (1, 4), (3, 5), (4, 5), (1, 2), (2, 3), (2, 4)]


def test_margin_rule_keeps_gaps_of_at_least_m_largest_first_capped() -> None:
    drafts = [q(i, s) for i, s in enumerate(MARGIN_SCORES, 1)]
    assert ids(build_pairs(drafts, "margin", max_per_prompt=100)) == MARGIN_ALL
    assert ids(build_pairs(drafts, "margin")) == MARGIN_ALL[:8]  # default cap k = 8
    assert ids(build_pairs(drafts, "margin", max_per_prompt=3)) == MARGIN_ALL[:3]
    assert ids(build_pairs(drafts, "margin", min_margin=0.5)) == [(1, 5), (2, 5), (1, 3), (1, 4)]
    assert all(p.rank == 0 and p.rule == "margin" for p in build_pairs(drafts, "margin"))


def test_margin_cap_counts_per_group_and_zero_margin_still_skips_ties() -> None:
    drafts = [r(i, s, group="q1") for i, s in enumerate(MARGIN_SCORES, 1)]
    drafts += [r(10 + i, s, group="q2") for i, s in enumerate(MARGIN_SCORES, 1)]
    pairs = build_pairs(drafts, "margin", max_per_prompt=2)
    assert ids(pairs) == [(1, 5), (2, 5), (11, 15), (12, 15)]
    tied = build_pairs([r(1, 0.4), r(2, 0.4)], "margin", min_margin=0.0)
    assert tied == []


# ---- baseline -------------------------------------------------------------------------


def test_baseline_rule_chosen_above_rejected_below_ties_excluded() -> None:
    drafts = [q(i, s) for i, s in enumerate([0.8, 0.5, 0.5, 0.3, 0.2], 1)]
    pairs = build_pairs(drafts, "baseline", baseline=0.5)
    assert ids(pairs) == [(1, 5), (1, 4)]  # 2 and 3 equal the baseline
    # 0.1 + 0.2 is 0.30000000000000004: a 0.3 score must still count as a tie with it.
    drafts = [q(1, 0.3), q(2, 0.6), q(3, 0.0)]
    assert ids(build_pairs(drafts, "baseline", baseline=0.1 + 0.2)) == [(2, 3)]
    assert build_pairs([q(1, 0.9), q(2, 0.8)], "baseline", baseline=0.5) == []  # none below


def test_baseline_rule_needs_a_baseline_and_respects_the_cap() -> None:
    with pytest.raises(ConfigError, match="zero-shot"):
        build_pairs([q(1, 0.9), q(2, 0.1)], "baseline")
    drafts = [q(i, s) for i, s in enumerate([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], 1)]
    # 3 × 3 pairs by gap: (1,6) .8, (1,5) .7, (2,6) .7, then (1,4) .6 …
    assert ids(build_pairs(drafts, "baseline", baseline=0.5, max_per_prompt=3)) == [
        (1, 6),
        (1, 5),
        (2, 6),
    ]


# ---- ranked (Curry-DPO) ---------------------------------------------------------------


def test_ranked_rule_orders_easy_to_hard_with_curriculum_ranks() -> None:
    drafts = [q(i, s) for i, s in enumerate([0.9, 0.6, 0.6, 0.1], 1)]
    pairs = build_pairs(drafts, "ranked")
    # (2, 3) is a tie; gaps: (1,4) .8, (2,4) .5, (3,4) .5, (1,2) .3, (1,3) .3
    assert ids(pairs) == [(1, 4), (2, 4), (3, 4), (1, 2), (1, 3)]
    assert [p.rank for p in pairs] == [1, 2, 3, 4, 5]
    capped = build_pairs(drafts, "ranked", max_per_prompt=2)
    assert ids(capped) == [(1, 4), (2, 4)]


def test_ranked_ranks_restart_in_every_group() -> None:
    drafts = [r(1, 1.0), r(2, 0.5), r(3, 0.0), r(11, 0.75, group="q2"), r(12, 0.25, group="q2")]
    pairs = build_pairs(drafts, "ranked")
    assert [(p.group, p.chosen_id, p.rejected_id, p.rank) for p in pairs] == [
        ("q1", 1, 3, 1),
        ("q1", 1, 2, 2),
        ("q1", 2, 3, 3),
        ("q2", 11, 12, 1),
    ]


# ---- label-balanced -------------------------------------------------------------------

LABELLED = [
    (0.9, "A"),
    (0.8, "A"),
    (0.7, "B"),
    (0.6, "B"),
    (0.5, "A"),
    (0.4, "B"),
    (0.3, "A"),
    (0.2, "B"),
]


def labelled_questions() -> list[Candidate]:
    return [q(i, s, label) for i, (s, label) in enumerate(LABELLED, 1)]


def test_label_balanced_arte_questions_use_quantiles_within_each_label() -> None:
    plain = build_pairs(labelled_questions(), "arte")
    assert ids(plain) == [(1, 8), (2, 7)]  # (1, 8) pairs label A with B
    pairs = build_pairs(labelled_questions(), "arte", label_balanced=True)
    # A: [1 .9, 2 .8, 5 .5, 7 .3] → k = 1 → (1, 7); B: [3 .7, 4 .6, 6 .4, 8 .2] → (3, 8)
    assert ids(pairs) == [(1, 7), (3, 8)]
    assert all(p.chosen_label == p.rejected_label for p in pairs)
    assert {p.rule for p in pairs} == {"arte+label-balanced"}


def test_label_balanced_arte_rationales_best_vs_worst_per_answer() -> None:
    drafts = [r(11, 0.75, "A"), r(12, 0.25, "B"), r(13, 0.5, "A"), r(14, 0.0, "B")]
    assert ids(build_pairs(drafts, "arte")) == [(11, 14)]
    assert ids(build_pairs(drafts, "arte", label_balanced=True)) == [(11, 13), (12, 14)]


def test_label_balanced_margin_baseline_and_ranked() -> None:
    drafts = labelled_questions()
    # margin ≥ 0.3 within A: (1,7) .6, (2,7) .5, (1,5) .4, (2,5) .3; within B: (3,8) .5,
    # (4,8) .4, (3,6) .3; merged by gap, then ids; capped at 4.
    margin = build_pairs(drafts, "margin", label_balanced=True, max_per_prompt=4)
    assert ids(margin) == [(1, 7), (2, 7), (3, 8), (1, 5)]
    # baseline 0.55: A above [1, 2], below [5, 7]; B above [3, 4], below [6, 8]
    base = build_pairs(drafts, "baseline", baseline=0.55, label_balanced=True, max_per_prompt=3)
    assert ids(base) == [(1, 7), (2, 7), (3, 8)]
    ranked = build_pairs(drafts[:4], "ranked", label_balanced=True)  # A: 1, 2; B: 3, 4
    assert [(p.chosen_id, p.rejected_id, p.rank) for p in ranked] == [(1, 2, 1), (3, 4, 2)]
    for pairs in (margin, base, ranked):
        assert all(p.chosen_label == p.rejected_label for p in pairs)


def test_label_balanced_skips_unlabelled_drafts() -> None:
    drafts = [q(1, 0.9, None), q(2, 0.8, "A"), q(3, 0.1, None), q(4, 0.2, "A")]
    assert ids(build_pairs(drafts, "ranked", label_balanced=True)) == [(2, 4)]


# ---- validation, determinism, label mix -----------------------------------------------


def test_a_group_with_two_prompts_is_refused() -> None:
    drafts = [r(1, 0.9), Candidate(2, "strategy prompt", "x", 0.1, None, "rationale", "q1")]
    with pytest.raises(DataError, match="different prompts"):
        build_pairs(drafts, "arte")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rule": "best"}, ConfigError),
        ({"rule": "arte", "quantile": 0.6}, ConfigError),
        ({"rule": "arte", "quantile": 0.0}, ConfigError),
        ({"rule": "margin", "min_margin": -0.1}, ConfigError),
        ({"rule": "ranked", "max_per_prompt": 0}, ConfigError),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        build_pairs([q(1, 0.9), q(2, 0.1)], **kwargs)


def test_unknown_level_is_refused() -> None:
    with pytest.raises(DataError, match="level"):
        build_pairs([Candidate(1, "p", "t", 0.5, None, "answer", "g")], "arte")


@pytest.mark.parametrize("rule", ["arte", "margin", "baseline", "ranked"])
def test_output_does_not_depend_on_input_order(rule: str) -> None:
    drafts = labelled_questions() + [r(20 + i, s, label) for i, (s, label) in enumerate(LABELLED)]
    drafts += [q(40, 0.5), q(41, 0.5), r(42, 0.25)]  # ties with others
    expected = build_pairs(drafts, rule, baseline=0.45)
    assert expected
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(drafts)
        assert build_pairs(drafts, rule, baseline=0.45) == expected


def test_label_mix_counts_each_side() -> None:
    pairs = build_pairs(labelled_questions(), "arte")  # (1 A, 8 B), (2 A, 7 A)
    assert label_mix(pairs) == {
        "chosen": {"A": 2},
        "rejected": {"A": 1, "B": 1},
        "pairs": {"same_label": 1, "total": 2},
    }
    unlabelled = build_pairs([q(1, 0.9), q(2, 0.1)], "arte")
    assert label_mix(unlabelled)["chosen"] == {"(none)": 1}
    assert label_mix([]) == {"chosen": {}, "rejected": {}, "pairs": {"same_label": 0, "total": 0}}
