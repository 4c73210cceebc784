"""Progress page: the study across rounds — student accuracy with CIs, the teacher's DPO
margins, score distributions, human vs automatic pairs, time per stage, signal checks.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from pages.common import AppState, ui_errors
from teachlab import charts, views

LEVEL_ICON = {"ok": "✅", "warn": "⚠️", "stop": "⛔"}


def signal_md(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return (
            "No signal check yet. Run the **check** stage before spending compute: it tells "
            "whether the student is above chance and whether draft scores are reliable."
        )
    lines = []
    for r in rows:
        reasons = "; ".join(r["reasons"]) or "no problems found"
        lines.append(
            f"- Round {r['round']}: {LEVEL_ICON.get(r['level'], '')} **{r['level']}** — {reasons}"
        )
    return "Signal check\n\n" + "\n".join(lines)


def figures(study_id: int | None) -> tuple[Any, ...]:
    if not study_id:
        return (
            "Select a study on the Studies page first.",
            *(
                fn([])
                for fn in (
                    charts.accuracy_by_round,
                    charts.dpo_margins,
                    charts.score_boxes,
                    charts.pair_counts,
                    charts.stage_times,
                )
            ),
        )
    sid = int(study_id)
    return (
        signal_md(views.signal_checks(sid)),
        charts.accuracy_by_round(views.evaluation_rows(sid)),
        charts.dpo_margins(views.dpo_margin_rows(sid)),
        charts.score_boxes(views.score_rows(sid)),
        charts.pair_counts(views.pair_count_rows(sid)),
        charts.stage_times(views.stage_time_rows(sid)),
    )


def build(state: AppState, current_study: gr.State, tab: gr.Tab) -> None:
    with gr.Column(elem_id="progress-page"):
        gr.Markdown(
            "## Progress\nThe study round after round: did the student improve (held-out test "
            "accuracy with 95% bootstrap intervals), did the teacher learn the preferences (DPO "
            "reward margins), how the drafts' scores moved, how many pairs people decided, and "
            "what each stage cost in time."
        )
        refresh = gr.Button("Refresh", elem_id="progress-refresh")
        signal = gr.Markdown(elem_id="progress-signal")
        accuracy = gr.Plot(label="Student accuracy", elem_id="progress-accuracy")
        with gr.Row():
            margins = gr.Plot(label="DPO reward margins", elem_id="progress-margins")
            boxes = gr.Plot(label="Score distributions", elem_id="progress-scores")
        with gr.Row():
            pairs = gr.Plot(label="Pairs", elem_id="progress-pairs")
            times = gr.Plot(label="Time per stage", elem_id="progress-times")

    outputs = [signal, accuracy, margins, boxes, pairs, times]

    @ui_errors
    def show(study_id: int | None) -> tuple[Any, ...]:
        return figures(study_id)

    refresh.click(show, [current_study], outputs, api_name="progress_refresh")
    current_study.change(
        show, [current_study], outputs, api_name="progress_study", show_progress="hidden"
    )
    tab.select(show, [current_study], outputs, api_name="progress_tab", show_progress="hidden")
