"""Load a DPO or SFT dataset in TeachLab's export format into a study's current round.

The schema is checked whole before anything is written (missing and unknown columns, types,
allowed values); a mismatch is one ``DataError`` that lists every problem and the schema.
Imports are idempotent: a pair or example already in the round is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sqlmodel import select

from teachlab.db import AnnotationEvent, Draft, Pair, write_session
from teachlab.errors import DataError
from teachlab.export.build import MANIFEST
from teachlab.export.rows import LEVELS, PAIR_STATUSES, SOURCES, sha256
from teachlab.parsing import loads
from teachlab.prompts import render_chat, split_options

Check = tuple[str, Callable[[Any], bool]]
MAX_PROBLEMS = 8


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _opt_text(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _opt_number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _opt_int(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _messages(v: Any) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(
            isinstance(m, Mapping) and _text(m.get("role")) and _text(m.get("content")) for m in v
        )
    )


def _turn(v: Any) -> bool:
    return _text(v) or _messages(v)


def _one_of(values: Sequence[str]) -> Check:
    return (f"null or one of {', '.join(values)}", lambda v: v is None or v in values)


TURN: Check = ("text or a list of {role, content} messages", _turn)
TEXT: Check = ("text or null", _opt_text)
NUMBER: Check = ("number or null", _opt_number)
INT: Check = ("integer or null", _opt_int)
DPO_REQUIRED = ("prompt", "chosen", "rejected")
DPO_SCHEMA: dict[str, Check] = {
    "prompt": TURN,
    "chosen": TURN,
    "rejected": TURN,
    "prompt_text": TEXT,
    "chosen_text": TEXT,
    "rejected_text": TEXT,
    "prompt_id": TEXT,
    "chosen_rating": NUMBER,
    "rejected_rating": NUMBER,
    "margin": NUMBER,
    "chosen_model": TEXT,
    "rejected_model": TEXT,
    "level": _one_of(LEVELS),
    "rule": TEXT,
    "source": _one_of(SOURCES),
    "status": _one_of(PAIR_STATUSES),
    "annotator": TEXT,
    "round": INT,
    "rank": INT,
    "pair_id": INT,
}
SFT_REQUIRED = ("messages",)
SFT_SCHEMA: dict[str, Check] = {
    "messages": ("a user message then an assistant message, as {role, content}", _messages),
    "prompt_id": TEXT,
    "target": TEXT,
    "answer": TEXT,
    "strategy": TEXT,
    "teacher": TEXT,
    "round": INT,
    "question_id": INT,
    "draft_id": INT,
}


@dataclass(frozen=True)
class ImportResult:
    kind: str
    study: str
    round: int
    added: int
    skipped: int  # already in the round


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL/JSON/Parquet file, a ``datasets`` folder or a TeachLab export folder."""
    path = Path(path)
    if path.is_dir():
        manifest = path / MANIFEST
        if manifest.is_file() and not (path / "state.json").is_file():
            try:
                info = loads(manifest.read_text(encoding="utf-8"), manifest.name)
            except (ValueError, OSError) as exc:
                raise DataError(
                    f"Cannot read {manifest}: {exc}; restore the export folder or point to its "
                    "data file."
                ) from exc
            data_files = info.get("data_files") if isinstance(info, dict) else None
            if not isinstance(data_files, str) or not data_files.strip():
                raise DataError(
                    f'{manifest} names no data file (no "data_files" text); restore the '
                    "export folder or point to its data file."
                )
            return load_records(path / Path(data_files).name)
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            from datasets import DatasetDict, load_from_disk

            try:
                loaded = load_from_disk(str(path))
                if isinstance(loaded, DatasetDict):
                    loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
                return list(loaded.to_list())
            except (ValueError, OSError, KeyError, TypeError, StopIteration) as exc:
                # The library's own errors for a damaged folder: missing or garbled state and
                # data files, no splits.
                raise DataError(
                    f"Cannot read {path} as a `datasets` folder ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); save it again with save_to_disk, or point to a JSONL or "
                    "Parquet file."
                ) from exc
        raise DataError(
            f"{path} is neither a `datasets` folder (save_to_disk) nor a TeachLab export; "
            "point to the folder's data file, or to a JSONL or Parquet file."
        )
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_table(path).to_pylist())
        if suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            if text.lstrip().startswith("["):
                return list(loads(text, path.name))
            # Split on "\n" only: exports keep U+2028 and friends inside strings, which
            # splitlines() would split on.
            return [
                loads(line, f"{path.name} line {i}")
                for i, line in enumerate(text.split("\n"), 1)
                if line.strip()
            ]
    except (ValueError, OSError) as exc:
        raise DataError(f"Cannot read {path.name}: {exc}; is it a valid {suffix} file?") from exc
    raise DataError(f"{path.name}: unsupported file type; use .jsonl, .json or .parquet.")


