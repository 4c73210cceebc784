"""Studies page: list, create (typed widgets from StudyConfig), select and duplicate studies."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import gradio as gr
import pandas as pd

from pages.common import AppState, esc, md, signal_panel, ui_errors
from teachlab import studies
from teachlab.config import BACKENDS, STRATEGY_NAMES, StudyConfig, coerce
from teachlab.errors import ConfigError
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


def study_choices(keep: int | None = None) -> list[tuple[str, int]]:
    """The study picker's choices: studies not archived, and ``keep`` (the current one) even
    when it is."""
    return [
        (f"#{s.id} {s.name}" + (" (archived)" if s.archived else ""), s.id)
        for s in studies.list_studies()
        if not s.archived or s.id == keep
    ]


def about_md(study_id: int) -> str:
    """A study as its page shows it: description, task, models, splits and rounds (escaped)."""
    from teachlab.rounds import rounds as study_rounds

    study = studies.get_study(study_id)
    config = StudyConfig.from_dict(study.config)
    defaults = StudyConfig()
    changed = [
        f"{md(LABELS.get(f.name, f.name))} **{md(_value(f, getattr(config, f.name)))}**"
        for f in fields(StudyConfig)
        if getattr(config, f.name) != getattr(defaults, f.name)
    ]
    splits = ", ".join(
        f"{k} {len(v)}" for k, v in (study.splits or {}).items() if isinstance(v, list)
    )
    lines = [
        f"### #{study.id} {md(study.name)}" + (" _(archived)_" if study.archived else ""),
        md(study.description) or "_No description._",
        f"- **Task** `{esc(study.task_ref)}` · **splits** {splits or '–'}",
        f"- **Teacher** `{esc(study.teacher)}` · **student** `{esc(study.student)}` · "
        f"**backend** {esc(study.backend)} · **seed** {study.seed} · created "
        f"{study.created_at:%Y-%m-%d %H:%M}",
        "- **Settings that differ from TeachLab's defaults**: "
        + ("; ".join(changed) if changed else "none"),
        "",
        "| round | status | teacher adapter | student adapter |",
        "|---|---|---|---|",
    ]
    for r in study_rounds(study_id):
        lines.append(
            f"| {r.index} | {esc(r.status)} | `{esc(r.teacher_adapter or 'base')}` | "
            f"`{esc(r.student_adapter or 'base')}` |"
        )
    return "\n".join(lines)


def settings_frame(study_id: int | None) -> pd.DataFrame:
    columns = ["setting", "name", "value", "default", "editable"]
    if not study_id:
        return pd.DataFrame([], columns=columns)
    config = StudyConfig.from_dict(studies.get_study(study_id).config)
    defaults = StudyConfig()
    rows = [
        (
            LABELS.get(f.name, f.name),
            f.name,
            str(_value(f, getattr(config, f.name))),
            str(_value(f, getattr(defaults, f.name))),
            "yes" if f.name in studies.EDITABLE_SETTINGS else "",
        )
        for f in fields(StudyConfig)
    ]
    return pd.DataFrame(rows, columns=columns)


# The create form's settings, grouped as a researcher thinks of them, the common ones first
# and open; every StudyConfig field is in exactly one group (a test keeps it so).
GROUPS: list[tuple[str, bool, list[str]]] = [
    (
        "Sizes",
        True,
        [
            "n_questions",
            "n_rationales",
            "n_probe",
            "n_test",
            "n_tailored",
            "n_seed",
            "questions_per_call",
        ],
    ),
    (
        "Teacher",
        False,
        [
            "strategies",
            "question_temperature",
            "rationale_temperature",
            "max_new_tokens",
            "prefill",
            "scaffold",
            "force_answer",
        ],
    ),
    ("Scoring", False, ["scorer", "probe_selection"]),
    (
        "Pairs",
        False,
        [
            "pair_rule",
            "pair_metric",
            "label_balanced",
            "quantile",
            "min_margin",
            "max_pairs_per_prompt",
            "use_unreviewed",
        ],
    ),
    (
        "Training (DPO aligns the teacher, SFT distils the student)",
        False,
        [
            "dpo_lr",
            "dpo_beta",
            "dpo_epochs",
            "dpo_batch_size",
            "dpo_max_steps",
            "sft_lr",
            "sft_epochs",
            "sft_batch_size",
            "sft_max_steps",
            "lora",
            "lora_r",
            "save_steps",
            "gradient_checkpointing",
            "load_in_4bit",
            "num_processes",
            "accelerate_config",
        ],
    ),
    ("Evaluation", False, ["eval_shots", "bootstrap", "lm_eval_tasks"]),
]
LABELS = {
    "n_questions": "Questions per round",
    "n_rationales": "Rationales per question",
    "n_probe": "Probe items",
    "n_test": "Test items",
    "n_tailored": "Tailored examples",
    "n_seed": "Seed questions shown",
    "questions_per_call": "Questions per teacher call",
    "strategies": "Reasoning strategies",
    "question_temperature": "Question temperature",
    "rationale_temperature": "Rationale temperature",
    "max_new_tokens": "Max new tokens",
    "prefill": "Prefill the format",
    "scaffold": "Scaffold questions field by field",
    "force_answer": "Force an answer",
    "scorer": "Scorer",
    "probe_selection": "Probe selection",
    "pair_rule": "Pair rule",
    "pair_metric": "Pair on",
    "label_balanced": "Label-balanced pairs",
    "quantile": "ARTE quantile",
    "min_margin": "Least margin (margin rule)",
    "max_pairs_per_prompt": "Pairs per prompt (most)",
    "use_unreviewed": "Train on unreviewed pairs",
    "dpo_lr": "DPO learning rate",
    "dpo_beta": "DPO beta",
    "dpo_epochs": "DPO epochs",
    "dpo_batch_size": "DPO batch size",
    "dpo_max_steps": "DPO steps (most)",
    "sft_lr": "SFT learning rate",
    "sft_epochs": "SFT epochs",
    "sft_batch_size": "SFT batch size",
    "sft_max_steps": "SFT steps (most)",
    "lora": "LoRA adapters",
    "gradient_checkpointing": "Gradient checkpointing",
    "load_in_4bit": "4-bit base (QLoRA)",
    "num_processes": "Training processes",
    "accelerate_config": "accelerate config file",
    "lora_r": "LoRA rank",
    "save_steps": "Checkpoint every (steps)",
    "eval_shots": "Few-shot demonstrations",
    "bootstrap": "Bootstrap resamples",
    "lm_eval_tasks": "lm-evaluation-harness tasks",
}
FIRST_PRESET = next(iter(studies.PRESETS))


def label_of(name: str) -> str:
    return f"{LABELS.get(name, name.replace('_', ' '))} ({name})"


def _info(f: Any) -> str:
    meta = f.metadata
    bounds = f" Range {meta['min']:g}–{meta['max']:g}." if "min" in meta else ""
    return f"{meta['help']}{bounds}"


def _value(f: Any, value: Any) -> Any:
    """A setting's value as its widget shows it."""
    if isinstance(value, tuple) and f.name != "strategies":
        return ", ".join(value)
    return list(value) if isinstance(value, tuple) else value


