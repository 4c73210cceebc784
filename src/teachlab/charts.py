"""Charts as pure functions: plain rows in, a plotly Figure out (shown with ``gr.Plot``).

Rows are what ``teachlab.views`` returns; nothing here reads the database or knows Gradio,
so every chart is tested on hand-made rows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

Row = Mapping[str, Any]
METRIC_TITLES = {
    "loss": "loss",
    "rewards/margins": "reward margin",
    "rewards/accuracies": "reward accuracy",
    "mean_token_accuracy": "token accuracy",
}
# Label-mix charts: the commonest labels keep their own colour, the rest share one bar segment
# (a date task has a label per question, which no legend can list).
MAX_LABELS = 8
OTHER = "other labels"
LABEL_COLORS = qualitative.T10[:-1]  # the last one, grey, is OTHER's
OTHER_COLOR = qualitative.T10[-1]
PAIR_STATUS_COLORS = {"approved": "#54a24b", "proposed": "#4c78a8", "rejected": "#e45756"}
LEVEL_TITLES = {"question": "question pairs (target)", "rationale": "rationale pairs (answer)"}
KIND_TITLES = {"question": "questions (target)", "rationale": "rationales (answer)"}
PHASES = ("draft", "tailored")  # before alignment, after it
PHASE_NAMES = {"draft": "drafts (before alignment)", "tailored": "tailored (after alignment)"}


def _layout(fig: go.Figure, title: str, **kw: Any) -> go.Figure:
    fig.update_layout(
        title=title,
        template="plotly_white",
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        height=kw.pop("height", 320),
        **kw,
    )
    return fig


def empty_figure(title: str, message: str) -> go.Figure:
    """A blank chart that says why it is blank (no data yet, and what makes some)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=220)


def score_histogram(scores: Sequence[float], baseline: float | None, title: str) -> go.Figure:
    """Distribution of draft scores with the zero-shot baseline as a vertical line."""
    if not scores:
        return empty_figure(title, "No scores yet: run the score stage on the Runs page.")
    fig = go.Figure(
        go.Histogram(
            x=list(scores), name="drafts", marker_color="#4c78a8", xbins={"size": _bin_size(scores)}
        )
    )
    if baseline is not None:
        fig.add_vline(
            x=baseline,
            line_dash="dash",
            line_color="#e45756",
            annotation_text=f"zero-shot {baseline:.2f}",
            annotation_position="top",
        )
    fig.update_xaxes(title="probe accuracy with the draft as demonstration")
    fig.update_yaxes(title="drafts")
    return _layout(fig, title, bargap=0.05)


def _bin_size(values: Sequence[float]) -> float:
    # Scores are k/n accuracies in [0, 1]: 20 bins keep neighbouring values apart for n ≤ 20.
    span = max(values) - min(values)
    return max(span / 20, 0.05) if span > 0 else 0.05


def training_curves(rows: Iterable[Row], names: Sequence[str] | None = None) -> go.Figure:
    """One panel per metric (loss, reward margin…), one line per run; rows: run, kind, step,
    name, value."""
    rows = list(rows)
    present = list(dict.fromkeys(r["name"] for r in rows))
    names = [n for n in (names or present) if n in present]
    if not names:
        return empty_figure(
            "Training curves",
            "No training metrics yet: align and distil runs "
            "write loss and reward curves here as they train.",
        )
    fig = make_subplots(
        rows=1, cols=len(names), subplot_titles=[METRIC_TITLES.get(n, n) for n in names]
    )
    series: dict[tuple[str, int, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        series[(r["name"], r["run"], r.get("kind", ""))].append((r["step"], r["value"]))
    for (name, run, kind), points in series.items():
        if name not in names:
            continue
        points.sort()
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="lines+markers",
                name=f"{kind} #{run}".strip(),
                legendgroup=str(run),
                showlegend=names.index(name) == 0,
            ),
            row=1,
            col=names.index(name) + 1,
        )
    fig.update_xaxes(title="step")
    return _layout(fig, "Training curves")