def _expected(schema: Mapping[str, Check], required: Sequence[str]) -> str:
    return "; ".join(
        f"{name} ({'required' if name in required else 'optional'}: {desc})"
        for name, (desc, _) in schema.items()
    )


def validate(
    records: Sequence[Mapping[str, Any]],
    schema: Mapping[str, Check],
    required: Sequence[str],
    what: str,
    source: str,
) -> None:
    """Raise one DataError naming every missing/unknown column and the first bad values."""
    if not records:
        raise DataError(f"{source} has no rows; nothing to import.")
    if not all(isinstance(r, Mapping) for r in records):
        raise DataError(f"{source}: every row must be an object of columns.")
    present = {k for r in records for k in r}
    problems = []
    missing = [c for c in required if c not in present]
    unknown = sorted(present - set(schema))
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown columns: {', '.join(unknown)}")
    bad = []
    for i, row in enumerate(records):
        for name in required:
            if name in present and name not in row:
                bad.append(f"row {i} lacks {name}")
        for name, value in row.items():
            if name in schema and not schema[name][1](value):
                bad.append(f"row {i} {name}: expected {schema[name][0]}, got {value!r:.60}")
    if bad:
        more = f" (and {len(bad) - MAX_PROBLEMS} more)" if len(bad) > MAX_PROBLEMS else ""
        problems.append("; ".join(bad[:MAX_PROBLEMS]) + more)
    if problems:
        raise DataError(
            f"{source} does not match TeachLab's {what} schema: {' | '.join(problems)}. "
            f"Expected columns: {_expected(schema, required)}."
        )


def _assistant(messages: list[Mapping[str, str]], row: int) -> str:
    if any(m["role"] != "assistant" for m in messages):
        raise DataError(f"Row {row}: chosen and rejected must be assistant messages only.")
    return "".join(m["content"] for m in messages)


def pair_texts(row: Mapping[str, Any], i: int, tokenizer: Callable[[], Any]) -> tuple[str, ...]:
    """(prompt, chosen, rejected) as the exact texts: ``*_text`` columns first, else the turns."""
    names = ("prompt", "chosen", "rejected")
    if all(row.get(f"{n}_text") is not None for n in names):
        texts = tuple(row[f"{n}_text"] for n in names)
        if row.get("prompt_id") is not None and row["prompt_id"] != sha256(texts[0]):
            raise DataError(
                f"Row {i}: prompt_id is not the sha256 of prompt_text, so the texts were changed "
                "after export; restore the file or drop the prompt_id column."
            )
    elif all(isinstance(row[n], str) for n in names):
        texts = tuple(row[n] for n in names)
    elif all(isinstance(row[n], list) for n in names):
        # A conversation without its texts: the study's teacher template makes the prompt.
        prompt = render_chat(tokenizer(), row["prompt"])
        texts = (prompt, _assistant(row["chosen"], i), _assistant(row["rejected"], i))
    else:
        raise DataError(f"Row {i} mixes text and message forms in prompt/chosen/rejected.")
    if not texts[1].strip() or not texts[2].strip() or texts[1] == texts[2]:
        raise DataError(f"Row {i}: chosen and rejected must be non-empty and different texts.")
    return texts


def _margin(row: Mapping[str, Any]) -> float:
    if row.get("margin") is not None:
        return float(row["margin"])
    c, r = row.get("chosen_rating"), row.get("rejected_rating")
    return float(c) - float(r) if c is not None and r is not None else 0.0


