"""The dataset card (README.md), the manifest and LLaMA-Factory's ``dataset_info.json`` entry.

The card is what a reader of a pushed dataset sees: the study's configuration, models, prompt
templates, counts, dates and TeachLab version, and which columns to train on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from teachlab import __version__
from teachlab.config import StudyConfig
from teachlab.db import Round, Study
from teachlab.prompts import STRATEGIES, TEMPLATES

TITLES = {"dpo": "DPO preference pairs", "sft": "SFT tailored set", "drafts": "raw scored drafts"}
TAGS = {"dpo": ["dpo", "preference"], "sft": ["sft"], "drafts": ["teacher-drafts"]}

FORM_NOTES = {
    "standard": """\
**Form: trl standard (text).** `prompt` is the exact text the teacher was given, chat template
and any prefill included, byte for byte; `chosen`/`rejected` are completions of it. trl's
`DPOTrainer` takes the file unchanged; do not apply a chat template again. `prompt_text`,
`chosen_text`, `rejected_text` repeat the same texts (they are in every TeachLab export).""",
    "conversational": """\
**Form: trl conversational.** `prompt` is the message list that the teacher's chat template turns
into the exact generation prompt (checked byte for byte at export); `chosen`/`rejected` are
one assistant message each. A prefill the teacher's turn began with opens the assistant message.
The byte-exact texts are in `prompt_text`, `chosen_text`, `rejected_text`: use those to train
on exactly what the teacher saw.""",
}

DPO_COLUMNS = """\
| column | meaning |
|---|---|
| `prompt`, `chosen`, `rejected` | what trl's `DPOTrainer` reads (see the form above) |
| `prompt_text`, `chosen_text`, `rejected_text` | the byte-exact texts |
| `prompt_id` | sha256 of `prompt_text` (UTF-8, hex) |
| `chosen_rating`, `rejected_rating` | the student's scores of each text ({score}) |
| `margin` | `chosen_rating - rejected_rating` (negative: a human overrode the student) |
| `chosen_model`, `rejected_model` | the teacher that wrote each text (`+adapter:<sha256 prefix>`) |
| `level` | `question` or `rationale` |
| `rule` | the pair-building rule |
| `source` | `auto` (student scores) or `human` (a reviewer swapped or edited it) |
| `status` | `proposed`, `approved`, `overridden`, `edited` (or `rejected`) |
| `annotator` | the last reviewer to decide (empty: undecided) |
| `round`, `rank`, `pair_id` | round index, curriculum position, TeachLab's pair id |"""

SFT_COLUMNS = """\
| column | meaning |
|---|---|
| `messages` | user: the tailored question; assistant: the aligned teacher's rationale |
| `prompt_id` | sha256 of the user message |
| `target`, `answer` | the question's target and the answer inside `<ans>…</ans>` |
| `strategy`, `teacher`, `round`, `question_id`, `draft_id` | provenance |"""

DRAFT_COLUMNS = """\
Every draft (question or rationale) with its prompt, output, parse status, `score` (rationale:
probe accuracy; question: mean of its rationales), `margin_score` and `probes` (per-probe
prediction, correctness, gold log-probability and margin)."""


