"""Tasks from a Hugging Face dataset: ``hf:<dataset_id>[:config]:<split>[?input=..&target=..]``.

Needs the Hub; offline (TEACHLAB_OFFLINE) or unreachable, it says how to get the data in
another way.
"""

from __future__ import annotations

import urllib.parse

from teachlab.errors import DataError
from teachlab.settings import get_settings
from teachlab.tasks.model import Example, Task

DEFAULT_LIMIT = 5000
_FORM = (
    "hf:<dataset_id>[:<config>]:<split>, optionally followed by "
    "?input=<column>&target=<column>&choices=<column>&limit=<rows>, "
    "e.g. hf:openai/gsm8k:main:test?input=question&target=answer"
)
_UNREACHABLE = (
    "the Hub is unreachable; download the data and upload it as JSONL, or use a BIG-bench task"
)


def parse_hf_spec(spec: str) -> tuple[str, str | None, str, dict[str, str]]:
    """``(dataset_id, config, split, options)`` from an ``hf:`` reference."""
    body = spec.removeprefix("hf:")
    path, _, query = body.partition("?")
    parts = path.split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise DataError(f"Bad Hugging Face dataset reference {spec!r}: use {_FORM}.")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=False))
    unknown = set(options) - {"input", "target", "choices", "limit"}
    if unknown:
        raise DataError(f"Unknown option(s) {', '.join(sorted(unknown))} in {spec!r}: use {_FORM}.")
    if len(parts) == 2:
        return parts[0], None, parts[1], options
    return parts[0], parts[1], parts[2], options


def load_hf_dataset(
    spec: str,
    input_column: str | None = None,
    target_column: str | None = None,
    choices_column: str | None = None,
    limit: int | None = None,
) -> Task:
    """Load a Hub dataset split as a Task (columns default to ``input`` and ``target``).

    A ClassLabel target becomes multiple choice over the label names; an integer target with
    a choices column indexes into it. Options in the reference override the defaults, and
    arguments override both.
    """
    dataset_id, config, split, options = parse_hf_spec(spec)
    input_column = input_column or options.get("input", "input")
    target_column = target_column or options.get("target", "target")
    choices_column = choices_column or options.get("choices")
    try:
        rows = limit or int(options.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise DataError(f"limit in {spec!r} must be a whole number of rows.") from None
    if rows < 1:
        raise DataError(f"limit in {spec!r} must be at least 1 row.")
    if get_settings().offline:
        raise DataError(f"Cannot load {spec!r}: TEACHLAB_OFFLINE is set, so {_UNREACHABLE}.")

    import datasets

    try:
        data = datasets.load_dataset(dataset_id, config, split=f"{split}[:{rows}]")
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise DataError(
            f"Dataset {dataset_id!r} was not found on the Hugging Face Hub (or is gated): "
            f"check the id, or {_UNREACHABLE.split('; ', 1)[1]}."
        ) from exc
    except (ConnectionError, TimeoutError) as exc:
        raise DataError(f"Cannot load {spec!r}: {_UNREACHABLE}.") from exc
    except OSError as exc:  # HTTP errors from the Hub, a broken cache
        raise DataError(f"Cannot load {spec!r} ({exc}); {_UNREACHABLE}.") from exc
    except ValueError as exc:  # unknown split or config
        raise DataError(f"Cannot load {spec!r}: {exc}. Use {_FORM}.") from exc

    columns = list(data.column_names)
    for role, column in (("input", input_column), ("target", target_column)):
        if column not in columns:
            raise DataError(
                f"Dataset {dataset_id!r} has no column {column!r} for the {role}; its columns "
                f"are {', '.join(columns)}. Add ?{role}=<column> to the reference."
            )
    if choices_column and choices_column not in columns:
        raise DataError(
            f"Dataset {dataset_id!r} has no choices column {choices_column!r}; its columns "
            f"are {', '.join(columns)}."
        )
    feature = data.features[target_column]
    label_names = list(getattr(feature, "names", None) or [])
    examples = []
    for row in data:
        example = _example(row, input_column, target_column, choices_column, label_names)
        if example is not None:
            examples.append(example)
    if not examples:
        raise DataError(
            f"Dataset {spec!r} gave no usable rows (empty input or target in every row)."
        )
    return Task(
        name=dataset_id.rsplit("/", 1)[-1],
        description="",
        examples=tuple(examples),
        source=spec,
    )


def _example(
    row: dict, input_column: str, target_column: str, choices_column: str | None, labels: list
) -> Example | None:
    text = row[input_column]
    target = row[target_column]
    choices = tuple(str(c) for c in row[choices_column]) if choices_column else ()
    if labels and isinstance(target, int):
        choices = choices or tuple(labels)
        target = labels[target] if 0 <= target < len(labels) else None
    elif choices and isinstance(target, int) and not isinstance(target, bool):
        target = choices[target] if 0 <= target < len(choices) else None
    if not isinstance(text, str) or not text.strip() or target is None:
        return None
    target = str(target)
    if not target.strip() or (choices and target not in choices):
        return None
    return Example(input=text, target=target, choices=choices)
