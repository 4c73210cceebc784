"""Scores page: how much each draft helped the student, probe by probe, against the baseline.

A rationale's score is the student's probe accuracy with (question, rationale) as its one
demonstration; a question's score is the mean of its rationales' scores.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from pages.common import (
    AppState,
    esc,
    pre,
    shown_js,
    signal_panel,
    skips,
    ui_errors,
    when_round_chosen,
)
from teachlab import charts, views
from teachlab.rounds import current_round

NO_STUDY = "Select a study on the Studies page first."


def baseline_md(base: views.Baseline | None) -> str:
    if base is None:
        return "No scores yet — launch a **score** run on the Runs page."
    margin = f", mean margin {base.margin:+.3f}" if base.margin is not None else ""
    return (
        f"Zero-shot baseline (the student with no demonstration): **{base.accuracy:.3f}** on "
        f"{base.n} probes ({base.mode}{margin}). A draft helps when its score is above it."
    )


def detail_html(detail: views.DraftDetail) -> str:
    d = detail.draft
    score = f"{d.score:.3f}" if d.score is not None else "not scored"
    margin = f" · margin {d.margin_score:+.3f}" if d.margin_score is not None else ""
    base = f" · baseline {detail.baseline:.3f}" if detail.baseline is not None else ""
    parts = [
        f"<div><b>Draft #{d.id}</b> · {esc(d.kind)}"
        f"{' · ' + esc(d.strategy) if d.strategy else ''} · score <b>{score}</b>{margin}{base}"
        f"{' · mode ' + esc(detail.mode) if detail.mode else ''}</div>"
    ]
    question = detail.parent.input if detail.parent is not None else d.input
    if question:
        parts.append("<h4 style='margin:8px 0 4px'>Question</h4>" + pre(question))
    if d.rationale is not None:
        parts.append(
            "<h4 style='margin:8px 0 4px'>Rationale</h4>"
            + pre(d.rationale)
            + f"<div>answer: <code>{esc(d.answer)}</code></div>"
        )
    if d.kind == "question" and detail.children:
        scored = [c for c in detail.children if c.score is not None]
        items = "".join(f"<li>#{c.id} {esc(c.strategy or '')}: {c.score:.3f}</li>" for c in scored)
        parts.append(
            "<h4 style='margin:8px 0 4px'>Its rationales (the question's score is their "
            f"mean)</h4><ul>{items or '<li>none scored yet</li>'}</ul>"
        )
    for note in detail.notes:
        parts.append(f"<p><i>{esc(note)}</i></p>")
    return "<div class='tl-score'>" + "".join(parts) + "</div>"


def build(state: AppState, current_study: gr.State, tab: gr.Tab) -> None:
    with gr.Column(elem_id="scores-page"):
        gr.Markdown(
            "## Scores\nHow much each draft helped the student: its accuracy on the probe set "
            "with the draft as its single demonstration, next to the zero-shot baseline. Select "
            "a draft to see the student's answer to every probe beside the gold answer."
        )
        with gr.Row():
            # Choices are filled per study at run time; API callers may name any round id directly.
            rnd = gr.Dropdown(
                [], label="Round", scale=3, allow_custom_value=True, elem_id="scores-round"
            )
            refresh = gr.Button("Refresh", scale=0, elem_id="scores-refresh")
        base = gr.Markdown(NO_STUDY, elem_id="scores-baseline")
        signal = gr.Markdown(elem_id="scores-signal")
        with gr.Row():
            hist_r = gr.Plot(label="Rationale scores", elem_id="scores-hist-rationale")
            hist_q = gr.Plot(label="Question scores", elem_id="scores-hist-question")
        table = gr.Dataframe(
            views.scores_frame(0),
            interactive=False,
            wrap=True,
            max_height=360,
            label="Scored drafts, best first (select a row)",
            elem_id="scores-table",
        )
        with gr.Row():
            draft_id = gr.Number(label="Draft id", precision=0, elem_id="scores-id")
            show_btn = gr.Button("Show", scale=0, elem_id="scores-show")
        detail = gr.HTML(
            "<p>Select a draft to see its per-probe answers.</p>", elem_id="scores-detail"
        )
        probes = gr.Dataframe(
            views.probe_frame([]),
            interactive=False,
            wrap=True,
            label="The student's answers with this draft as demonstration",
            elem_id="scores-probes",
        )

    def overview(round_id: int | None) -> tuple[Any, ...]:
        if not round_id:
            return (
                NO_STUDY,
                "",
                charts.score_histogram([], None, "Rationale scores"),
                charts.score_histogram([], None, "Question scores"),
                views.scores_frame(0),
            )
        b = views.baseline(views.as_id(round_id))
        values = views.score_values(views.as_id(round_id))
        line = b.accuracy if b else None
        return (
            baseline_md(b),
            signal_panel(views.as_id(round_id)),
            charts.score_histogram(values.get("rationale", []), line, "Rationale scores"),
            charts.score_histogram(values.get("question", []), line, "Question scores"),
            views.scores_frame(views.as_id(round_id)),
        )

    outputs = [base, signal, hist_r, hist_q, table]
    painted = gr.State(None)  # the round whose scores the page shows
    on_screen = gr.Checkbox(value=True, visible=False, label="on screen")

    @ui_errors
    def on_study(study_id: int | None, shown: bool = True) -> tuple[Any, ...]:
        """The study's current round; its scores only when the page is on screen (opening the
        page reads them otherwise)."""
        if not study_id:
            return (gr.Dropdown(choices=[], value=None), *overview(None), None)
        current = current_round(int(study_id)).id
        picker = gr.Dropdown(choices=views.round_options(int(study_id)), value=current)
        if not shown:  # no scores of the previous study stay behind the new study's name
            return (
                picker,
                "Loading this study's scores…",
                "",
                None,
                None,
                views.scores_frame(0),
                None,
            )
        return (picker, *overview(current), current)

    @ui_errors
    def show_round(round_id: int | None) -> tuple[Any, ...]:
        return overview(round_id)

    @ui_errors
    def catch_up(
        study_id: int | None, round_id: Any, shown_round: Any, shown: bool
    ) -> tuple[Any, ...]:
        """The picker changed: show its round's scores, if on screen and not shown already."""
        rid = views.as_id(round_id) if round_id else None
        if not shown or rid is None or rid == shown_round or not study_id:
            return skips(len(outputs) + 1)
        if views.study_of_round(rid).id != int(study_id):
            return skips(len(outputs) + 1)
        return (*overview(rid), rid)

    def show_painted(_study: Any, round_id: Any) -> tuple[Any, ...]:
        shown = show_round(round_id)
        if not isinstance(shown, tuple):
            return skips(len(outputs) + 1)
        return (*shown, views.as_id(round_id) if round_id else None)

    @ui_errors
    def show(study_id: int | None, draft: float | None) -> tuple[str, Any]:
        if not draft:
            raise gr.Error("Enter a draft id, or select a row in the table.")
        found = views.draft_detail(int(draft))
        if study_id and views.study_of_round(found.draft.round_id).id != int(study_id):
            raise gr.Error(f"Draft #{int(draft)} belongs to another study.")
        return detail_html(found), views.probe_frame(found.probes)

    @ui_errors
    def select(study_id: int | None, evt: gr.SelectData) -> tuple[Any, ...]:
        row = evt.row_value or []
        if not row or row[0] in (None, ""):
            return gr.skip(), gr.skip(), gr.skip()
        return (int(row[0]), *show(study_id, int(row[0])))

    current_study.change(
        on_study,
        [current_study, on_screen],
        [rnd, *outputs, painted],
        api_name="scores_study",
        show_progress="hidden",
        js=shown_js("scores-page"),
    )
    # Any change of the picker (a new study, or the user's choice) shows its round.
    rnd.change(
        catch_up,
        [current_study, rnd, painted, on_screen],
        [*outputs, painted],
        api_name="scores_round",
        show_progress="hidden",
        js=shown_js("scores-page"),
    )
    refresh.click(show_round, [rnd], outputs, api_name="scores_refresh")
    tab.select(
        when_round_chosen(show_painted, len(outputs) + 1),
        [current_study, rnd],
        [*outputs, painted],
        api_name="scores_tab",
        show_progress="hidden",
    )
    show_btn.click(show, [current_study, draft_id], [detail, probes], api_name="score_detail")
    table.select(select, [current_study], [draft_id, detail, probes], api_name="scores_select")