def _widget(f: Any, value: Any) -> gr.components.Component:
    """The setting's widget, labelled in words with its name, its help and range below. Number
    boxes carry no minimum or maximum: StudyConfig checks the range and names the setting
    (Gradio's own check would say only "greater than maximum value")."""
    meta, default = f.metadata, f.default
    label, info, shown = label_of(f.name), _info(f), _value(f, value)
    if "choices" in meta:
        return gr.Dropdown(list(meta["choices"]), value=shown, label=label, info=info)
    if isinstance(default, bool):
        return gr.Checkbox(value=shown, label=label, info=info)
    if isinstance(default, int):
        return gr.Number(value=shown, precision=0, label=label, info=info)
    if isinstance(default, float):
        return gr.Number(value=shown, label=label, info=info)
    if f.name == "strategies":
        return gr.CheckboxGroup(list(STRATEGY_NAMES), value=shown, label=label, info=info)
    return gr.Textbox(value=str(shown), label=label, info=info)


def settings_problems(names: list[str], values: tuple[Any, ...]) -> list[tuple[str, str]]:
    """Each setting's own problem (its type and range), named by its label; then the problems
    between settings."""
    by_name = {f.name: f for f in fields(StudyConfig)}
    problems, typed = [], {}
    for name, value in zip(names, values, strict=True):
        try:
            one = StudyConfig(**{name: coerce(by_name[name], value)})
            typed[name] = getattr(one.validate(), name)
        except (ConfigError, TypeError) as exc:
            problems.append((LABELS.get(name, name), str(exc)))
    if not problems:
        try:
            StudyConfig.from_dict(typed)
        except ConfigError as exc:
            problems.append(("", str(exc)))
    return problems


