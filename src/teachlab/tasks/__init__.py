"""Task data: BIG-bench tasks, uploaded JSONL/CSV files and Hugging Face datasets, all as Tasks.

``resolve_task(ref)`` turns a task reference into a Task; ``make_splits`` divides it.
"""

from __future__ import annotations

from pathlib import Path

from teachlab.errors import DataError
from teachlab.parsing import check_text
from teachlab.tasks.bigbench import fetch_bigbench, list_bigbench, load_bigbench
from teachlab.tasks.files import load_task_file, sanitise_name, save_uploaded_task, uploads_dir
from teachlab.tasks.model import Example, Task
from teachlab.tasks.splits import OverlapReport, Splits, make_splits, overlap_report

__all__ = [
    "DataError",
    "Example",
    "OverlapReport",
    "Splits",
    "Task",
    "fetch_bigbench",
    "list_bigbench",
    "list_uploads",
    "load_bigbench",
    "load_task_file",
    "make_splits",
    "overlap_report",
    "resolve_task",
    "save_uploaded_task",
]

REF_FORMS = (
    "bigbench:<task> (see `teachlab data list`), file:<path to .jsonl or .csv>, "
    "upload:<name of an uploaded task> or hf:<dataset_id>[:<config>]:<split>"
)


def list_uploads() -> list[str]:
    """Names of the stored uploaded tasks (usable as ``upload:<name>``)."""
    folder = uploads_dir()
    return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []


def resolve_task(ref: str) -> Task:
    """The Task a reference names: ``bigbench:<name>``, ``file:<path>``, ``upload:<name>`` or
    ``hf:<dataset>[:<config>]:<split>``."""
    if not isinstance(ref, str):
        raise DataError(f"Task reference {ref!r} is not text; use one of {REF_FORMS}.")
    check_text(ref, "The task reference")
    scheme, sep, rest = ref.strip().partition(":")
    rest = rest.strip()
    if not sep or not rest:
        raise DataError(f"Task reference {ref!r} has no scheme or name; use one of {REF_FORMS}.")
    if scheme == "bigbench":
        return load_bigbench(rest)
    if scheme == "file":
        return load_task_file(Path(rest).expanduser())
    if scheme == "upload":
        name = sanitise_name(rest)
        path = uploads_dir() / f"{name}.jsonl"
        if not path.is_file():
            known = ", ".join(list_uploads()) or "none yet"
            raise DataError(
                f"No uploaded task named {rest!r} (uploaded tasks: {known}); "
                "upload it first or check the name."
            )
        # Stored uploads were checked against the size limit when they came in.
        task = load_task_file(path, name=name, check_size=False)
        return Task(task.name, task.description, task.examples, f"upload:{name}", task.prefix)
    if scheme == "hf":
        from teachlab.tasks.hub import load_hf_dataset

        return load_hf_dataset(ref.strip())
    raise DataError(f"Unknown task reference scheme {scheme!r} in {ref!r}; use one of {REF_FORMS}.")
