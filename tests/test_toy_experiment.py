"""The toy experiment's analysis (experiments/toy_report.py) on hand-made per-draft records."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from experiments.toy_report import (
    COLUMNS,
    DraftRecord,
    block,
    difference,
    findings,
    identical,
    label_mix,
    markdown_table,
    report,
    summarize,
    table_rows,
)


def rec(teacher: str, acc: float | None, margin: float | None, **kw: Any) -> DraftRecord:
    fields: dict[str, Any] = {
        "seed": 0,
        "teacher": teacher,
        "key": "q:0:0/expert",
        "text": "t",
        "parsed": True,
        "label": "plausible",
        "words": 10,
        "accuracy": acc,
        "margin": margin,
    }
    fields.update(kw)
    return DraftRecord(**fields)


def entry(seed: int, records: list[DraftRecord], base_acc: float = 0.5) -> dict[str, Any]:
    return {
        "seed": seed,
        "finished": "2025-01-01T00:00:00+00:00",
        "seconds": {"total": 600.0},
        "git_revision": "abc",
        "alignment": {
            "pairs": 3,
            "pair_labels": {"chosen": {"plausible": 3}},
            "steps": 4,
            "metrics": {"loss": 0.5},
        },
        "questions": {"original": {"rows": 5, "parsed": 4}, "aligned": {"rows": 4, "parsed": 4}},
        "baseline": {"accuracy": base_acc, "margin": -0.2, "n": 4},
        "errors": {},
        "drafts": [asdict(r) for r in records],
    }


def test_label_mix_normalises_and_counts_missing_answers() -> None:
    mix = label_mix(["Plausible", " plausible ", "implausible", None])
    assert mix == {"plausible": 0.5, "(no answer)": 0.25, "implausible": 0.25}
    assert list(mix) == ["plausible", "(no answer)", "implausible"]  # largest first, then by name
    assert label_mix([]) == {}


def test_summarize_counts_parse_rates_lengths_and_means() -> None:
    records = [
        rec("original", 0.5, 0.1, words=10),
        rec("original", 1.0, 0.3, words=20, label="implausible"),
        rec("original", None, None, parsed=False, label=None, words=0),
        rec("original", 0.0, 0.0, label=None, words=4, parsed=True),
        rec("aligned", 0.0, -1.0),
    ]
    s = summarize("original", records, (6, 3))
    assert (s.questions, s.questions_parsed) == (6, 3)
    # Four generated, two with an <ans> answer, three with text (scored).
    assert (s.rationales, s.rationales_answered, s.scored) == (4, 2, 3)
    assert s.accuracy == pytest.approx(0.5)
    assert s.margin == pytest.approx(0.4 / 3)
    assert s.words == pytest.approx(34 / 3)  # scored rationales only
    assert s.label_mix == pytest.approx(
        {"(no answer)": 1 / 3, "implausible": 1 / 3, "plausible": 1 / 3}
    )


def test_identical_matches_drafts_by_seed_and_request() -> None:
    records = [
        rec("original", 0.5, 0.0, key="a", text="x"),
        rec("aligned", 0.5, 0.0, key="a", text="x"),  # same request, same text
        rec("original", 0.5, 0.0, key="b", text="y"),
        rec("aligned", 0.5, 0.0, key="b", text="z"),  # same request, new text
        rec("aligned", 0.5, 0.0, key="c", text="x"),  # the original never answered "c"
        rec("aligned", 0.5, 0.0, key="a", text="x", seed=1),  # another seed
    ]
    assert identical(records) == (1, 2)


def test_difference_is_aligned_minus_original_with_a_bracketing_ci() -> None:
    aligned = [0.6, 0.7, 0.8, 0.7, 0.65, 0.75]
    original = [0.1, 0.2, 0.15, 0.2, 0.1, 0.25]
    d = difference(aligned, original, n_resamples=500, n_permutations=2000)
    assert d is not None
    assert d.value == pytest.approx(0.7 - 0.1666667, abs=1e-6)
    assert d.low < d.value < d.high
    assert d.low > 0  # every aligned draft beats every original one
    assert d.p < 0.01
    same = difference([0.5, 0.4, 0.6], [0.6, 0.4, 0.5], n_resamples=500, n_permutations=2000)
    assert same is not None and same.value == pytest.approx(0.0)
    assert same.low < 0 < same.high and same.p > 0.5
    assert difference([], original) is None
    assert difference([0.5], original) is None  # one draft: nothing to resample


def test_block_pools_seeds_and_weights_the_baseline_by_items() -> None:
    e0 = entry(0, [rec("original", 0.5, 0.0), rec("aligned", 1.0, 0.5)], base_acc=0.5)
    e1 = entry(1, [rec("original", 0.0, -0.5, seed=1), rec("aligned", 0.5, 0.0, seed=1)], 0.25)
    assert block("seed 0", [e0], 200, 200).accuracy is None  # one draft per teacher
    pooled = block("pooled", [e0, e1], 200, 200)
    assert pooled.summaries["original"].scored == 2
    assert pooled.summaries["original"].questions == 10
    assert pooled.summaries["aligned"].accuracy == pytest.approx(0.75)
    assert pooled.accuracy is not None and pooled.accuracy.value == pytest.approx(0.5)
    assert pooled.margin is not None and pooled.margin.value == pytest.approx(0.5)
    assert pooled.baseline == (pytest.approx(0.375), pytest.approx(-0.2))
    e1["baseline"]["accuracy"] = None  # a seed whose teacher never got to the score stage
    assert block("pooled", [e0, e1], 200, 200).baseline[0] == pytest.approx(0.5)


def test_table_has_teacher_difference_and_baseline_rows_per_block() -> None:
    e0 = entry(0, [rec("original", 0.5, 0.0), rec("original", 0.5, 0.0, label="implausible")])
    e0["drafts"] += [asdict(rec("aligned", 1.0, 0.5, words=14))] * 2
    rows = table_rows([block("seed 0", [e0], 200, 200)])
    teachers = ["original", "aligned", "aligned − original", "no demonstration"]
    assert [r[1] for r in rows] == teachers
    assert all(len(r) == len(COLUMNS) for r in rows)
    assert rows[0][2] == "4/5 (80%)" and rows[0][3] == "2/2 (100%)"  # questions; with <ans>
    assert rows[0][4] == "implausible 50% · plausible 50%"
    long = [rec("original", 0.5, 0.0, label="a sentence the teacher wrote instead of a label")]
    row = table_rows([block("seed 0", [entry(0, long * 2)], 200, 200)])[0]
    assert row[4] == "a sentence the teacher … 100%"  # 23 characters and an ellipsis
    assert rows[2][5] == "+4.0"  # words: 14 − 10
    assert rows[2][7].startswith("**+0.500**")
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1
    assert table.splitlines()[0].startswith("| seeds | teacher |")


def test_findings_report_the_sign_and_whether_the_ci_includes_zero() -> None:
    up = [rec("original", 0.2, -0.5), rec("original", 0.3, -0.4)]
    up += [rec("aligned", 0.2, -0.6), rec("aligned", 0.3, -0.7)]
    b = block("seed 0", [entry(0, up)], 200, 200)
    text = findings(b, [b])
    assert "margin is -0.200" in text
    assert "includes 0" in text or "excludes 0" in text
    assert "'plausible', 100%" in text
    assert "2 of 2 aligned rationales are word-for-word" in text  # all texts "t" in rec()
    assert "Per seed" not in text  # one seed: nothing to compare across seeds
    assert text.startswith("On seed 0 (2 aligned and 2 original drafts scored)")
    assert "carry an answer" not in text  # every draft answered
    mute = [rec(t, 0.5, 0.0, label=None) for t in ("original", "aligned") for _ in range(2)]
    quiet = block("seed 0", [entry(0, mute)], 200, 200)
    assert "Only 0 of 4 rationales carry an answer in `<ans>`" in findings(quiet, [quiet])
    none = block(
        "seed 0", [entry(0, [rec("original", 0.2, 0.0), rec("aligned", 0.1, 0.0)])], 200, 200
    )
    assert "cannot be compared" in findings(none, [none])


def test_report_carries_the_header_and_one_table() -> None:
    entries = [
        entry(0, [rec("original", 0.5, 0.0), rec("aligned", 1.0, 0.5)] * 2),
        entry(1, [rec("original", 0.5, 0.0, seed=1), rec("aligned", 0.0, -0.5, seed=1)] * 2),
    ]
    settings = {
        "task": "bigbench:sports_understanding",
        "teacher": "bundled:gemma-3-270m",
        "student": "bundled:smollm2-135m-instruct",
        "overrides": {"n_questions": 8},
        "config": {
            "scorer": "loglik",
            "pair_rule": "arte",
            "dpo_beta": 0.1,
            "dpo_lr": 5e-5,
            "lora_r": 8,
            "n_test": 4,
            "n_probe": 16,
        },
    }
    header = {"machine": "CPU X, 2 cores", "date": "2025-01-01", "revision": "def", "command": "c"}
    table, doc = report(settings, entries, header, 200, 200)
    assert table in doc
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]].count("| pooled") == 4
    for text in ("CPU X, 2 cores", "2025-01-01", "`c`", "Seeds**: 0, 1", "seed 0 ran at abc"):
        assert text in doc
    assert "## What this shows / does not show" in doc
    assert "Per seed the margin difference is +0.500 (seed 0), -0.500 (seed 1)" in doc
