"""Write an export: a selection's rows as JSONL, Parquet or a ``datasets`` folder, with its card.

The default DPO form is trl's standard text form (byte-exact prompts); ``conversational=True``
rebuilds message lists where every prompt allows it, and otherwise falls back with a card note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from teachlab import __version__
from teachlab.db.tables import utcnow
from teachlab.errors import ConfigError, DataError
from teachlab.export import card, rows
from teachlab.export.paths import atomic_folder, export_dir, folder_files

FORMATS = ("jsonl", "parquet", "datasets")
MANIFEST = "teachlab_export.json"
CARD = "README.md"
LLAMA_FACTORY = "dataset_info.json"
COUNT_KEYS = {
    "dpo": ("level", "status", "source", "rule", "round"),
    "sft": ("round", "strategy"),
    "drafts": ("kind", "phase", "status", "round"),
}


@dataclass(frozen=True)
class ExportResult:
    name: str
    path: Path
    kind: str
    format: str
    form: str  # standard | conversational (DPO); standard otherwise
    rows: int
    files: tuple[tuple[str, int], ...]  # (relative path, bytes)
    card: str
    notes: tuple[str, ...]


def default_name(study: str, round_index: int | None, kind: str, fmt: str, when: datetime) -> str:
    where = "all" if round_index is None else f"r{round_index}"
    return f"{study}-{where}-{kind}-{fmt}-{when:%Y%m%d-%H%M%S}"


def teacher_tokenizer(ref: str) -> Any:
    from transformers import AutoTokenizer

    from teachlab.models import PLAIN_CHAT_TEMPLATE, fetch

    tokenizer = AutoTokenizer.from_pretrained(fetch(ref))
    if not tokenizer.chat_template:  # the same fallback the teacher generated with
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def _conversational(
    loaded: rows.Loaded, data: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str, list[str]]:
    tokenizers: dict[str, Any] = {}
    by_round = {}
    for rnd in loaded.rounds.values():
        if rnd.teacher not in tokenizers:
            tokenizers[rnd.teacher] = teacher_tokenizer(rnd.teacher)
        by_round[rnd.index] = tokenizers[rnd.teacher]
    out, why = rows.conversational(data, by_round, rows.pair_prefills(loaded))
    if out is None:
        note = f"Exported in trl's standard text form, not conversational: {why}."
        return data, "standard", [note]
    return out, "conversational", []


def _write_data(folder: Path, kind: str, fmt: str, form: str, data: list[dict[str, Any]]) -> str:
    """Write the rows; returns the data file pattern the card's ``configs`` point to."""
    if fmt == "jsonl":
        path = folder / f"{kind}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            for row in data:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path.name
    from datasets import Dataset

    dataset = Dataset.from_list(data, features=rows.features(kind, form))
    if fmt == "parquet":
        dataset.to_parquet(str(folder / f"{kind}.parquet"))
        return f"{kind}.parquet"
    dataset.save_to_disk(str(folder))
    return "data-*.arrow"


def export(
    selection: rows.Selection,
    kind: str = "dpo",
    fmt: str = "jsonl",
    *,
    name: str | None = None,
    conversational: bool = False,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``selection`` as ``kind`` (dpo | sft | drafts) in ``fmt`` (jsonl | parquet | datasets).

    Written into ``<exports>/<name>`` (sanitised; default: study, round, kind, format, time) as
    the data, ``README.md`` (the dataset card), ``teachlab_export.json`` (manifest) and, for
    DPO as JSONL or Parquet, LLaMA-Factory's ``dataset_info.json``. Atomic: all or nothing.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if conversational and kind != "dpo":
        raise ConfigError("Only DPO exports have a conversational form (SFT is always messages).")
    loaded = rows.load(selection, kind)
    build = {"dpo": rows.dpo_rows, "sft": rows.sft_rows, "drafts": rows.draft_rows}[kind]
    data = build(loaded)
    if not data:
        raise DataError(
            f"Nothing to export: study {loaded.study.name!r} has no {kind} rows matching "
            f"{selection.describe(kind)}; widen the filter or run the stage that makes them."
        )
    form, notes = "standard", list[str]()
    if conversational:
        data, form, notes = _conversational(loaded, data)
    created = utcnow()
    name = name or default_name(loaded.study.name, selection.round, kind, fmt, created)
    target = export_dir(name)
    with atomic_folder(target, overwrite=overwrite) as tmp:
        data_files = _write_data(tmp, kind, fmt, form, data)
        if kind == "dpo" and fmt != "datasets":
            entry = card.llama_factory_entry(target.name, data_files)
            (tmp / LLAMA_FACTORY).write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
        text = card.dataset_card(
            kind=kind,
            form=form,
            fmt=fmt,
            study=loaded.study,
            rounds=sorted(loaded.rounds.values(), key=lambda r: r.index),
            rows=len(data),
            counts=rows.counts(data, *COUNT_KEYS[kind]),
            selection=selection.describe(kind),
            data_files=data_files,
            created=created,
            notes=notes,
        )
        (tmp / CARD).write_text(text, encoding="utf-8")
        manifest = {
            "teachlab_version": __version__,
            "kind": kind,
            "format": fmt,
            "form": form,
            "rows": len(data),
            "data_files": data_files,
            "study": {"id": loaded.study.id, "name": loaded.study.name},
            "selection": selection.describe(kind),
            "created": created.isoformat(timespec="seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return ExportResult(
        name=target.name,
        path=target,
        kind=kind,
        format=fmt,
        form=form,
        rows=len(data),
        files=tuple(folder_files(target)),
        card=text,
        notes=tuple(notes),
    )
