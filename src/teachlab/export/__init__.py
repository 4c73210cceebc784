"""Exports and imports: DPO pairs, the SFT tailored set and raw drafts as JSONL, Parquet or a
``datasets`` folder, each with a dataset card; push to the Hub; import pairs or SFT data back.

A DPO export is trl's standard text form by default (the prompt is byte-identical to what the
teacher saw); ``conversational=True`` gives trl's message form where the prompts allow it.
"""

from __future__ import annotations

from teachlab.export.build import CARD, FORMATS, LLAMA_FACTORY, MANIFEST, ExportResult, export
from teachlab.export.hub import PushPlan, hub_token, plan_push, plan_summary, push_to_hub
from teachlab.export.importer import ImportResult, import_pairs, import_sft, load_records
from teachlab.export.paths import export_dir, list_exports, safe_name, zip_export
from teachlab.export.rows import KINDS, PAIR_STATUSES, SOURCES, Selection, messages_from_prompt

__all__ = [
    "CARD",
    "FORMATS",
    "KINDS",
    "LLAMA_FACTORY",
    "MANIFEST",
    "PAIR_STATUSES",
    "SOURCES",
    "ExportResult",
    "ImportResult",
    "PushPlan",
    "Selection",
    "export",
    "export_dir",
    "hub_token",
    "import_pairs",
    "import_sft",
    "list_exports",
    "load_records",
    "messages_from_prompt",
    "plan_push",
    "plan_summary",
    "push_to_hub",
    "safe_name",
    "zip_export",
]
