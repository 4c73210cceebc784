"""Tasks from the user's own files: JSONL or CSV, validated line by line, and stored uploads.

Loading writes nothing; ``save_uploaded_task`` validates first, then stores a canonical JSONL
copy under ``<data_dir>/uploads/``.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from teachlab.errors import DataError
from teachlab.parsing import check_text, loads
from teachlab.settings import get_settings
from teachlab.tasks.model import Example, Task

#: Fewest examples a task can have: a few seed examples, probes and test items.
MIN_EXAMPLES = 10
#: How many problems one error message lists before "and N more".
MAX_REPORTED = 5
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
CHOICE_SEPARATOR = "|"

_FORMAT_HELP = (
    'JSONL: one object per line, {"input": "...", "target": "..."} with optional '
    '"choices": ["...", "..."] (the target must be one of them); CSV: a header row with '
    f"input,target and optional choices (separated by {CHOICE_SEPARATOR!r})."
)


@dataclass
class _Problems:
    """Problems found so far, each with the line and field it concerns."""

    items: list[str] = field(default_factory=list)

    def add(self, line: int, field_name: str | None, message: str) -> None:
        where = f"line {line}" + (f", field {field_name!r}" if field_name else "")
        self.items.append(f"{where}: {message}")

    def raise_if_any(self, filename: str) -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:MAX_REPORTED])
        more = len(self.items) - MAX_REPORTED
        extra = f"; and {more} more problem{'s' if more > 1 else ''}" if more > 0 else ""
        raise DataError(
            f"{filename} is not a valid task file: {shown}{extra}. "
            f"Fix these lines and try again. {_FORMAT_HELP}"
        )


def sanitise_name(name: str) -> str:
    """A task name safe as a file name: letters, digits, ``-`` and ``_`` (at most 64)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name.strip()).strip("-_")[:64]
    if not safe:
        raise DataError(
            f"Task name {name!r} has no letters or digits; use a name such as 'my-task' "
            "(letters, digits, - and _)."
        )
    return safe


def load_task_file(
    path: Path,
    name: str | None = None,
    description: str = "",
    *,
    check_size: bool = True,
) -> Task:
    """Read and validate a JSONL or CSV task file; raise DataError naming each bad line.

    The file must be UTF-8 (a BOM and CRLF line ends are fine), at most
    ``settings.max_upload_mb`` (unless ``check_size`` is False, as for stored uploads) and hold
    at least ``MIN_EXAMPLES`` examples, all multiple choice or all free-form.
    """
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path.name} has an unknown extension {path.suffix or '(none)'!r}: "
            f"use .jsonl or .csv. {_FORMAT_HELP}"
        )
    if not path.is_file():
        raise DataError(f"Task file {path} does not exist (or is not a file); check the path.")
    size = path.stat().st_size
    limit_mb = get_settings().max_upload_mb
    if check_size and size > limit_mb * 1024 * 1024:
        raise DataError(
            f"{path.name} is {size / 2**20:.1f} MB, over the {limit_mb} MB limit "
            "(TEACHLAB_MAX_UPLOAD_MB); upload a smaller sample of the task or raise the limit."
        )
    text = check_text(_decode(path.read_bytes(), path.name), path.name)
    if not text.strip():
        raise DataError(f"{path.name} is empty: it needs at least {MIN_EXAMPLES} examples.")
    problems = _Problems()
    records = _jsonl_records(text, problems) if kind == "jsonl" else _csv_records(text, problems)
    examples = [(line, ex) for line, record in records if (ex := _example(line, record, problems))]
    _check_consistent(examples, problems)
    problems.raise_if_any(path.name)
    if not examples:
        raise DataError(
            f"{path.name} has no examples: it needs at least {MIN_EXAMPLES}. {_FORMAT_HELP}"
        )
    if len(examples) < MIN_EXAMPLES:
        raise DataError(
            f"{path.name} has only {len(examples)} examples; a task needs at least "
            f"{MIN_EXAMPLES} (seed examples for the teacher, probes and held-out test items)."
        )
    return Task(
        name=name or path.stem,
        description=description,
        examples=tuple(ex for _, ex in examples),
        source=f"file:{path}",
    )


def _decode(data: bytes, filename: str) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(
            f"{filename} is UTF-16 text (line 1 starts with a UTF-16 byte-order mark); "
            "save it as UTF-8 and upload it again."
        )
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{filename} is not UTF-8 text: line {line} has the byte 0x{data[exc.start]:02x}, "
            "which is not valid UTF-8. Save the file as UTF-8 and upload it again."
        ) from exc


