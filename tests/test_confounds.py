"""The Progress page's confound panel: the answer labels of the training pairs' chosen and
rejected sides, of the drafts before and after alignment, and rationale length, on hand-made
rows with hand-counted figures, and on the seeded study the browser tests use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
from builders import draft, pair, rationale, round_, study
from seeding import seed_study

from pages.progress import confound_md, figures
from teachlab import charts, review, views
from teachlab.errors import NotFoundError

HASH = "abcdef1234567890"


def populate(config: dict[str, Any] | None = None) -> dict[str, int]:
    """Two rounds of a yes/no task: round 0 with drafts, tailored drafts and pairs of every
    status; round 1 drafted by round 0's aligned teacher, no pairs yet."""
    c = study("c", task_ref="file:x", config=config or {})
    r0, r1 = round_(c, 0, status="done"), round_(c, 1)
    q1 = draft(r0, input="2 even?", target="yes")
    q2 = draft(r0, input="3 even?", target="no", prefill="<Question_4><input>")
    draft(r0, status="rejected")
    tq = draft(r0, phase="tailored", target="yes", adapter_hash=HASH)
    r1q = draft(r1, target="yes", adapter_hash=HASH)
    ra = rationale(q1, "so <ans>yes</ans>", "yes")  # 2 words
    rb = rationale(q1, "it is <ans>no</ans>", "no")  # 3
    rc = rationale(q2, "clearly then <ans>yes</ans>", "yes")  # 3
    re_ = rationale(q2, "no idea")  # 2, no label
    rationale(q2, "a <ans>yes", "yes", status="duplicate")  # left out
    rationale(tq, "a b c <ans>yes</ans>", "yes", adapter_hash=HASH)  # 4 words
    rationale(tq, "a b c d e <ans>yes</ans>", "yes", adapter_hash=HASH)  # 6
    rationale(tq, "a b c d e f g <ans>no</ans>", "no", adapter_hash=HASH)  # 8
    rationale(r1q, "a b c d <ans>yes</ans>", "yes", adapter_hash=HASH)
    pairs = {
        "approved": pair(r0, ra, rb, status="approved"),
        "proposed": pair(r0, rc, re_),  # trains only when unreviewed pairs do
        "rejected": pair(r0, rb, ra, status="rejected"),  # never trains
        "question": pair(r0, q1, q2, status="overridden", chosen="q1 text", rejected="q2 text"),
        # A person changed the chosen answer: the text, not the draft, is what DPO sees.
        "edited": pair(r0, ra, rb, status="edited", chosen="so <ans>no</ans>"),
        "edited_q": pair(
            r0,
            q2,
            q1,
            status="edited",
            chosen="Is 5 odd?</input><target>maybe</target></Question_4>",
            rejected="garbled",  # unreadable: the draft's own label stands
        ),
        # Imported from a file: no drafts behind it, the texts alone carry the labels.
        "imported": pair(
            r0, "so <ans>yes</ans>", "hmm <ans>maybe</ans>", status="approved", source="human"
        ),
    }
    ids = {"study": c.id, "r0": r0.id, "r1": r1.id}
    return ids | {f"pair_{k}": p.id for k, p in pairs.items()}  # type: ignore[misc]