def build(state: AppState, current_study: gr.State) -> None:
    gr.Markdown(
        "TeachLab studies how a teacher model should teach a student model. The teacher drafts "
        "questions and rationales for a task; the student scores each draft by how much it "
        "helps it answer a probe set; you review the preference pairs the scores make; DPO "
        "aligns the teacher to them; the aligned teacher writes tailored data, SFT distils the "
        "student on it, and the Progress page shows what each round bought.\n\n"
        "## Studies\nA study fixes a task, a teacher, a student and their settings. Select "
        "one to work on it in the other pages; the line above every page names it and its "
        "next step.",
        elem_id="studies-intro",
    )
    with gr.Row():
        # value=None at build time; each page load selects the newest study in the dropdown and
        # the session's current-study state together, so no page shows a choice it has not taken.
        pick = gr.Dropdown(
            study_choices(), value=None, label="Current study", scale=3, interactive=True
        )
        refresh = gr.Button("Refresh", scale=0)
    signal = gr.Markdown(elem_id="studies-signal")
    with gr.Accordion("This study", open=True):
        about = gr.Markdown(elem_id="study-about")
        with gr.Accordion("All its settings", open=False):
            settings_table = gr.Dataframe(
                settings_frame(None), interactive=False, wrap=True, elem_id="study-settings"
            )
        with gr.Accordion("Change, archive or delete it (admins)", open=False) as manage_box:
            with gr.Row():
                new_name = gr.Textbox(label="Name", elem_id="study-edit-name")
                description = gr.Textbox(
                    label="Description", lines=2, scale=3, elem_id="study-edit-description"
                )
            with gr.Row():
                edit_key = gr.Dropdown(
                    [(label_of(k), k) for k in studies.EDITABLE_SETTINGS],
                    value=None,
                    label="Change a setting",
                    info="Only those that steer training and evaluation still to come; "
                    "duplicate the study to change the rest.",
                    elem_id="study-edit-key",
                )
                edit_value = gr.Textbox(label="New value", elem_id="study-edit-value")
            save = gr.Button("Save changes", elem_id="study-save")
            with gr.Row():
                archive = gr.Button("Archive", elem_id="study-archive")
                show_archived = gr.Checkbox(
                    False,
                    label="List archived studies in the picker",
                    elem_id="study-show-archived",
                )
            gone = gr.Markdown(elem_id="study-footprint")
            with gr.Row():
                confirm = gr.Textbox(
                    label="Type the study's name to delete it", elem_id="study-delete-confirm"
                )
                delete = gr.Button("Delete study", variant="stop", elem_id="study-delete")
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
        preset = gr.Dropdown(
            list(studies.PRESETS),
            value=FIRST_PRESET,
            label="Start from",
            info="Fills every setting below; change any of them after.",
            elem_id="create-preset",
        )
        by_name = {f.name: f for f in fields(StudyConfig)}
        start = studies.preset_config(FIRST_PRESET)
        config_names: list[str] = []
        widgets = []
        for title, open_, names in GROUPS:
            with gr.Accordion(title, open=open_):
                for at in range(0, len(names), 4):
                    with gr.Row():
                        for key in names[at : at + 4]:
                            widgets.append(_widget(by_name[key], getattr(start, key)))
                            config_names.append(key)
        check = gr.Markdown(elem_id="create-check")
        with gr.Row():
            create = gr.Button("Create study", variant="primary", elem_id="create-study")
            created = gr.Markdown(elem_id="create-message")

    with gr.Row() as dup_row:
        dup_name = gr.Textbox(label="Duplicate the current study as", placeholder="demo-2")
        dup = gr.Button("Duplicate")
    state.for_admins(create_box, dup_row, manage_box)

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
        config = dict(zip(config_names, values, strict=True))
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
        gr.Info(f"Created study #{study.id} {esc(study.name)}; it is now the current study.")
        return (
            f"Created study **#{study.id} {md(study.name)}** on `{esc(study.task_ref)}`.",
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

    def fill_preset(name: str) -> tuple[Any, ...]:
        try:
            config = studies.preset_config(name)
        except ConfigError as exc:
            return (f"⚠ {md(str(exc))}", *(gr.skip() for _ in widgets))
        return ("", *(_value(by_name[n], getattr(config, n)) for n in config_names))

    preset.input(fill_preset, [preset], [check, *widgets], api_visibility="private")

    def check_settings(*values: Any) -> str:
        problems = settings_problems(config_names, values)
        if not problems:
            return ""
        lines = [
            f"- **{md(label)}**: {md(text)}" if label else f"- {md(text)}"
            for label, text in problems
        ]
        return "**Fix before creating:**\n" + "\n".join(lines)

    gr.on(
        [w.change for w in widgets],
        check_settings,
        widgets,
        [check],
        api_visibility="private",
        show_progress="hidden",
    )

    @ui_errors
    def do_duplicate(request: gr.Request, study_id: int | None, new_name: str) -> tuple[Any, ...]:
        state.require_admin(request)
        if not study_id:
            raise gr.Error("Select a study to duplicate first.")
        study = studies.duplicate_study(int(study_id), new_name)
        return (
            studies_frame(),
            gr.Dropdown(choices=study_choices(study.id), value=study.id),
            study.id,
        )

    dup.click(
        do_duplicate,
        [current_study, dup_name],
        [table, pick, current_study],
        api_name="duplicate_study",
    )

    def do_refresh(study_id: int | None) -> tuple[Any, ...]:
        return studies_frame(), gr.Dropdown(choices=study_choices(study_id), value=study_id)

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

    # The study whose name and description fill the edit form: a repeated change event for the
    # same study (a slow page load answers late) must not overwrite what the admin is typing.
    form_for = gr.State(None)
    study_outputs = [about, settings_table, new_name, description, archive, gone, form_for]

    def show_study(study_id: int | None, filled_for: int | None = None) -> tuple[Any, ...]:
        if not study_id:
            return ("", settings_frame(None), "", "", gr.Button("Archive"), "", None)
        study = studies.get_study(int(study_id))
        keep = filled_for == study.id
        return (
            about_md(int(study_id)),
            settings_frame(int(study_id)),
            gr.skip() if keep else study.name,
            gr.skip() if keep else study.description,
            gr.Button("Bring back from the archive" if study.archived else "Archive"),
            "Deleting it removes " + studies.footprint(int(study_id)).describe() + "; exports "
            "already written stay. Archiving hides it instead, and can be undone.",
            study.id,
        )

    current_study.change(
        ui_errors(show_study),
        [current_study, form_for],
        study_outputs,
        api_visibility="private",
        show_progress="hidden",
    )

    @ui_errors
    def do_save(
        request: gr.Request,
        study_id: int | None,
        name: str,
        text: str,
        key: str | None,
        value: str,
    ) -> tuple[Any, ...]:
        state.require_admin(request)
        if not study_id:
            raise gr.Error("Select a study first.")
        changes = {key: StudyConfig.parse(key, value)} if key else None
        if key and not (value or "").strip():
            raise ConfigError(f"Give a new value for {label_of(key)}, or clear the setting choice.")
        study = studies.edit_study(int(study_id), name=name, description=text, settings=changes)
        gr.Info(f"Saved study #{study.id} {esc(study.name)}.")
        return (
            *show_study(study.id),
            studies_frame(),
            gr.Dropdown(choices=study_choices(study.id), value=study.id),
            "",
        )

    saved = save.click(
        do_save,
        [current_study, new_name, description, edit_key, edit_value],
        [*study_outputs, table, pick, edit_value],
        api_name="edit_study",
    )

    @ui_errors
    def do_archive(request: gr.Request, study_id: int | None, listed: bool) -> tuple[Any, ...]:
        state.require_admin(request)
        if not study_id:
            raise gr.Error("Select a study first.")
        was = studies.get_study(int(study_id)).archived
        study = studies.archive_study(int(study_id), not was)
        gr.Info(
            f"Study #{study.id} is archived: hidden from the picker, kept whole."
            if study.archived
            else f"Study #{study.id} is back from the archive."
        )
        return (
            *show_study(study.id),
            studies_frame(),
            gr.Dropdown(choices=_choices(listed, study.id), value=study.id),
        )

    archived = archive.click(
        do_archive,
        [current_study, show_archived],
        [*study_outputs, table, pick],
        api_name="archive_study",
    )
    state.study_edits += [saved, archived]

    def _choices(listed: bool, keep: int | None) -> list[tuple[str, int]]:
        if listed:
            return [(label, i) for label, i in _all_choices()]
        return study_choices(keep)

    def _all_choices() -> list[tuple[str, int]]:
        return [
            (f"#{s.id} {s.name}" + (" (archived)" if s.archived else ""), s.id)
            for s in studies.list_studies()
        ]

    def list_archived(listed: bool, study_id: int | None) -> Any:
        return gr.Dropdown(choices=_choices(listed, study_id), value=study_id)

    show_archived.change(
        list_archived, [show_archived, current_study], [pick], api_visibility="private"
    )

    @ui_errors
    def do_delete(request: gr.Request, study_id: int | None, typed: str) -> tuple[Any, ...]:
        state.require_admin(request)
        if not study_id:
            raise gr.Error("Select a study first.")
        name = studies.get_study(int(study_id)).name
        removed = studies.delete_study(int(study_id), typed)
        gr.Info(f"Deleted study {esc(name)}: {esc(removed.describe())}.")
        choices = study_choices()
        nxt = max((i for _, i in choices), default=None)
        return studies_frame(), gr.Dropdown(choices=choices, value=nxt), nxt, ""

    delete.click(
        do_delete,
        [current_study, confirm],
        [table, pick, current_study, confirm],
        api_name="delete_study",
    )

    @ui_errors
    def show_signal(study_id: int | None) -> str:
        return signal_panel(current_round(int(study_id)).id) if study_id else ""

    current_study.change(
        show_signal, [current_study], [signal], api_name="studies_signal", show_progress="hidden"
    )
    refresh.click(show_signal, [current_study], [signal], api_visibility="private")