def _yaml(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON scalar is valid YAML


def front_matter(kind: str, study: Study, data_files: str, rows: int) -> str:
    size = "n<1K" if rows < 1000 else "1K<n<10K" if rows < 10000 else "10K<n<100K"
    lines = [
        "---",
        f"pretty_name: {_yaml(f'TeachLab {study.name}: {TITLES[kind]}')}",
        "tags:",
        *(f"- {t}" for t in ["teachlab", *TAGS[kind]]),
        "size_categories:",
        f"- {size}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: {_yaml(data_files)}",
        "---",
    ]
    return "\n".join(lines)


def _when(dt: datetime | None) -> str:
    return dt.isoformat(timespec="seconds") if dt else ""


def _block(data: Any) -> str:
    return "```json\n" + json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n```"


def _templates() -> str:
    parts = []
    for t in TEMPLATES.values():
        parts.append(f"#### `{t.tag}`\n\n```jinja\n{t.source}\n```")
    strategies = "\n".join(f"- `{name}`: {text}" for name, text in STRATEGIES.items())
    parts.append(f"#### Strategy system prompts\n\n{strategies}")
    return "\n\n".join(parts)


def dataset_card(
    *,
    kind: str,
    form: str,
    fmt: str,
    study: Study,
    rounds: Sequence[Round],
    rows: int,
    counts: Mapping[str, Mapping[str, int]],
    selection: Mapping[str, Any],
    data_files: str,
    created: datetime,
    notes: Sequence[str] = (),
) -> str:
    """The README.md of an export."""
    round_rows = "\n".join(
        f"| {r.index} | `{r.teacher}` | `{r.teacher_adapter or '(base)'}` | `{r.student}` | "
        f"`{r.student_adapter or '(base)'}` | {r.status} | {_when(r.created_at)} |"
        for r in rounds
    )
    load = {
        "jsonl": f'load_dataset("json", data_files="{data_files}", split="train")',
        "parquet": f'load_dataset("parquet", data_files="{data_files}", split="train")',
        "datasets": 'load_from_disk("<this folder>")',
    }[fmt]
    columns = {"dpo": DPO_COLUMNS, "sft": SFT_COLUMNS, "drafts": DRAFT_COLUMNS}[kind]
    if kind == "dpo":
        columns = columns.replace("{score}", StudyConfig.from_dict(study.config).score_meaning)
    sections = [
        front_matter(kind, study, data_files, rows),
        f"# TeachLab study `{study.name}`: {TITLES[kind]}",
        f"{rows} rows exported by TeachLab {__version__} on {_when(created)} from study "
        f"`{study.name}` (created {_when(study.created_at)}), task `{study.task_ref}`.",
        f"Load it with `datasets`: `{load}`.",
    ]
    if kind == "dpo":
        sections.append(FORM_NOTES[form])
        if fmt != "datasets":
            sections.append(
                "`dataset_info.json` registers the file with LLaMA-Factory (`ranking: true`, "
                "columns `prompt_text`/`chosen_text`/`rejected_text`). Those texts already carry "
                "the teacher's chat template: train with a LLaMA-Factory template that adds no "
                "markup of its own."
            )
    sections += [f"## Columns\n\n{columns}"]
    if notes:
        sections.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes))
    sections += [
        f"## Selection\n\n{_block(selection)}",
        "## Counts\n\n"
        + "\n".join(
            f"- **{key}**: " + ", ".join(f"{v}: {n}" for v, n in values.items())
            for key, values in counts.items()
        ),
        "## Models\n\n"
        f"Study teacher `{study.teacher}`, student `{study.student}`, backend `{study.backend}`, "
        f"seed {study.seed}.\n\n"
        "| round | teacher | teacher adapter | student | student adapter | status | created |\n"
        "|---|---|---|---|---|---|---|\n" + round_rows,
        f"## Study configuration\n\n{_block(study.config)}",
        "## Splits\n\n"
        + _block({k: (len(v) if isinstance(v, list) else v) for k, v in study.splits.items()}),
        f"## Prompt templates\n\n{_templates()}",
        f"## Provenance\n\nTeachLab {__version__}; exported {_when(created)} (UTC).",
    ]
    return "\n\n".join(sections) + "\n"


def llama_factory_entry(name: str, data_file: str) -> dict[str, Any]:
    """LLaMA-Factory's ``dataset_info.json`` entry for a DPO export (alpaca ranking format)."""
    return {
        name: {
            "file_name": data_file,
            "formatting": "alpaca",
            "ranking": True,
            "columns": {
                "prompt": "prompt_text",
                "chosen": "chosen_text",
                "rejected": "rejected_text",
            },
        }
    }