def _target(study: int | str) -> tuple[Any, Any]:
    from teachlab.rounds import current_round, row_id
    from teachlab.studies import get_study

    s = get_study(study)
    return s, current_round(row_id(s))


def import_pairs(study: int | str, path: str | Path, *, annotator: str = "import") -> ImportResult:
    """Insert a DPO file's pairs into the study's current round (status from the file, else
    proposed); each new pair gets a ``create`` audit event by ``annotator``."""
    from teachlab.export.build import teacher_tokenizer

    path = Path(path)
    records = load_records(path)
    validate(records, DPO_SCHEMA, DPO_REQUIRED, "DPO", path.name)
    s, rnd = _target(study)
    tokenizer = cache(lambda: teacher_tokenizer(rnd.teacher))
    texts = [pair_texts(row, i, tokenizer) for i, row in enumerate(records)]
    added = skipped = 0
    with write_session() as session:
        stored = session.exec(
            select(Pair.level, Pair.prompt, Pair.chosen, Pair.rejected).where(
                Pair.round_id == rnd.id
            )
        ).all()
        seen = {(lv, sha256(p), sha256(c), sha256(r)) for lv, p, c, r in stored}
        for row, (prompt, chosen, rejected) in zip(records, texts, strict=True):
            level = row.get("level") or "question"
            key = (level, sha256(prompt), sha256(chosen), sha256(rejected))
            if key in seen:
                skipped += 1
                continue
            seen.add(key)
            pair = Pair(
                round_id=rnd.id,
                level=level,
                rule=row.get("rule") or "import",
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                chosen_score=row.get("chosen_rating"),
                rejected_score=row.get("rejected_rating"),
                margin=_margin(row),
                rank=row.get("rank") or 0,
                source=row.get("source") or "auto",
                status=row.get("status") or "proposed",
                annotator=row.get("annotator"),
                note=f"imported from {path.name}",
            )
            session.add(pair)
            session.flush()
            after = {"status": pair.status, "source": pair.source, "version": 1}
            session.add(
                AnnotationEvent(
                    pair_id=pair.id,  # type: ignore[arg-type]
                    annotator=annotator,
                    action="create",
                    after=after,
                    note=pair.note,
                )
            )
            added += 1
    return ImportResult("dpo", s.name, rnd.index, added, skipped)


def import_sft(study: int | str, path: str | Path) -> ImportResult:
    """Insert an SFT file's examples as tailored drafts (a question and its rationale each)."""
    from teachlab.score import answer_span

    path = Path(path)
    records = load_records(path)
    validate(records, SFT_SCHEMA, SFT_REQUIRED, "SFT", path.name)
    for i, row in enumerate(records):
        if [m["role"] for m in row["messages"]] != ["user", "assistant"]:
            raise DataError(
                f"Row {i} of {path.name}: messages must be one user message (the question) then "
                "one assistant message (the rationale)."
            )
    s, rnd = _target(study)
    added = skipped = 0
    with write_session() as session:
        keys = set(
            session.exec(
                select(Draft.idem_key).where(Draft.round_id == rnd.id, Draft.phase == "tailored")
            ).all()
        )
        for row in records:
            user, assistant = (m["content"] for m in row["messages"])
            digest = sha256(json.dumps([user, assistant], ensure_ascii=False))
            if f"import:{digest}" in keys:
                skipped += 1
                continue
            keys.add(f"import:{digest}")
            question_input, options = split_options(user)
            common = {"round_id": rnd.id, "phase": "tailored", "template_version": "import"}
            teacher = row.get("teacher") or ""
            question = Draft(
                **common,
                kind="question",
                idem_key=f"import:q:{digest}",
                raw_output=user,
                input=question_input,
                target=row.get("target"),
                choices=list(options),
                teacher=teacher,
            )
            session.add(question)
            session.flush()
            session.add(
                Draft(
                    **common,
                    kind="rationale",
                    parent_id=question.id,
                    idem_key=f"import:{digest}",
                    strategy=row.get("strategy"),
                    raw_output=assistant,
                    rationale=assistant,
                    answer=row.get("answer") or answer_span(assistant) or None,
                    teacher=teacher,
                )
            )
            added += 1
    return ImportResult("sft", s.name, rnd.index, added, skipped)
