"""Studies page: list, create (typed widgets from StudyConfig), select and duplicate studies."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import gradio as gr
import pandas as pd

from pages.common import AppState, signal_panel, ui_errors
from teachlab import studies
from teachlab.config import BACKENDS, STRATEGY_NAMES, StudyConfig
from teachlab.models import BUNDLED, BUNDLED_PREFIX
from teachlab.rounds import current_round
from teachlab.tasks import list_bigbench

STUDY_COLUMNS = [
    "id",
    "name",
    "task_ref",
    "teacher",
    "student",
    "rounds",
    "drafts",
    "pairs",
    "last_run",
    "created",
]
BUNDLED_REFS = [BUNDLED_PREFIX + n for n in BUNDLED]


def studies_frame() -> pd.DataFrame:
    rows = [s.__dict__ for s in studies.list_studies()]
    return pd.DataFrame(rows, columns=STUDY_COLUMNS)


def study_choices() -> list[tuple[str, int]]:
    return [(f"#{s.id} {s.name}", s.id) for s in studies.list_studies()]


def _widget(f: Any) -> gr.components.Component:
    meta, default = f.metadata, f.default
    label, info = f.name.replace("_", " "), meta["help"]
    if "choices" in meta:
        return gr.Dropdown(list(meta["choices"]), value=default, label=label, info=info)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=label, info=info)
    if isinstance(default, int):
        return gr.Number(
            value=default,
            precision=0,
            minimum=meta["min"],
            maximum=meta["max"],
            label=label,
            info=info,
        )
    if isinstance(default, float):
        return gr.Number(
            value=default, minimum=meta["min"], maximum=meta["max"], label=label, info=info
        )
    if f.name == "strategies":
        return gr.CheckboxGroup(list(STRATEGY_NAMES), value=list(default), label=label, info=info)
    if isinstance(default, tuple):  # names separated by commas (StudyConfig types them)
        return gr.Textbox(value=", ".join(default), label=label, info=info)
    return gr.Textbox(value=str(default), label=label, info=info)


def build(state: AppState, current_study: gr.State) -> None:
    gr.Markdown(
        "## Studies\nA study fixes a task, a teacher, a student and their settings. "
        "Select one to work on it in the other pages."
    )
    with gr.Row():
        # value=None at build time; each page load selects the newest study in the dropdown and
        # the session's current-study state together, so no page shows a choice it has not taken.
        pick = gr.Dropdown(
            study_choices(), value=None, label="Current study", scale=3, interactive=True
        )
        refresh = gr.Button("Refresh", scale=0)
    signal = gr.Markdown(elem_id="studies-signal")
    table = gr.Dataframe(
        studies_frame(), interactive=False, label="All studies", wrap=True, elem_id="studies-table"
    )

    with gr.Accordion("Create a study", open=False) as create_box:
        with gr.Row():
            name = gr.Textbox(label="Name", placeholder="my-study")
            task = gr.Dropdown(
                [f"bigbench:{t}" for t in list_bigbench()],
                value=studies.DEMO_TASK,
                label="Task (BIG-bench)",
                allow_custom_value=True,
                info="Or upload a JSONL/CSV file below.",
            )
            upload = gr.File(
                label="Or upload a task (JSONL or CSV)",
                file_types=[".jsonl", ".csv"],
                type="filepath",
            )
        with gr.Row():
            teacher = gr.Dropdown(
                BUNDLED_REFS,
                value=state.settings.teacher,
                label="Teacher",
                allow_custom_value=True,
                info="bundled:…, a Hugging Face id or a local folder",
            )
            student = gr.Dropdown(
                BUNDLED_REFS, value=state.settings.student, label="Student", allow_custom_value=True
            )
            backend = gr.Dropdown(list(BACKENDS), value="transformers", label="Backend")
            seed = gr.Number(value=0, precision=0, label="Seed")
        config_fields = [f for f in fields(StudyConfig)]
        with gr.Accordion("Settings", open=False):
            widgets = []
            for start in range(0, len(config_fields), 4):
                with gr.Row():
                    widgets += [_widget(f) for f in config_fields[start : start + 4]]
        create = gr.Button("Create study", variant="primary")
        created = gr.Markdown()

    with gr.Row() as dup_row:
        dup_name = gr.Textbox(label="Duplicate the current study as", placeholder="demo-2")
        dup = gr.Button("Duplicate")
    state.for_admins(create_box, dup_row)

    @ui_errors
    def do_create(
        request: gr.Request,
        name: str,
        task: str,
        upload: str | None,
        teacher: str,
        student: str,
        backend: str,
        seed: int | None,
        *values: Any,
    ) -> tuple[Any, ...]:
        state.require_admin(request)
        # Typed and range-checked by StudyConfig, which names a bad or cleared field (int() here
        # would fail on a cleared number box with a bare TypeError).
        config = {f.name: value for f, value in zip(config_fields, values, strict=True)}
        task_ref, new_upload = task, None
        if upload:
            from pathlib import Path

            from teachlab.tasks import sanitise_name, save_uploaded_task, uploads_dir

            upload_name = sanitise_name(name or Path(upload).stem)
            fresh = not (uploads_dir() / f"{upload_name}.jsonl").exists()
            stored = save_uploaded_task(Path(upload), upload_name)
            new_upload = stored if fresh else None
            task_ref = f"upload:{stored.stem}"
        try:
            study = studies.create_study(
                name,
                task_ref,
                teacher=teacher,
                student=student,
                backend=backend,
                seed=0 if seed is None else seed,
                config=config,
            )
        except Exception:
            # A study that was not made leaves no upload behind: it would hold the name, and a
            # corrected file under it would be refused as "a different task".
            if new_upload is not None:
                new_upload.unlink(missing_ok=True)
            raise
        return (
            f"Created study **#{study.id} {study.name}** on `{study.task_ref}`.",
            studies_frame(),
            gr.Dropdown(choices=study_choices(), value=study.id),
            study.id,
        )

    create.click(
        do_create,
        [name, task, upload, teacher, student, backend, seed, *widgets],
        [created, table, pick, current_study],
        api_name="create_study",
    )

    @ui_errors
    def do_duplicate(request: gr.Request, study_id: int | None, new_name: str) -> tuple[Any, ...]:
        state.require_admin(request)
        if not study_id:
            raise gr.Error("Select a study to duplicate first.")
        study = studies.duplicate_study(int(study_id), new_name)
        return studies_frame(), gr.Dropdown(choices=study_choices(), value=study.id), study.id

    dup.click(
        do_duplicate,
        [current_study, dup_name],
        [table, pick, current_study],
        api_name="duplicate_study",
    )

    def do_refresh(study_id: int | None) -> tuple[Any, ...]:
        return studies_frame(), gr.Dropdown(choices=study_choices(), value=study_id)

    refresh.click(do_refresh, [current_study], [table, pick], api_name="list_studies")

    def on_load(request: gr.Request) -> tuple[Any, ...]:
        ids = [study_id for _, study_id in study_choices()]
        first = max(ids, default=None)
        name = getattr(request, "username", None)
        if state.auth_enabled and name in state.users and state.users[name][1] == "annotator":
            mine = studies.last_reviewed_study(str(name))
            first = mine if mine in ids else first
        return (*do_refresh(first), first)

    # On every page load, so a study made since the app started (the CLI, another tab) is
    # listed; an annotator's last reviewed study, else the newest (on a new install, the
    # demo), is ready to work on.
    gr.on(None, on_load, None, [table, pick, current_study], api_visibility="private")
    pick.change(lambda v: v, [pick], [current_study], api_name="select_study")

    @ui_errors
    def show_signal(study_id: int | None) -> str:
        return signal_panel(current_round(int(study_id)).id) if study_id else ""

    current_study.change(
        show_signal, [current_study], [signal], api_name="studies_signal", show_progress="hidden"
    )
    refresh.click(show_signal, [current_study], [signal], api_visibility="private")