def accuracy_by_round(rows: Iterable[Row]) -> go.Figure:
    """Student accuracy per round with its confidence interval; one series per model × shots.

    rows: round, model, shots, accuracy, ci_low, ci_high.
    """
    series: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        series[(r["model"], r["shots"])].append(r)
    if not series:
        return empty_figure(
            "Student accuracy",
            "No evaluations yet: the evaluate stage measures "
            "the student before and after distillation.",
        )
    fig = go.Figure()
    for (model, shots), items in sorted(series.items()):
        items = sorted(items, key=lambda r: r["round"])
        acc = [r["accuracy"] for r in items]
        high = [
            (r["ci_high"] - r["accuracy"]) if r.get("ci_high") is not None else 0 for r in items
        ]
        low = [(r["accuracy"] - r["ci_low"]) if r.get("ci_low") is not None else 0 for r in items]
        fig.add_trace(
            go.Scatter(
                x=[r["round"] for r in items],
                y=acc,
                mode="lines+markers",
                name=f"{model} · {shots}-shot",
                error_y={"type": "data", "array": high, "arrayminus": low, "visible": True},
            )
        )
    fig.update_xaxes(title="round", dtick=1)
    fig.update_yaxes(title="test accuracy", range=[0, 1])
    return _layout(fig, "Student accuracy per round (95% CI)")


def dpo_margins(rows: Iterable[Row]) -> go.Figure:
    """The teacher's DPO reward margin over training steps, one line per align run."""
    series: dict[tuple[Any, int], list[Row]] = defaultdict(list)
    for r in rows:
        series[(r.get("round"), r["run"])].append(r)
    if not series:
        return empty_figure("Teacher DPO reward margins", "No align runs yet.")
    fig = go.Figure()
    for (rnd, run), items in sorted(series.items(), key=lambda kv: kv[0][1]):
        items = sorted(items, key=lambda r: r["step"])
        fig.add_trace(
            go.Scatter(
                x=[r["step"] for r in items],
                y=[r["value"] for r in items],
                mode="lines+markers",
                name=f"round {rnd} (run #{run})",
            )
        )
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="reward margin (chosen − rejected)")
    return _layout(fig, "Teacher DPO reward margins")


def score_boxes(rows: Iterable[Row]) -> go.Figure:
    """Draft score distributions across rounds, questions and rationales side by side."""
    by_kind: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    if not by_kind:
        return empty_figure("Score distributions", "No scored drafts yet.")
    fig = go.Figure()
    for kind, items in sorted(by_kind.items()):
        fig.add_trace(
            go.Box(
                x=[f"round {r['round']}" for r in items],
                y=[r["score"] for r in items],
                name=kind,
                boxmean=True,
            )
        )
    fig.update_yaxes(title="score")
    return _layout(fig, "Score distributions across rounds", boxmode="group")


