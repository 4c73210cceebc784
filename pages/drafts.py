"""Drafts page: the teacher's output as it arrives, filterable, with parse failures in full.

Teacher output is untrusted text: the detail view escapes every field before the HTML component.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from pages.common import AppState, esc, md, pre, shown_js, skips, ui_errors, when_round_chosen
from pages.runs import live_timer
from teachlab import views
from teachlab.db import Draft
from teachlab.rounds import current_round
from teachlab.stages import STAGES

NO_STUDY = "Select a study on the Studies page first."
LOADING = "Loading this study's drafts…"


def _choices(values: list[str]) -> list[tuple[str, str]]:
    return [("all", views.ALL), *((v, v) for v in values)]


def parse_rate_md(study_id: int) -> str:
    rates = views.parse_rates(study_id)
    if not rates:
        run = views.latest_run(study_id)
        if run is not None and run.status in views.ACTIVE_RUN:
            return (
                f"No drafts stored yet — run #{run.id} ({run.kind}) is {run.status}; drafts "
                "appear here as the teacher writes them."
            )
        return "No drafts yet — launch a **draft** run on the Runs page."
    parts = [
        f"round {r.round_index} {r.kind}s: **{r.rate:.0%}** parsed ({r.total - r.rejected}/{r.total}"
        f"{f', {r.duplicate} duplicates' if r.duplicate else ''})"
        for r in rates
        if r.rate is not None
    ]
    return "Parse rate — " + " · ".join(parts)


def live_md(study_id: int) -> str:
    run = views.latest_run(study_id)
    if (
        run is None
        or run.status not in views.ACTIVE_RUN
        or not getattr(STAGES.get(run.kind), "live", False)
    ):
        return ""
    return (
        f"**Run #{run.id} ({run.kind}) {run.status}**: {run.progress_done}/{run.progress_total}"
        f" — {md(run.message)}. New drafts appear here as they are stored."
    )


def _section(title: str, body: str) -> str:
    return f"<h4 style='margin:10px 0 4px'>{esc(title)}</h4>{body}"


def draft_html(detail: views.DraftDetail) -> str:
    """Every field of a draft, escaped; the parse problem first when there is one."""
    d: Draft = detail.draft
    head = (
        f"<b>Draft #{d.id}</b> · {esc(d.kind)} · phase {esc(d.phase)}"
        f"{f' · strategy {esc(d.strategy)}' if d.strategy else ''} · status <b>{esc(d.status)}</b>"
        f"{f' · score {d.score:.3f}' if d.score is not None else ''}"
    )
    parts = [f"<div>{head}</div>"]
    if d.status != "ok" or d.reason:
        parts.append(
            _section(
                "Why it was " + (d.status if d.status != "ok" else "flagged"),
                pre(d.reason or "(no reason recorded)"),
            )
        )
    if d.flags:
        parts.append(f"<div>flags: {esc(', '.join(d.flags))}</div>")
    if detail.parent is not None:
        parts.append(_section(f"Question (draft #{detail.parent.id})", pre(detail.parent.input)))
    if d.kind == "question" and d.input is not None:
        parts.append(_section("Question", pre(d.input)))
        choices = f" · choices: {esc(' | '.join(d.choices))}" if d.choices else ""
        parts.append(f"<div>target: <code>{esc(d.target)}</code>{choices}</div>")
    if d.rationale is not None:
        parts.append(_section("Rationale", pre(d.rationale)))
        parts.append(f"<div>answer: <code>{esc(d.answer)}</code></div>")
    if detail.children:
        rows = "".join(
            f"<li>#{c.id} {esc(c.strategy or '')} · {esc(c.status)}"
            f"{f' · score {c.score:.3f}' if c.score is not None else ''}</li>"
            for c in detail.children
        )
        parts.append(_section("Rationales of this question", f"<ul>{rows}</ul>"))
    raw = (f"[prefilled] {d.prefill}\n" if d.prefill else "") + (d.raw_output or "")
    if (d.sampling or {}).get("scaffold"):
        raw = (
            "[scaffolded: TeachLab wrote the tags and the 'Options:' cue between the fields]\n"
            + raw
        )
    if "answer-chosen" in (d.flags or []):
        raw += "\n[answer chosen among the options by the teacher's likelihood]"
    parts.append(_section("Raw teacher output", pre(raw)))
    parts.append(
        f"<details><summary>Prompt (template {esc(d.template_version or '?')})</summary>"
        f"{pre(d.prompt)}</details>"
    )
    parts.append(_section("Sampling", pre(json.dumps(d.sampling, indent=1, sort_keys=True))))
    parts.append(
        f"<div>teacher {esc(d.teacher)} · adapter {esc(d.adapter_hash or 'none')} · "
        f"{views.aware(d.created_at):%Y-%m-%d %H:%M} UTC</div>"
    )
    return "<div class='tl-draft'>" + "".join(parts) + "</div>"


def build(state: AppState, current_study: gr.State, tab: gr.Tab) -> None:
    with gr.Column(elem_id="drafts-page"):
        gr.Markdown(
            "## Drafts\nEverything the teacher wrote for this study, newest first. While a draft "
            "run is going, new drafts appear on their own. Outputs that failed to parse are kept "
            "with the reason; select a row to see the raw output, the prompt and the sampling."
        )
        live = gr.Markdown(elem_id="drafts-live")
        rates = gr.Markdown(NO_STUDY, elem_id="drafts-parse-rate")
        with gr.Row():
            # Choices are filled per study at run time; API callers may name any round id directly.
            rnd = gr.Dropdown([], label="Round", allow_custom_value=True, elem_id="drafts-round")
            status = gr.Dropdown(
                _choices(list(views.DRAFT_STATUSES)),
                value=views.ALL,
                label="Status",
                elem_id="drafts-status",
            )
            kind = gr.Dropdown(_choices(["question", "rationale"]), value=views.ALL, label="Kind")
            phase = gr.Dropdown(_choices(["draft", "tailored"]), value=views.ALL, label="Phase")
            strategy = gr.Dropdown(
                _choices([]), value=views.ALL, label="Strategy", allow_custom_value=True
            )
            flag = gr.Dropdown(_choices([]), value=views.ALL, label="Flag", allow_custom_value=True)
        table = gr.Dataframe(
            views.drafts_frame(0),
            interactive=False,
            wrap=True,
            max_height=420,
            label="Drafts (select a row)",
            elem_id="drafts-table",
        )
        with gr.Row():
            draft_id = gr.Number(label="Draft id", precision=0, scale=1, elem_id="drafts-id")
            show_btn = gr.Button("Show draft", scale=0, elem_id="drafts-show")
            refresh = gr.Button("Refresh", scale=0, elem_id="drafts-refresh")
        detail = gr.HTML("<p>Select a draft to see it in full.</p>", elem_id="drafts-detail")
        signature = gr.State(None)
        painted = gr.State(None)  # the round whose drafts the page shows
    timer, on_screen, tick = live_timer(tab, "drafts-page", "drafts")
    filters = [rnd, status, kind, phase, strategy, flag]

    def listing(
        study_id: int | None, round_id: Any, *values: str, reset: bool = False
    ) -> tuple[Any, ...]:
        if not study_id or not round_id:
            return (
                NO_STUDY if not study_id else "No rounds yet.",
                "",
                views.drafts_frame(0),
                gr.skip(),
                gr.skip(),
                None,
            )
        filt = views.DraftFilter(*values)
        opts = views.draft_filter_options(views.as_id(round_id))
        keep = {"value": views.ALL} if reset else {}
        return (
            parse_rate_md(int(study_id)),
            live_md(int(study_id)),
            views.drafts_frame(views.as_id(round_id), filt),
            gr.Dropdown(choices=_choices(opts["strategy"]), **keep),
            gr.Dropdown(choices=_choices(opts["flag"]), **keep),
            views.drafts_signature(views.as_id(round_id)),
        )

    list_outputs = [rates, live, table, strategy, flag, signature]

    @ui_errors
    def on_study(study_id: int | None, shown: bool = True) -> tuple[Any, ...]:
        """A new study starts on its current round with every filter cleared. Off screen only
        the picker and filters change: the drafts are read when the page is opened."""
        cleared = (views.ALL,) * 3
        if not study_id:
            return (gr.Dropdown(choices=[], value=None), *cleared, *listing(None, None), None)
        options = views.round_options(int(study_id))
        current = current_round(int(study_id)).id
        if not shown:
            reset = gr.Dropdown(choices=_choices([]), value=views.ALL)
            return (  # no drafts of the previous study stay behind the new study's name
                gr.Dropdown(choices=options, value=current),
                *cleared,
                LOADING,
                "",
                views.drafts_frame(0),
                reset,
                reset,
                None,
                None,
            )
        return (
            gr.Dropdown(choices=options, value=current),
            *cleared,
            *listing(study_id, current, *[views.ALL] * 5, reset=True),
            current,
        )

    @ui_errors
    def catch_up(study_id: int | None, round_id: Any, *rest: Any) -> tuple[Any, ...]:
        """The round picker changed (a new study, or the user's choice): read its drafts if the
        page is on screen and does not show them already."""
        *values, shown_round, shown = rest
        rid = views.as_id(round_id) if round_id else None
        if not shown or rid is None or rid == shown_round or not study_id:
            return skips(len(list_outputs) + 1)
        if views.study_of_round(rid).id != int(study_id):
            return skips(len(list_outputs) + 1)
        return (*listing(study_id, round_id, *values), rid)

    @ui_errors
    def refresh_list(
        study_id: int | None,
        round_id: Any,
        status: str,
        kind: str,
        phase: str,
        strategy: str,
        flag: str,
    ) -> tuple[Any, ...]:
        return listing(study_id, round_id, status, kind, phase, strategy, flag)

    def refresh_painted(study_id: int | None, round_id: Any, *values: str) -> tuple[Any, ...]:
        listed = refresh_list(study_id, round_id, *values)
        if not isinstance(listed, tuple):  # refused: the page is left as it was
            return skips(len(list_outputs) + 1)
        return (*listed, views.as_id(round_id) if round_id else None)

    @ui_errors
    def show(study_id: int | None, draft: float | None) -> str:
        if not draft:
            raise gr.Error("Enter a draft id, or select a row in the table.")
        found = views.draft_detail(int(draft))
        if study_id and views.study_of_round(found.draft.round_id).id != int(study_id):
            raise gr.Error(f"Draft #{int(draft)} belongs to another study.")
        return draft_html(found)

    @ui_errors
    def select(study_id: int | None, evt: gr.SelectData) -> tuple[Any, str]:
        row = evt.row_value or []
        if not row or row[0] in (None, ""):
            return gr.skip(), gr.skip()
        return int(row[0]), show(study_id, int(row[0]))

    @ui_errors
    def poll(
        visible: bool,
        study_id: int | None,
        round_id: Any,
        status: str,
        kind: str,
        phase: str,
        strategy: str,
        flag: str,
        before: Any,
    ) -> tuple[Any, ...]:
        values = (status, kind, phase, strategy, flag)
        if not visible:
            return (gr.Timer(active=False), *[gr.skip()] * len(list_outputs))
        if not study_id or not round_id:
            return (gr.skip(), *[gr.skip()] * len(list_outputs))
        if views.drafts_signature(views.as_id(round_id)) == before:
            return (gr.skip(), gr.skip(), live_md(int(study_id)), *[gr.skip()] * 4)
        return (gr.skip(), *listing(study_id, round_id, *values))

    current_study.change(
        on_study,
        [current_study, on_screen],
        [rnd, status, kind, phase, *list_outputs, painted],
        api_name="drafts_study",
        show_progress="hidden",
        js=shown_js("drafts-page"),
    )
    rnd.change(
        catch_up,
        [current_study, *filters, painted, on_screen],
        [*list_outputs, painted],
        api_visibility="private",
        show_progress="hidden",
        js=shown_js("drafts-page"),
    )
    gr.on(
        [w.input for w in filters[1:]],  # the round picker: catch_up, on any change
        refresh_list,
        [current_study, *filters],
        list_outputs,
        api_name="drafts_filter",
    )
    refresh.click(refresh_list, [current_study, *filters], list_outputs, api_name="drafts_list")
    tab.select(
        when_round_chosen(refresh_painted, len(list_outputs) + 1),
        [current_study, *filters],
        [*list_outputs, painted],
        api_name="drafts_tab",
        show_progress="hidden",
    )
    show_btn.click(show, [current_study, draft_id], [detail], api_name="draft_detail")
    table.select(select, [current_study], [draft_id, detail], api_name="drafts_select")
    tick.then(
        poll,
        [on_screen, current_study, *filters, signature],
        [timer, *list_outputs],
        api_name="drafts_poll",
        show_progress="hidden",
    )
