"""Export page: a study, round or filtered selection as DPO, SFT or draft data, downloaded as a
zip with its dataset card; admins may push an export to the Hugging Face Hub (dry run first)."""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

from pages.common import AppState, ui_errors
from teachlab import export as ex
from teachlab import rounds, studies

ALL_ROUNDS = -1
ANY = "any"
NO_STUDY = "Select a study on the Studies page, or pick one here."


def study_choices() -> list[tuple[str, int]]:
    return [(f"#{s.id} {s.name}", s.id) for s in studies.list_studies()]


def round_choices(study_id: int | None) -> list[tuple[str, int]]:
    if not study_id:
        return []
    found = rounds.rounds(int(study_id))
    return [("all rounds", ALL_ROUNDS), *((f"round {r.index}", r.index) for r in found)]


def card_source(card: str) -> str:
    """The dataset card as the text it is, in a fence longer than any backtick run inside: what
    it quotes (the study's name, task and models) never renders as Markdown or HTML here."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", card)), default=0))
    return f"{fence}markdown\n{card}\n{fence}"


def make_export(
    study_id: int | None,
    round_index: int | None,
    kind: str,
    fmt: str,
    conversational: bool,
    statuses: list[str] | None,
    level: str,
    source: str,
    min_margin: float | None,
    name: str,
) -> tuple[str, str, str]:
    """Write the export, then return (zip path outside storage, card, export name)."""
    if not study_id:
        raise gr.Error(NO_STUDY)
    if not statuses:
        raise gr.Error("Tick at least one pair status to export.")
    selection = ex.Selection(
        study=int(study_id),
        round=None if round_index in (None, ALL_ROUNDS) else int(round_index),
        statuses=tuple(statuses),
        level=None if level == ANY else level,
        source=None if source == ANY else source,
        min_margin=None if min_margin is None else float(min_margin),
    )
    result = ex.export(
        selection,
        kind,
        fmt,
        name=(name or "").strip() or None,
        conversational=bool(conversational) and kind == "dpo",
    )
    # The storage folder is blocked from serving, so the download is a copy in a temp folder.
    archive = ex.zip_export(result.name)
    head = f"**{result.rows} rows** exported as `{result.name}` ({result.form} form)."
    notes = "".join(f"\n\n> {n}" for n in result.notes)
    return str(archive), f"{head}{notes}\n\n{card_source(result.card)}", result.name


def push(name: str, repo_id: str, private: bool, dry_run: bool) -> str:
    if not name:
        raise gr.Error("Choose an export to push (make one above first).")
    plan = ex.push_to_hub(name, repo_id, private=bool(private), dry_run=bool(dry_run))
    return ex.plan_summary(plan)


def build(state: AppState, current_study: gr.State) -> None:
    gr.Markdown(
        "## Export\nDPO pairs (trl's format, with ratings and provenance), the SFT tailored set "
        "or raw scored drafts, as JSONL, Parquet or a `datasets` folder, with a dataset card."
    )
    with gr.Row():
        study = gr.Dropdown(study_choices(), label="Study", scale=3)
        rnd = gr.Dropdown([], label="Round", scale=2)
        refresh = gr.Button("Refresh", scale=0)
    with gr.Row():
        kind = gr.Radio(list(ex.KINDS), value="dpo", label="What")
        fmt = gr.Radio(list(ex.FORMATS), value="jsonl", label="Format")
        conversational = gr.Checkbox(
            False,
            label="Conversational (DPO)",
            info="Message lists where the prompts allow it; default is the byte-exact text form.",
        )
    with gr.Accordion("Pair filters (DPO)", open=False), gr.Row():
        statuses = gr.CheckboxGroup(
            list(ex.PAIR_STATUSES),
            value=[s for s in ex.PAIR_STATUSES if s != "rejected"],
            label="Status",
        )
        level = gr.Dropdown([ANY, "question", "rationale"], value=ANY, label="Level")
        source = gr.Dropdown([ANY, *ex.SOURCES], value=ANY, label="Source")
        min_margin = gr.Number(None, label="Minimum margin")
    with gr.Row():
        name = gr.Textbox(label="Export name (optional)", placeholder="letters, digits, _ - .")
        go = gr.Button("Export", variant="primary", scale=0)
    download = gr.File(label="Download (zip)", interactive=False)
    card = gr.Markdown(elem_id="export-card")

    with gr.Accordion("Push to the Hugging Face Hub (admins)", open=False):
        with gr.Row():
            pushed = gr.Dropdown(ex.list_exports(), label="Export", allow_custom_value=True)
            repo_id = gr.Textbox(label="Dataset repository", placeholder="your-name/teachlab-dpo")
        with gr.Row():
            private = gr.Checkbox(True, label="Private")
            dry_run = gr.Checkbox(True, label="Dry run (show what would be uploaded)")
            push_btn = gr.Button("Push", scale=0)
        plan = gr.Markdown()

    @ui_errors
    def on_study(study_id: int | None) -> tuple[Any, ...]:
        options = round_choices(study_id)
        return (
            gr.Dropdown(choices=study_choices(), value=study_id),
            gr.Dropdown(choices=options, value=ALL_ROUNDS if options else None),
        )

    @ui_errors
    def do_export(request: gr.Request, *values: Any) -> tuple[Any, ...]:
        state.require_admin(request)  # it writes into the storage folder
        archive, text, made = make_export(*values)
        return archive, text, gr.Dropdown(choices=ex.list_exports(), value=made)

    @ui_errors
    def do_push(request: gr.Request, name: str, repo_id: str, private: bool, dry_run: bool) -> str:
        state.require_admin(request)
        return push(name, repo_id, private, dry_run)

    current_study.change(on_study, [current_study], [study, rnd], api_name="export_study")
    study.input(on_study, [study], [study, rnd], api_name="export_pick_study")
    refresh.click(on_study, [study], [study, rnd], api_name="export_refresh")
    go.click(
        do_export,
        [study, rnd, kind, fmt, conversational, statuses, level, source, min_margin, name],
        [download, card, pushed],
        api_name="export",
    )
    push_btn.click(do_push, [pushed, repo_id, private, dry_run], [plan], api_name="export_push")