def pair_counts(rows: Iterable[Row]) -> go.Figure:
    """Pairs per round, stacked by source (auto | human) and status."""
    totals: dict[tuple[str, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    rounds: set[int] = set()
    for r in rows:
        totals[(r["source"], r["status"])][r["round"]] += r["count"]
        rounds.add(r["round"])
    if not totals:
        return empty_figure("Pairs", "No pairs yet: the pairs stage builds them from scores.")
    xs = sorted(rounds)
    fig = go.Figure()
    order = {status: i for i, status in enumerate(PAIR_STATUS_COLORS)}
    for (source, status), counts in sorted(
        totals.items(), key=lambda kv: (order.get(kv[0][1], len(order)), kv[0][0])
    ):
        fig.add_trace(
            go.Bar(
                x=[f"round {x}" for x in xs],
                y=[counts.get(x, 0) for x in xs],
                name=f"{source} · {status}",
                # The colour says the status (approved green, rejected red), the hatching
                # that a person decided.
                marker_color=PAIR_STATUS_COLORS.get(status, OTHER_COLOR),
                marker_pattern_shape="/" if source == "human" else "",
            )
        )
    fig.update_yaxes(title="pairs")
    return _layout(fig, "Human vs automatic pairs", barmode="stack")


def stage_times(rows: Iterable[Row]) -> go.Figure:
    """Minutes per stage, one bar group per round (summed over a stage's runs)."""
    minutes: dict[Any, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    kinds: list[str] = []
    for r in rows:
        if r.get("seconds") is None:
            continue
        minutes[r.get("round")][r["kind"]] += r["seconds"] / 60
        if r["kind"] not in kinds:
            kinds.append(r["kind"])
    if not minutes:
        return empty_figure("Time per stage", "No finished runs yet.")
    fig = go.Figure()
    for rnd, per_kind in sorted(minutes.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        fig.add_trace(go.Bar(x=kinds, y=[per_kind.get(k, 0.0) for k in kinds], name=f"round {rnd}"))
    fig.update_yaxes(title="minutes")
    return _layout(fig, "Time per stage", barmode="group")


def _kept_labels(labels: Iterable[str]) -> list[str]:
    """The labels drawn on their own, commonest first; one spare label is not lumped alone."""
    counts = Counter(labels)
    ranked = sorted(counts, key=lambda k: (-counts[k], k))
    return ranked if len(ranked) <= MAX_LABELS + 1 else ranked[:MAX_LABELS]


def _label_mix(
    rows: Sequence[Row], facet: str, titles: Mapping[str, str], inner: str, order: Sequence[str]
) -> go.Figure:
    """Stacked label shares, one bar per (round, ``inner`` value), one panel per ``facet`` value.

    Each bar sums to 1 over its labels; the hover gives the counts behind the shares.
    """
    kept = _kept_labels(r["label"] for r in rows)
    counts: dict[str, dict[tuple[int, str], Counter[str]]] = defaultdict(
        lambda: defaultdict(Counter)
    )
    for r in rows:
        label = r["label"] if r["label"] in kept else OTHER
        counts[r[facet]][(r["round"], r[inner])][label] += 1
    facets = [f for f in titles if f in counts] + sorted(f for f in counts if f not in titles)
    fig = make_subplots(
        rows=1,
        cols=len(facets),
        subplot_titles=[titles.get(f, f) for f in facets],
        shared_yaxes=True,
    )
    colors = {label: LABEL_COLORS[i % len(LABEL_COLORS)] for i, label in enumerate(kept)}
    colors[OTHER] = OTHER_COLOR
    shown: set[str] = set()
    for col, f in enumerate(facets, start=1):
        bars = sorted(counts[f], key=lambda b: (b[0], order.index(b[1]) if b[1] in order else 99))
        totals = [sum(counts[f][b].values()) for b in bars]
        for label in [*kept, OTHER]:
            n = [counts[f][b][label] for b in bars]
            if not any(n):
                continue
            fig.add_trace(
                go.Bar(
                    x=[[f"round {b[0]}" for b in bars], [b[1] for b in bars]],
                    y=[k / t for k, t in zip(n, totals, strict=True)],
                    customdata=[[k, t] for k, t in zip(n, totals, strict=True)],
                    hovertemplate="%{y:.0%} (%{customdata[0]} of %{customdata[1]})",
                    name=label,
                    legendgroup=label,
                    showlegend=label not in shown,
                    marker_color=colors[label],
                ),
                row=1,
                col=col,
            )
            shown.add(label)
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(title="share", col=1)
    return fig


def pair_label_mix(rows: Iterable[Row]) -> go.Figure:
    """Answer labels on the chosen and on the rejected side of the training pairs, per round.

    rows: round, level, side (chosen | rejected), label. A chosen side that is mostly one label
    while the rejected side is not is the pilot's warning sign: DPO learns "always answer X".
    """
    rows = list(rows)
    if not rows:
        return empty_figure(
            "Labels of the training pairs",
            "No pairs to train on yet: build pairs (pairs stage), then approve some on the "
            "Review page or let the study train on unreviewed ones.",
        )
    fig = _label_mix(rows, "level", LEVEL_TITLES, "side", ("chosen", "rejected"))
    return _layout(
        fig, "Labels of the training pairs: chosen vs rejected", barmode="stack", height=360
    )


def draft_label_mix(rows: Iterable[Row]) -> go.Figure:
    """Answer labels of the drafts before (draft) and after (tailored) alignment, per round.

    rows: round, phase (draft | tailored), kind, label. Round r + 1's drafts come from round r's
    aligned teacher, so reading the bars left to right follows the teacher round after round.
    """
    rows = list(rows)
    if not rows:
        return empty_figure(
            "Labels before vs after alignment",
            "No parsed drafts yet: the draft stage writes them, the regenerate stage writes "
            "the aligned teacher's.",
        )
    fig = _label_mix(rows, "kind", KIND_TITLES, "phase", PHASES)
    return _layout(
        fig, "Labels before (draft) vs after (tailored) alignment", barmode="stack", height=360
    )


def draft_lengths(rows: Iterable[Row]) -> go.Figure:
    """Rationale length in words before and after alignment per round (box, mean ± SD).

    rows: round, phase, kind, words; questions and rows without a length are left out. DPO is
    known to lengthen outputs whatever the preference was about.
    """
    by_phase: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.get("kind", "rationale") == "rationale" and r.get("words") is not None:
            by_phase[r["phase"]].append(r)
    if not by_phase:
        return empty_figure(
            "Rationale length", "No rationales yet: the draft and regenerate stages write them."
        )
    fig = go.Figure()
    for phase, items in sorted(
        by_phase.items(), key=lambda kv: PHASES.index(kv[0]) if kv[0] in PHASES else 99
    ):
        items = sorted(items, key=lambda r: r["round"])
        fig.add_trace(
            go.Box(
                x=[f"round {r['round']}" for r in items],
                y=[r["words"] for r in items],
                name=PHASE_NAMES.get(phase, phase),
                boxmean="sd",
            )
        )
    rounds = sorted({r["round"] for items in by_phase.values() for r in items})
    # Text categories would put "round 10" before "round 2", and a round with tailored drafts
    # only before the others.
    fig.update_xaxes(categoryorder="array", categoryarray=[f"round {r}" for r in rounds])
    fig.update_yaxes(title="rationale length (words)", rangemode="tozero")
    return _layout(fig, "Rationale length before (draft) vs after (tailored)", boxmode="group")


POOLED_TASK = "all"  # a difference row's task for all tasks pooled


def forest_plot(differences: Iterable[Row], reference: str) -> go.Figure:
    """Each arm's accuracy difference from ``reference`` with its CI: one row per arm × task,
    the pooled rows ("all", bold) at the bottom, one colour per mode × shots, a line at 0.

    rows: arm, task, mode, shots, diff, ci [low, high] (optional: n, p, p_holm), as
    ``teachlab.experiments.compare`` returns them.
    """
    rows = list(differences)
    title = f"Accuracy difference from {reference} (arm − {reference})"
    if not rows:
        return empty_figure(
            title,
            f"No paired differences yet: evaluate {reference} and another arm "
            "on the same test items.",
        )
    # Rows top to bottom: each arm's tasks in the order given, then every pooled row.
    labels: list[tuple[str, str]] = []
    for r in sorted(rows, key=lambda r: r["task"] == POOLED_TASK):
        if (r["arm"], r["task"]) not in labels:
            labels.append((r["arm"], r["task"]))
    position = {label: len(labels) - 1 - i for i, label in enumerate(labels)}
    groups = list(dict.fromkeys((r["mode"], r["shots"]) for r in rows))
    # Settings sharing a row sit side by side rather than on top of each other.
    spread = 0.5 / max(len(groups), 1)
    fig = go.Figure()
    for g, (mode, shots) in enumerate(groups):
        items = [r for r in rows if (r["mode"], r["shots"]) == (mode, shots)]
        offset = (g - (len(groups) - 1) / 2) * spread
        ci = [r.get("ci") or (r["diff"], r["diff"]) for r in items]
        fig.add_trace(
            go.Scatter(
                x=[r["diff"] for r in items],
                y=[position[(r["arm"], r["task"])] + offset for r in items],
                mode="markers",
                name=f"{mode} · {shots}-shot",
                marker={"color": LABEL_COLORS[g % len(LABEL_COLORS)], "size": 8},
                error_x={
                    "type": "data",
                    "array": [hi - r["diff"] for r, (_, hi) in zip(items, ci, strict=True)],
                    "arrayminus": [r["diff"] - lo for r, (lo, _) in zip(items, ci, strict=True)],
                    "visible": True,
                },
                customdata=[
                    [r["arm"], r["task"], lo, hi, r.get("n"), r.get("p"), r.get("p_holm")]
                    for r, (lo, hi) in zip(items, ci, strict=True)
                ],
                hovertemplate=(
                    "%{customdata[0]} · %{customdata[1]}<br>diff %{x:+.3f} "
                    "[%{customdata[2]:+.3f}, %{customdata[3]:+.3f}]<br>n %{customdata[4]}, "
                    "p %{customdata[5]:.3g}, p_holm %{customdata[6]:.3g}<extra></extra>"
                ),
            )
        )
    fig.add_vline(x=0, line_color="#555", line_width=1)
    pooled = [position[label] for label in labels if label[1] == POOLED_TASK]
    if pooled and len(pooled) < len(labels):
        fig.add_hline(y=max(pooled) + 0.5, line_dash="dot", line_color="#bbb")
    fig.update_yaxes(
        tickmode="array",
        tickvals=[position[label] for label in labels],
        ticktext=[
            f"<b>{arm} · all tasks</b>" if task == POOLED_TASK else f"{arm} · {task}"
            for arm, task in labels
        ],
        range=[-0.75, len(labels) - 0.25],
        showgrid=False,
    )
    fig.update_xaxes(title=f"accuracy difference (arm − {reference}), with CI", zeroline=False)
    return _layout(fig, title, height=max(320, 120 + 22 * len(labels)))