def _mix(sides: list[dict[str, Any]], side: str, level: str | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in sides:
        if s["side"] == side and (level is None or s["level"] == level):
            out[s["label"]] = out.get(s["label"], 0) + 1
    return out


def test_training_set_is_what_dpo_trains_on_with_the_labels_it_sees(db_path: Path) -> None:
    ids = populate({"use_unreviewed": False})
    training = views.training_set(ids["study"])
    assert (training.use_unreviewed, training.label_balanced) == (False, False)
    trained = {p.id for p in review.training_pairs(ids["r0"], use_unreviewed=False)}
    assert {s["pair"] for s in training.sides} == trained
    assert trained == {ids[f"pair_{k}"] for k in ("approved", "question", "edited", "edited_q")} | {
        ids["pair_imported"]
    }
    assert all(s["round"] == 0 for s in training.sides)
    assert _mix(training.sides, "chosen") == {"yes": 3, "no": 1, "maybe": 1}
    assert _mix(training.sides, "rejected") == {"no": 3, "yes": 1, "maybe": 1}
    assert _mix(training.sides, "chosen", "question") == {"yes": 1, "maybe": 1}
    edited_q = [s for s in training.sides if s["pair"] == ids["pair_edited_q"]]
    assert [(s["side"], s["label"]) for s in edited_q] == [("chosen", "maybe"), ("rejected", "yes")]
    words = {(s["pair"], s["side"]): s["words"] for s in training.sides}
    assert words[(ids["pair_approved"], "chosen")] == 2
    assert words[(ids["pair_imported"], "rejected")] == 2
    assert words[(ids["pair_question"], "chosen")] is None  # length is a rationale's


def test_unreviewed_pairs_count_when_the_study_trains_on_them(db_path: Path) -> None:
    ids = populate({"use_unreviewed": True, "label_balanced": True})
    training = views.training_set(ids["study"])
    assert (training.use_unreviewed, training.label_balanced) == (True, True)
    proposed = [s for s in training.sides if s["pair"] == ids["pair_proposed"]]
    assert [(s["side"], s["label"]) for s in proposed] == [
        ("chosen", "yes"),
        ("rejected", "(none)"),
    ]
    assert ids["pair_rejected"] not in {s["pair"] for s in training.sides}
    assert len(training.sides) == 2 * 6


def test_draft_mix_rows_split_by_phase_with_the_teacher_that_wrote_them(db_path: Path) -> None:
    ids = populate()
    rows = views.draft_mix_rows(ids["study"])
    assert len(rows) == 12  # the rejected question and the duplicate rationale are left out
    got = [(r["round"], r["phase"], r["kind"], r["label"], r["words"]) for r in rows]
    assert got[:3] == [
        (0, "draft", "question", "yes", None),
        (0, "draft", "question", "no", None),
        (0, "tailored", "question", "yes", None),
    ]
    rationales = [g for g in got if g[2] == "rationale"]
    assert [(g[0], g[1], g[3], g[4]) for g in rationales] == [
        (0, "draft", "yes", 2),
        (0, "draft", "no", 3),
        (0, "draft", "yes", 3),
        (0, "draft", "(none)", 2),
        (0, "tailored", "yes", 4),
        (0, "tailored", "yes", 6),
        (0, "tailored", "no", 8),
        (1, "draft", "yes", 5),
    ]
    teachers = {(r["round"], r["phase"]): r["teacher"] for r in rows}
    # Round 1 drafts come from round 0's aligned teacher: the same adapter, the same tag.
    assert teachers == {
        (0, "draft"): "base",
        (0, "tailored"): "aligned · abcdef12",
        (1, "draft"): "aligned · abcdef12",
    }


def test_confound_summary_figures_per_round(db_path: Path) -> None:
    ids = populate({"use_unreviewed": False})
    training = views.training_set(ids["study"])
    first, second = views.confound_summary(training.sides, views.draft_mix_rows(ids["study"]))
    assert first == {
        "round": 0,
        "pairs": 5,
        "label": "yes",
        "chosen_share": pytest.approx(3 / 5),
        "rejected_share": pytest.approx(1 / 5),
        # rationale pairs: approved (2 vs 3 words), edited (2 vs 3), imported (2 vs 2)
        "chosen_words": pytest.approx(2.0),
        "rejected_words": pytest.approx(8 / 3),
        "draft_share": pytest.approx(2 / 4),  # yes, no, yes, (none)
        "draft_words": pytest.approx(10 / 4),
        "draft_teacher": "base",
        "tailored_share": pytest.approx(2 / 3),
        "tailored_words": pytest.approx(6.0),
        "tailored_teacher": "aligned · abcdef12",
    }
    assert second == {
        "round": 1,
        "pairs": 0,
        "label": "yes",  # no pairs: the drafts' commonest answer
        "chosen_share": None,
        "rejected_share": None,
        "chosen_words": None,
        "rejected_words": None,
        "draft_share": 1.0,
        "draft_words": 5.0,
        "draft_teacher": "aligned · abcdef12",
        "tailored_share": None,
        "tailored_words": None,
        "tailored_teacher": None,
    }
    assert views.confound_summary([], []) == []


def test_confound_markdown_says_what_was_counted(db_path: Path) -> None:
    ids = populate({"use_unreviewed": False})
    training = views.training_set(ids["study"])
    md = confound_md(
        training, views.confound_summary(training.sides, views.draft_mix_rows(ids["study"]))
    )
    assert "not the unreviewed automatic ones" in md and "pairing is **off**" in md
    assert (
        "- Round 0 · 5 training pairs: chosen 60% ‘yes’ vs rejected 20%; rationales answering "
        "‘yes’: 50% of drafts (base) → 67% of tailored (aligned · abcdef12); rationale length "
        "in words: 2 drafts → 6 tailored, chosen 2 vs rejected 3"
    ) in md
    assert (
        "- Round 1 · 0 training pairs: rationales answering ‘yes’: 100% of drafts "
        "(aligned · abcdef12) (none tailored yet); rationale length in words: 5 drafts "
        "(none tailored yet)"
    ) in md
    empty = confound_md(views.TrainingSet(True, True, []), [])
    assert "plus the unreviewed automatic ones" in empty and "No pairs or drafts yet" in empty


def test_labels_are_escaped_in_the_summary(db_path: Path) -> None:
    line = confound_md(
        views.TrainingSet(True, False, []),
        views.confound_summary(
            [{"round": 0, "level": "rationale", "side": "chosen", "label": "<b>x</b>", "words": 1}],
            [],
        ),
    )
    assert "<b>" not in line and "&lt;b&gt;x&lt;/b&gt;" in line


def test_missing_study_is_a_clear_error(db_path: Path) -> None:
    with pytest.raises(NotFoundError, match="Studies page"):
        views.training_set(999)


# ---------------------------------------------------------------- charts on hand-made rows


def _no_data(fig: go.Figure) -> bool:
    return not fig.data and bool(fig.layout.annotations)


def _side(rnd: int, level: str, side: str, label: str) -> dict[str, Any]:
    return {"round": rnd, "level": level, "side": side, "label": label, "words": None}


def test_pair_label_mix_stacks_shares_of_chosen_and_rejected() -> None:
    rows = (
        [_side(0, "rationale", "chosen", "yes")] * 3
        + [_side(0, "rationale", "chosen", "no")]
        + [_side(0, "rationale", "rejected", "no")] * 4
        + [_side(1, "rationale", "chosen", "yes"), _side(1, "rationale", "rejected", "yes")]
        + [_side(0, "question", "chosen", "yes"), _side(0, "question", "rejected", "no")]
    )
    fig = charts.pair_label_mix(rows)
    assert [a.text for a in fig.layout.annotations] == [
        "question pairs (target)",
        "rationale pairs (answer)",
    ]
    traces = {(t.name, t.xaxis): t for t in fig.data}
    yes = traces[("yes", "x2")]
    assert [list(level) for level in yes.x] == [
        ["round 0", "round 0", "round 1", "round 1"],
        ["chosen", "rejected", "chosen", "rejected"],
    ]
    assert list(yes.y) == pytest.approx([0.75, 0.0, 1.0, 1.0])
    assert [list(c) for c in yes.customdata] == [[3, 4], [0, 4], [1, 1], [1, 1]]
    assert list(traces[("no", "x2")].y) == pytest.approx([0.25, 1.0, 0.0, 0.0])
    assert list(traces[("yes", "x")].y) == pytest.approx([1.0, 0.0])
    # One legend entry per label (commonest first, ties by name: 6 each), one colour per label
    # across both panels.
    assert [t.name for t in fig.data if t.showlegend] == ["no", "yes"]
    assert traces[("yes", "x")].marker.color == yes.marker.color
    assert fig.layout.barmode == "stack"
    empty = charts.pair_label_mix([])
    assert _no_data(empty) and "Review page" in empty.layout.annotations[0].text


def test_many_labels_keep_the_commonest_and_lump_the_rest() -> None:
    rows = [_side(0, "rationale", "chosen", f"d{i:02d}") for i in range(12)]
    rows += [_side(0, "rationale", "chosen", "d11")] * 2
    fig = charts.pair_label_mix(rows)
    names = [t.name for t in fig.data]
    assert len(names) == charts.MAX_LABELS + 1 and names[0] == "d11"
    assert names[-1] == charts.OTHER
    other = fig.data[-1]
    assert list(other.customdata[0]) == [12 - charts.MAX_LABELS, 14]
    # Nine labels fit: the ninth is drawn, not lumped alone.
    nine = charts.pair_label_mix([_side(0, "rationale", "chosen", f"d{i}") for i in range(9)])
    assert charts.OTHER not in [t.name for t in nine.data]


def test_draft_label_mix_orders_draft_before_tailored_round_by_round() -> None:
    rows = [
        {"round": 1, "phase": "draft", "kind": "rationale", "label": "yes"},
        {"round": 0, "phase": "tailored", "kind": "rationale", "label": "yes"},
        {"round": 0, "phase": "draft", "kind": "rationale", "label": "no"},
        {"round": 0, "phase": "draft", "kind": "rationale", "label": "yes"},
    ]
    fig = charts.draft_label_mix(rows)
    yes = next(t for t in fig.data if t.name == "yes")
    assert [list(level) for level in yes.x] == [
        ["round 0", "round 0", "round 1"],
        ["draft", "tailored", "draft"],
    ]
    assert list(yes.y) == pytest.approx([0.5, 1.0, 1.0])
    assert [a.text for a in fig.layout.annotations] == ["rationales (answer)"]
    empty = charts.draft_label_mix([])
    assert _no_data(empty) and "regenerate stage" in empty.layout.annotations[0].text


def test_draft_lengths_box_per_phase_with_mean_and_sd() -> None:
    rows = [
        {"round": 0, "phase": "tailored", "kind": "rationale", "words": 8},
        {"round": 0, "phase": "draft", "kind": "rationale", "words": 2},
        {"round": 0, "phase": "draft", "kind": "rationale", "words": 4},
        {"round": 10, "phase": "draft", "kind": "rationale", "words": 5},
        {"round": 2, "phase": "draft", "kind": "rationale", "words": 3},
        {"round": 0, "phase": "draft", "kind": "question", "words": None},
    ]
    fig = charts.draft_lengths(rows)
    draft, tailored = fig.data
    assert draft.name.startswith("drafts") and tailored.name.startswith("tailored")
    assert list(draft.x) == ["round 0", "round 0", "round 2", "round 10"]
    assert list(draft.y) == [2, 4, 3, 5] and list(tailored.y) == [8]
    assert draft.boxmean == "sd"
    assert list(fig.layout.xaxis.categoryarray) == ["round 0", "round 2", "round 10"]
    assert fig.layout.yaxis.title.text == "rationale length (words)"
    assert _no_data(charts.draft_lengths([{"round": 0, "phase": "draft", "kind": "question"}]))


# ---------------------------------------------------------------- the page and the seeded study


def test_progress_figures_carry_the_confound_panel(db_path: Path) -> None:
    ids = populate({"use_unreviewed": False})
    out = figures(ids["study"])
    assert len(out) == 10
    md, pair_mix, draft_mix, lengths = out[6:]
    assert "Round 0 · 5 training pairs" in md
    assert {t.name for t in pair_mix.data} == {"yes", "no", "maybe"}
    assert {t.name for t in draft_mix.data} == {"yes", "no", "(none)"}
    assert len(lengths.data) == 2
    blank = figures(None)
    assert len(blank) == 10 and blank[6] == "Select a study on the Studies page first."
    assert all(_no_data(f) for f in blank[7:])


def test_seeded_study_training_set_matches_the_align_stage(db_path: Path) -> None:
    seeded = seed_study(n_questions=3, n_rationales=3, finished_rounds=1)
    training = views.training_set(seeded.study)
    assert training.use_unreviewed  # the study default
    for index, round_id in enumerate(seeded.rounds):
        trained = review.training_pairs(round_id, use_unreviewed=True)
        mine = [s for s in training.sides if s["round"] == index]
        assert sorted({s["pair"] for s in mine}) == sorted(p.id for p in trained)
        assert len(mine) == 2 * len(trained)
    drafts = views.draft_mix_rows(seeded.study)
    tags = {(r["round"], r["phase"]): r["teacher"] for r in drafts}
    assert tags[(0, "draft")] == "base"
    assert tags[(0, "tailored")] == tags[(1, "draft")] != "base"
    assert (1, "tailored") not in tags  # the open round has not been regenerated yet
    summary = views.confound_summary(training.sides, drafts)
    assert [r["round"] for r in summary] == [0, 1]
    assert summary[0]["tailored_words"] > summary[0]["draft_words"]  # seeded as DPO does
