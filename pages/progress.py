"""Progress page: the study across rounds — student accuracy with CIs, the teacher's DPO
margins, score distributions, human vs automatic pairs, time per stage, signal checks, and the
confounds DPO can learn instead of the preference (answer label, length).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from pages.common import AppState, md, shown_js, ui_errors
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


def _pct(share: float | None) -> str:
    return f"{share:.0%}" if share is not None else "–"


def _words(mean: float | None) -> str:
    return f"{mean:.0f}" if mean is not None else "–"


def _before_after(before: str, after: str | None) -> str:
    return f"{before} → {after}" if after is not None else f"{before} (none tailored yet)"


def _round_line(r: dict[str, Any]) -> str:
    label = f"‘{md(r['label'])}’" if r["label"] is not None else "no label"
    parts = []
    if r["pairs"]:
        parts.append(
            f"chosen {_pct(r['chosen_share'])} {label} vs rejected {_pct(r['rejected_share'])}"
        )
    if r["draft_share"] is not None or r["tailored_share"] is not None:
        teacher = md(r["draft_teacher"] or "none")
        tailored = (
            f"{_pct(r['tailored_share'])} of tailored ({md(r['tailored_teacher'])})"
            if r["tailored_share"] is not None
            else None
        )
        parts.append(
            f"rationales answering {label}: "
            + _before_after(f"{_pct(r['draft_share'])} of drafts ({teacher})", tailored)
        )
    if any(r[k] is not None for k in ("draft_words", "tailored_words", "chosen_words")):
        longer = (
            f"{_words(r['tailored_words'])} tailored" if r["tailored_words"] is not None else None
        )
        pairs = (
            f", chosen {_words(r['chosen_words'])} vs rejected {_words(r['rejected_words'])}"
            if r["chosen_words"] is not None
            else ""
        )
        parts.append(
            "rationale length in words: "
            f"{_before_after(_words(r['draft_words']) + ' drafts', longer)}{pairs}"
        )
    head = f"- Round {r['round']} · {r['pairs']} training pairs"
    return head + (": " + "; ".join(parts) if parts else "")


def confound_md(training: views.TrainingSet, summary: list[dict[str, Any]]) -> str:
    """What the training set is, then one line per round: the chosen side's commonest label
    against the rejected side and the rationales before and after alignment, and lengths."""
    unreviewed = (
        "plus the unreviewed automatic ones (this study trains on them)"
        if training.use_unreviewed
        else "not the unreviewed automatic ones (this study leaves them out)"
    )
    head = (
        f"Training pairs counted: those a person approved, swapped or edited, {unreviewed}. "
        f"Label-balanced pairing is **{'on' if training.label_balanced else 'off'}**."
    )
    if not summary:
        return head + "\n\nNo pairs or drafts yet: the draft, score and pairs stages make them."
    return head + "\n\n" + "\n".join(_round_line(r) for r in summary)


CHARTS = (
    charts.accuracy_by_round,
    charts.dpo_margins,
    charts.score_boxes,
    charts.pair_counts,
    charts.stage_times,
)
CONFOUND_CHARTS = (charts.pair_label_mix, charts.draft_label_mix, charts.draft_lengths)


def figures(study_id: int | None) -> tuple[Any, ...]:
    if not study_id:
        nothing = "Select a study on the Studies page first."
        return (nothing, *(fn([]) for fn in CHARTS), nothing, *(fn([]) for fn in CONFOUND_CHARTS))
    sid = int(study_id)
    training = views.training_set(sid)
    drafts = views.draft_mix_rows(sid)
    return (
        signal_md(views.signal_checks(sid)),
        charts.accuracy_by_round(views.evaluation_rows(sid)),
        charts.dpo_margins(views.dpo_margin_rows(sid)),
        charts.score_boxes(views.score_rows(sid)),
        charts.pair_counts(views.pair_count_rows(sid)),
        charts.stage_times(views.stage_time_rows(sid)),
        confound_md(training, views.confound_summary(training.sides, drafts)),
        charts.pair_label_mix(training.sides),
        charts.draft_label_mix(drafts),
        charts.draft_lengths(drafts),
    )


def build(state: AppState, current_study: gr.State, tab: gr.Tab) -> None:
    with gr.Column(elem_id="progress-page"):
        gr.Markdown(
            "## Progress\nThe study round after round: did the student improve (held-out test "
            "accuracy with 95% bootstrap intervals), did the teacher learn the preferences (DPO "
            "reward margins), how the drafts' scores moved, how many pairs people decided, what "
            "each stage cost in time, and whether DPO may have learned a label or a length "
            "instead of the preference."
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
        gr.Markdown(
            "### Confounds: label mix and length\n"
            "If the chosen drafts mostly answer one label and the rejected ones do not, DPO may "
            "learn 'always answer X' (the tailored drafts then drift to that label): turn on "
            "label-balanced pairing in the study settings. If tailored rationales grow longer "
            "than the drafts, the teacher may have learned length rather than the preference. "
            "The label charts count the pairs the align stage trains on, and the parsed drafts "
            "of each round before (draft) and after (tailored) alignment."
        )
        confounds = gr.Markdown(elem_id="progress-confounds")
        with gr.Row():
            pair_mix = gr.Plot(label="Labels of the training pairs", elem_id="progress-pair-labels")
            draft_mix = gr.Plot(label="Labels before vs after", elem_id="progress-draft-labels")
        lengths = gr.Plot(label="Rationale length", elem_id="progress-lengths")

    outputs = [signal, accuracy, margins, boxes, pairs, times]
    outputs += [confounds, pair_mix, draft_mix, lengths]

    @ui_errors
    def show(study_id: int | None) -> tuple[Any, ...]:
        return figures(study_id)

    refresh.click(show, [current_study], outputs, api_name="progress_refresh")
    on_screen = gr.Checkbox(value=True, visible=False, label="on screen")

    @ui_errors
    def on_study(study_id: int | None, shown: bool = True) -> Any:
        """A new study: its charts when the page is on screen (opening the page draws them
        otherwise)."""
        if shown:
            return figures(study_id)
        # No chart of the previous study stays behind the new study's name.
        return ("Loading this study's charts…", *[None] * 5, "", None, None, None)

    current_study.change(
        on_study,
        [current_study, on_screen],
        outputs,
        api_name="progress_study",
        show_progress="hidden",
        js=shown_js("progress-page"),
    )
    tab.select(show, [current_study], outputs, api_name="progress_tab", show_progress="hidden")
