"""Each chart on small hand-made rows: the traces, values and lines it should draw (no Gradio)."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from teachlab import charts


def _no_data(fig: go.Figure) -> bool:
    return not fig.data and bool(fig.layout.annotations)


def test_score_histogram_draws_scores_and_the_baseline_line() -> None:
    fig = charts.score_histogram([0.25, 0.5, 0.5, 0.75], 0.4, "Rationale scores")
    assert isinstance(fig, go.Figure)
    (hist,) = fig.data
    assert hist.type == "histogram" and list(hist.x) == [0.25, 0.5, 0.5, 0.75]
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 0.4
    assert "zero-shot 0.40" in fig.layout.annotations[0].text
    assert fig.layout.title.text == "Rationale scores"


def test_score_histogram_without_baseline_or_scores() -> None:
    assert not charts.score_histogram([0.5], None, "q").layout.shapes
    empty = charts.score_histogram([], 0.4, "q")
    assert _no_data(empty) and "score stage" in empty.layout.annotations[0].text


def test_training_curves_one_panel_per_metric_one_line_per_run() -> None:
    rows = [
        {"run": 7, "kind": "align", "step": s, "name": n, "value": v}
        for s in (2, 1)
        for n, v in (("loss", 0.7 / s), ("rewards/margins", 0.3 * s))
    ] + [{"run": 8, "kind": "distill", "step": 1, "name": "loss", "value": 2.0}]
    fig = charts.training_curves(rows)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["loss", "reward margin"]
    loss_align = next(t for t in fig.data if t.name == "align #7" and t.xaxis == "x")
    assert list(loss_align.x) == [1, 2] and list(loss_align.y) == pytest.approx([0.7, 0.35])
    margin = next(t for t in fig.data if t.xaxis == "x2")
    assert list(margin.y) == pytest.approx([0.3, 0.6]) and margin.showlegend is False
    assert {t.name for t in fig.data} == {"align #7", "distill #8"}
    only_loss = charts.training_curves(rows, names=["loss", "absent"])
    assert [a.text for a in only_loss.layout.annotations] == ["loss"]
    assert _no_data(charts.training_curves([]))


def test_accuracy_by_round_has_asymmetric_error_bars() -> None:
    rows = [
        {
            "round": 1,
            "model": "student-after",
            "shots": 0,
            "accuracy": 0.5,
            "ci_low": 0.4,
            "ci_high": 0.7,
        },
        {
            "round": 0,
            "model": "student-after",
            "shots": 0,
            "accuracy": 0.3,
            "ci_low": 0.2,
            "ci_high": 0.35,
        },
        {
            "round": 0,
            "model": "student-before",
            "shots": 3,
            "accuracy": 0.2,
            "ci_low": None,
            "ci_high": None,
        },
    ]
    fig = charts.accuracy_by_round(rows)
    after = next(t for t in fig.data if t.name == "student-after · 0-shot")
    assert list(after.x) == [0, 1] and list(after.y) == [0.3, 0.5]
    assert list(after.error_y.array) == pytest.approx([0.05, 0.2])
    assert list(after.error_y.arrayminus) == pytest.approx([0.1, 0.1])
    before = next(t for t in fig.data if t.name == "student-before · 3-shot")
    assert list(before.error_y.array) == [0]
    assert _no_data(charts.accuracy_by_round([]))


def test_dpo_margins_one_line_per_align_run() -> None:
    rows = [
        {"run": 3, "round": 0, "step": 2, "value": 0.5},
        {"run": 3, "round": 0, "step": 1, "value": 0.1},
        {"run": 9, "round": 1, "step": 1, "value": 0.9},
    ]
    fig = charts.dpo_margins(rows)
    assert [t.name for t in fig.data] == ["round 0 (run #3)", "round 1 (run #9)"]
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == [0.1, 0.5]


def test_score_boxes_group_kinds_by_round() -> None:
    rows = [
        {"round": 0, "kind": "question", "score": 0.5},
        {"round": 1, "kind": "question", "score": 0.7},
        {"round": 0, "kind": "rationale", "score": 0.25},
    ]
    fig = charts.score_boxes(rows)
    assert [t.type for t in fig.data] == ["box", "box"]
    question = next(t for t in fig.data if t.name == "question")
    assert list(question.x) == ["round 0", "round 1"] and list(question.y) == [0.5, 0.7]
    assert fig.layout.boxmode == "group"


def test_pair_counts_stack_sources_and_statuses_per_round() -> None:
    rows = [
        {"round": 0, "source": "auto", "status": "proposed", "count": 4},
        {"round": 1, "source": "human", "status": "approved", "count": 2},
        {"round": 1, "source": "auto", "status": "proposed", "count": 1},
    ]
    fig = charts.pair_counts(rows)
    assert fig.layout.barmode == "stack"
    auto = next(t for t in fig.data if t.name == "auto · proposed")
    human = next(t for t in fig.data if t.name == "human · approved")
    assert list(auto.y) == [4, 1] and list(human.y) == [0, 2]


def test_pair_counts_colour_by_status_and_hatch_human_decisions() -> None:
    rows = [
        {"round": 0, "source": "human", "status": "rejected", "count": 3},
        {"round": 0, "source": "auto", "status": "approved", "count": 2},
        {"round": 0, "source": "human", "status": "approved", "count": 1},
        {"round": 0, "source": "auto", "status": "proposed", "count": 5},
    ]
    fig = charts.pair_counts(rows)
    by_name = {t.name: t for t in fig.data}
    assert by_name["human · rejected"].marker.color == "#e45756"  # red, never green
    assert by_name["auto · approved"].marker.color == by_name["human · approved"].marker.color
    assert by_name["human · approved"].marker.pattern.shape == "/"
    assert by_name["auto · approved"].marker.pattern.shape == ""
    # Stacked approved at the bottom, then proposed, then rejected.
    assert [t.name.split(" · ")[1] for t in fig.data] == [
        "approved",
        "approved",
        "proposed",
        "rejected",
    ]


def test_stage_times_sum_minutes_per_round_and_kind() -> None:
    rows = [
        {"round": 0, "kind": "draft", "seconds": 120.0},
        {"round": 0, "kind": "draft", "seconds": 60.0},
        {"round": 0, "kind": "align", "seconds": 600.0},
        {"round": 1, "kind": "draft", "seconds": 30.0},
        {"round": 1, "kind": "score", "seconds": None},
    ]
    fig = charts.stage_times(rows)
    r0 = next(t for t in fig.data if t.name == "round 0")
    assert list(r0.x) == ["draft", "align"] and list(r0.y) == pytest.approx([3.0, 10.0])
    r1 = next(t for t in fig.data if t.name == "round 1")
    assert list(r1.y) == pytest.approx([0.5, 0.0])
    assert _no_data(charts.stage_times([{"round": 0, "kind": "x", "seconds": None}]))