def _jsonl_records(text: str, problems: _Problems) -> list[tuple[int, dict]]:
    records = []
    # Split on "\n" only: JSON strings may hold U+2028 and friends, which splitlines() splits.
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            value = loads(line, f"line {number}")
        except json.JSONDecodeError as exc:
            problems.add(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except DataError as exc:
            problems.add(number, None, str(exc).removeprefix(f"line {number} ").rstrip("."))
            continue
        if not isinstance(value, dict):
            problems.add(number, None, f"expected a JSON object, got a JSON {_json_type(value)}")
            continue
        records.append((number, value))
    return records


def _csv_records(text: str, problems: _Problems) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    records: list[tuple[int, dict]] = []
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.add(start, None, f"not valid CSV ({exc})")
            break
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            for required in ("input", "target"):
                if required not in header:
                    found = ", ".join(repr(h) for h in header)
                    problems.add(line, required, f"the header has no such column (found {found})")
            if problems.items:
                return []
            continue
        if len(row) != len(header):
            problems.add(line, None, f"has {len(row)} cells but the header has {len(header)}")
            continue
        cells = dict(zip(header, row, strict=True))
        record: dict[str, object] = {"input": cells["input"], "target": cells["target"]}
        if cells.get("choices", "").strip():
            record["choices"] = [c.strip() for c in cells["choices"].split(CHOICE_SEPARATOR)]
        records.append((line, record))
    return records


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _text_field(line: int, record: dict, key: str, problems: _Problems) -> str | None:
    value = record[key]
    if isinstance(value, float) and not math.isfinite(value):
        # json reads NaN and Infinity, which JSON itself has no words for; "nan" is no answer.
        problems.add(line, key, f"is {value}, not a finite number or a string")
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and key == "target":
        value = str(value)  # {"target": 42} means "42"
    if isinstance(value, list) and key == "target" and value:
        value = value[0]  # BIG-bench style list of acceptable targets: the first is canonical
    if not isinstance(value, str):
        problems.add(line, key, f"must be a string, got a {_json_type(value)}")
        return None
    if not value.strip():
        problems.add(line, key, "is empty")
        return None
    return value


def _example(line: int, record: dict, problems: _Problems) -> Example | None:
    before = len(problems.items)
    text = None
    if "input" not in record:
        problems.add(line, "input", "is missing")
    else:
        text = _text_field(line, record, "input", problems)
    choices = _choices(line, record, problems)
    target = None
    if "target" in record:
        target = _text_field(line, record, "target", problems)
    elif "target_scores" in record:
        if choices:  # else the scores were malformed, and that is reported already
            target = _best_choice(line, record["target_scores"], problems)
    else:
        problems.add(line, "target", "is missing")
    if target is not None and choices and target not in choices:
        shown = ", ".join(repr(c) for c in choices[:6]) + (", ..." if len(choices) > 6 else "")
        problems.add(line, "target", f"{target!r} is not one of the choices ({shown})")
    if len(problems.items) > before or text is None or target is None:
        return None
    return Example(input=text, target=target, choices=tuple(choices or ()))


def _choices(line: int, record: dict, problems: _Problems) -> list[str] | None:
    """The example's choices ([] for free-form), or None when they are malformed."""
    if "choices" in record and "target_scores" in record:
        problems.add(line, "choices", "give either choices or target_scores, not both")
        return None
    key = "choices" if "choices" in record else "target_scores"
    value = record.get(key)
    if value is None:
        return []
    if key == "target_scores":
        if not isinstance(value, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
        ):
            problems.add(line, key, "must be an object mapping each choice to a number (1 or 0)")
            return None
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        problems.add(line, key, "must be a list of strings")
        return None
    if any(not c.strip() for c in value):
        problems.add(line, key, "has an empty choice")
        return None
    duplicate = next((c for i, c in enumerate(value) if c in value[:i]), None)
    if duplicate is not None:
        problems.add(line, key, f"has duplicate choice {duplicate!r}")
        return None
    if len(value) < 2:
        problems.add(line, key, "needs at least two choices (or none, for a free-form task)")
        return None
    return value


def _best_choice(line: int, scores: dict, problems: _Problems) -> str | None:
    best = max(scores.values())
    winners = [k for k, v in scores.items() if v == best]
    if best <= 0:
        problems.add(line, "target_scores", "no choice has a positive score")
        return None
    if len(winners) > 1:
        problems.add(line, "target_scores", f"several choices share the top score {best}")
        return None
    return winners[0]


def _check_consistent(examples: list[tuple[int, Example]], problems: _Problems) -> None:
    """A task is all multiple choice or all free-form; point at the first line that differs."""
    if not examples:
        return
    first_line, first = examples[0]
    for line, example in examples[1:]:
        if example.is_multiple_choice != first.is_multiple_choice:
            has = "has" if example.is_multiple_choice else "has no"
            other = "has none" if example.is_multiple_choice else "has them"
            problems.add(
                line,
                "choices",
                f"{has} choices but line {first_line} {other}; a task is all multiple choice "
                "or all free-form",
            )
            return


def task_to_jsonl(task: Task) -> str:
    """The canonical JSONL text of a task's examples (what uploads are stored as)."""
    lines = []
    for e in task.examples:
        record: dict[str, object] = {"input": e.input, "target": e.target}
        if e.choices:
            record["choices"] = list(e.choices)
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def uploads_dir() -> Path:
    return get_settings().data_dir / "uploads"


def save_uploaded_task(src: Path, name: str) -> Path:
    """Validate ``src`` and store it as ``<data_dir>/uploads/<name>.jsonl``; return that path.

    Storing the same task again is a no-op; a different task under an existing name is refused,
    and a bad file leaves everything stored untouched.
    """
    safe = sanitise_name(name)
    task = load_task_file(Path(src), name=safe)
    content = task_to_jsonl(task).encode("utf-8")
    folder = uploads_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{safe}.jsonl"
    if dest.exists():
        _refuse_unless_same(dest, content, safe)
        return dest
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{safe}.", suffix=".tmp")
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            if exc.filename is None:  # a failed write names no file; the message should
                exc.filename = str(dest)
            raise
        try:
            # link() refuses to overwrite, so two uploads racing for one name cannot clobber.
            os.link(tmp, dest)
        except FileExistsError:
            _refuse_unless_same(dest, content, safe)
        except OSError:  # a filesystem without hard links
            os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def _refuse_unless_same(dest: Path, content: bytes, name: str) -> None:
    if dest.read_bytes() != content:
        raise DataError(
            f"A different task named {name!r} is already uploaded; choose another name "
            "(or delete the old task first)."
        )
