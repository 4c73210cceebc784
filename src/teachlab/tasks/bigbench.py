"""BIG-bench tasks: unpack the ``task.json`` files into the storage folder and load them as Tasks.

Two sources. The package carries the BIG-Bench Hard tasks and the demo study's task
(``bundled/bigbench-tasks.tar.xz``, 2 MB, see its NOTICE), so they need no network at all. Any
other task comes from the sdist ``bigbench==1.0.0`` (358 MB), where the package index still
serves it: we stream it once, keep it in ``<data_dir>/downloads/`` and extract only task files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from teachlab.errors import DataError
from teachlab.settings import get_settings
from teachlab.tasks.model import Example, Task

log = logging.getLogger(__name__)

PACKAGE = "bigbench"
VERSION = "1.0.0"
ARCHIVE_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
DEFAULT_INDEX = "https://pypi.org/simple"
MARKER = ".complete"

#: The 23 BIG-Bench Hard tasks by their BIG-bench names. boolean_expressions,
#: multistep_arithmetic and web_of_lies are programmatic (task.py) in the sdist, so they have
#: no task.json; logical_deduction and tracking_shuffled_objects come as three subtasks each.
BBH_TASKS: tuple[str, ...] = (
    "boolean_expressions",
    "causal_judgment",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies_syllogisms_negation",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction",
    "movie_recommendation",
    "multistep_arithmetic",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects",
    "web_of_lies",
    "word_sorting",
)

#: The tasks the package carries (each with its subtasks): the 20 BIG-Bench Hard tasks that
#: have a task.json, and goal_step_wikihow for the demo study.
BUNDLED_TASKS: tuple[str, ...] = tuple(
    sorted(
        {
            t
            for t in BBH_TASKS
            if t not in ("boolean_expressions", "multistep_arithmetic", "web_of_lies")
        }
        | {"goal_step_wikihow"}
    )
)
BUNDLE = Path(__file__).with_name("bundled") / "bigbench-tasks.tar.xz"

# <top>/bigbench/benchmark_tasks/<task>[/<subtask>]/task.json inside the sdist.
_MEMBER = re.compile(r"^[^/]+/bigbench/benchmark_tasks/([^/]+(?:/[^/]+)?)/task\.json$")
# <task>[/<subtask>]/task.json inside the bundle.
_BUNDLE_MEMBER = re.compile(r"^([^/]+(?:/[^/]+)?)/task\.json$")

Progress = Callable[[float, str], None]
"""``progress(fraction, message)``: a ``gr.Progress`` instance fits as is."""


def _bigbench_dir(data_dir: Path | None) -> Path:
    return (data_dir or get_settings().data_dir) / "bigbench"


def _read_marker(root: Path) -> set[str] | None:
    """The task selections already extracted (``{"*"}`` for all), or None before any fetch."""
    try:
        data = json.loads((root / MARKER).read_text(encoding="utf-8"))
        return set(data["tasks"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # An unreadable marker means we cannot tell what is there; fetch again.
        return None


def _covered(done: set[str] | None, wanted: list[str] | None) -> bool:
    if done is None:
        return False
    if "*" in done:
        return True
    return wanted is not None and all(w in done or w.split("/", 1)[0] in done for w in wanted)


def _selected(name: str, wanted: list[str] | None) -> bool:
    """Whether task path ``name`` (``task`` or ``task/subtask``) is in the selection."""
    if wanted is None:
        return True
    return any(name == w or name.startswith(w + "/") or w.startswith(name + "/") for w in wanted)


def fetch_bigbench(
    dest: Path | None = None,
    tasks: list[str] | None = None,
    progress: Progress | None = None,
    *,
    everything: bool = False,
) -> Path:
    """Unpack BIG-bench task files into ``<dest>/bigbench`` and return that folder.

    ``dest`` is the data folder (default ``settings.data_dir``). ``tasks`` names the tasks (a
    task name includes its subtasks); None means the bundled ones (:data:`BUNDLED_TASKS`, no
    network). Bundled tasks come from the package; others, and ``everything=True`` (all of
    BIG-bench, about 1.7 GB unpacked), need the sdist, downloaded once into
    ``<dest>/downloads/``. Idempotent: returns at once when the marker file says the selection
    is there.
    """
    data_dir = dest or get_settings().data_dir
    root = data_dir / "bigbench"
    if tasks is not None and not tasks:
        raise DataError("No BIG-bench tasks named: give task names, or none to fetch them all.")
    wanted: list[str] | None = None if everything else list(tasks or BUNDLED_TASKS)
    if _covered(_read_marker(root), wanted):
        return root
    report = progress or (lambda fraction, message: None)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _lock(data_dir / "downloads" / ".bigbench.lock"):
        done = _read_marker(root)
        if _covered(done, wanted):  # another process finished while we waited
            return root
        from_bundle = [] if wanted is None else [w for w in wanted if _bundled(w)]
        from_sdist = None if wanted is None else [w for w in wanted if not _bundled(w)]
        extracted: list[str] = []
        if from_bundle:
            report(0.0, "Unpacking the bundled BIG-bench tasks")
            extracted += _extract_tasks(
                BUNDLE, "r|xz", _BUNDLE_MEMBER, data_dir, root, from_bundle, report
            )
        if from_sdist is None or from_sdist:
            archive = _download_archive(data_dir / "downloads", report, from_sdist)
            report(0.8, "Extracting BIG-bench task files")
            extracted += _extract_tasks(
                archive, "r|gz", _MEMBER, data_dir, root, from_sdist, report
            )
        missing = [
            w for w in wanted or [] if not any(n == w or n.startswith(f"{w}/") for n in extracted)
        ]
        if missing:
            log.warning("BIG-bench tasks without a task.json: %s", ", ".join(missing))
        if wanted is not None and not extracted:
            known = ", ".join(sorted({n.split("/")[0] for n in list_bigbench(data_dir)})[:20])
            raise DataError(
                f"None of the BIG-bench tasks {', '.join(wanted)} has a task.json in "
                f"{ARCHIVE_NAME} (programmatic tasks have none). "
                f"Run `teachlab data list` to see the tasks; some available: {known}."
            )
        selection = {"*"} if wanted is None else (done or set()) | set(wanted)
        _write_atomic(root / MARKER, json.dumps({"tasks": sorted(selection)}) + "\n")
    report(1.0, f"BIG-bench ready: {len(list_bigbench(data_dir))} tasks")
    return root


def _bundled(name: str) -> bool:
    """Whether task path ``name`` lies in the bundle (its task is one of BUNDLED_TASKS)."""
    return name.split("/", 1)[0] in BUNDLED_TASKS


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes fetching at once (a no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _download_archive(downloads: Path, report: Progress, wanted: list[str] | None) -> Path:
    """The cached sdist, downloading it first when it is not there yet."""
    archive = downloads / ARCHIVE_NAME
    if archive.is_file():
        return archive
    downloads.mkdir(parents=True, exist_ok=True)
    try:
        url, sha256 = _find_sdist()
        _http_download(url, sha256, archive, report)
    except (OSError, ValueError, KeyError) as exc:
        # Index or file host unreachable, or an index without the JSON API: let pip try with
        # the user's own pip configuration (mirrors). pip 26.3 (this venv) refuses this sdist
        # on PyPI itself (it declares a direct-URL dependency), so it is only the fallback.
        log.warning("Direct download of %s failed (%s); trying pip download", ARCHIVE_NAME, exc)
        _pip_download(downloads, first_error=exc, wanted=wanted)
    return archive


def _find_sdist() -> tuple[str, str | None]:
    """URL and sha256 of the sdist from the package index's simple API (PEP 691 JSON or the
    PEP 503 HTML page)."""
    index = os.environ.get("PIP_INDEX_URL", "")
    if not index.startswith(("http://", "https://")):
        index = DEFAULT_INDEX
    page = f"{index.rstrip('/')}/{PACKAGE}/"
    request = urllib.request.Request(
        page,
        headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        kind = response.headers.get("Content-Type", "")
        body = response.read()
    if "json" in kind:
        for entry in json.loads(body)["files"]:
            if entry["filename"] == ARCHIVE_NAME:
                return urllib.parse.urljoin(page, entry["url"]), entry["hashes"].get("sha256")
    else:
        for href in re.findall(r'href="([^"]+)"', body.decode("utf-8", "replace")):
            link, _, fragment = href.partition("#")
            if link.rsplit("/", 1)[-1] == ARCHIVE_NAME:
                sha = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
                return urllib.parse.urljoin(page, link), sha
    raise ValueError(f"{ARCHIVE_NAME} is not listed on {page}")


def _http_download(url: str, sha256: str | None, archive: Path, report: Progress) -> None:
    part = archive.with_name(archive.name + ".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while chunk := response.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if total:
                report(0.8 * done / total, f"Downloading {ARCHIVE_NAME}: {done >> 20} MB")
    if sha256 and digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise ValueError(f"{ARCHIVE_NAME} failed its sha256 check (download corrupted)")
    os.replace(part, archive)


def _pip_download(downloads: Path, first_error: Exception, wanted: list[str] | None) -> None:
    archive = downloads / ARCHIVE_NAME
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"{PACKAGE}=={VERSION}", "-d", str(downloads),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if archive.is_file():  # pip may fail after saving (metadata checks); the file is what we need
        return
    detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    asked = "all of BIG-bench" if wanted is None else ", ".join(wanted)
    raise DataError(
        f"Could not download {ARCHIVE_NAME}, needed for {asked}, from the package index "
        f"({first_error}; pip: {detail}). The bundled tasks need no download (`teachlab data "
        f"fetch` with no task names: {', '.join(BUNDLED_TASKS[:4])}, …; `teachlab data list` "
        f"shows them). For another task, put {ARCHIVE_NAME} in {downloads} yourself, or upload "
        "the task as a JSONL or CSV file."
    )


def _extract_tasks(
    archive: Path,
    mode: str,
    pattern: re.Pattern[str],
    data_dir: Path,
    root: Path,
    wanted: list[str] | None,
    report: Progress,
) -> list[str]:
    """Stream the archive (``mode``: ``r|gz``, ``r|xz``) and move each selected task file, its
    path matched by ``pattern``, into ``root`` atomically."""
    staging = Path(tempfile.mkdtemp(dir=data_dir, prefix=".bigbench-"))
    names: list[str] = []
    size = archive.stat().st_size
    bundled = archive == BUNDLE
    try:
        with archive.open("rb") as raw, tarfile.open(fileobj=raw, mode=mode) as tar:  # type: ignore[call-overload]
            for member in tar:
                match = pattern.match(member.name)
                if not match or not member.isfile():
                    continue
                name = match.group(1)
                if any(part in (".", "..") for part in name.split("/")):
                    continue
                if not _selected(name, wanted):
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                target = staging / name / "task.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                names.append(name)
                done = raw.tell() / size
                report(done if bundled else 0.8 + 0.2 * done, f"Extracting {name}")
        # Replace file by file: each replace is atomic, and the marker written after the last
        # one is what says the selection is complete.
        for name in names:
            final = root / name / "task.json"
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name / "task.json", final)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        if bundled:
            raise DataError(
                f"The bundled BIG-bench archive {archive} is damaged ({exc}): reinstall TeachLab."
            ) from exc
        archive.unlink(missing_ok=True)  # damaged archive: make the retry download it again
        raise DataError(
            f"Could not read BIG-bench archive {archive}: {exc}. It has been removed; "
            "run `teachlab data fetch` again to download it afresh."
        ) from exc
    except OSError as exc:
        raise DataError(
            f"Could not write BIG-bench tasks under {data_dir}: {exc.strerror or exc}. "
            "Free some disk space or fix the folder's permissions, then fetch again."
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def list_bigbench(data_dir: Path | None = None) -> list[str]:
    """The fetched BIG-bench tasks (``task`` or ``task/subtask``), sorted.

    A parent whose examples live in its subtasks (``logical_deduction``) is left out.
    """
    root = _bigbench_dir(data_dir)
    if not root.is_dir():
        return []
    names: set[str] = set()
    for path in root.glob("*/task.json"):
        names.add(path.parent.name)
    for path in root.glob("*/*/task.json"):
        names.add(f"{path.parent.parent.name}/{path.parent.name}")
        names.discard(path.parent.parent.name)
    return sorted(names)


def load_bigbench(name: str, data_dir: Path | None = None) -> Task:
    """Load BIG-bench task ``name`` (``date_understanding``, ``logical_deduction/three_objects``).

    Examples with ``target_scores`` become multiple choice (target: the top-scoring choice);
    those with only ``target`` are free-form (a list of targets keeps its first). When an
    example has both, the task's ``preferred_score`` decides.
    """
    root = _bigbench_dir(data_dir)
    parts = name.strip().strip("/").split("/")
    path = root.joinpath(*parts) / "task.json"
    if not name.strip() or len(parts) > 2 or any(p in ("", ".", "..") for p in parts):
        path = root / "\0invalid"
    if not path.is_file():
        available = list_bigbench(data_dir)
        subtasks = [a for a in available if a.startswith(f"{name}/")]
        if subtasks:
            hint = f"It has subtasks; name one of: {', '.join(subtasks)}."
        elif available:
            hint = "Run `teachlab data list` to see the fetched tasks."
        else:
            hint = "No BIG-bench tasks are fetched yet: run `teachlab data fetch`."
        raise DataError(f"BIG-bench task {name!r} is not available in {root}. {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"BIG-bench task file {path} is unreadable ({exc}); run `teachlab data fetch` again."
        ) from exc
    if not data.get("examples"):
        subtasks = sorted(f"{name}/{p.parent.name}" for p in path.parent.glob("*/task.json"))
        if subtasks:
            raise DataError(
                f"BIG-bench task {name!r} is split into subtasks; name one of: "
                f"{', '.join(subtasks)} (see `teachlab data list`)."
            )
    return _task_from_bigbench(name, data, path)


def _task_from_bigbench(name: str, data: dict, path: Path) -> Task:
    raw_examples = data.get("examples") or []
    prefer_mc = data.get("preferred_score") == "multiple_choice_grade"
    examples: list[Example] = []
    skipped = 0
    for raw in raw_examples:
        example = _example(raw, prefer_mc)
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    if skipped:
        log.info("BIG-bench %s: skipped %d examples without one clear answer", name, skipped)
    if not examples:
        raise DataError(
            f"BIG-bench task {name!r} ({path}) has no usable examples (it may be a parent of "
            "subtasks or a programmatic task); run `teachlab data list` and choose another."
        )
    prefix = data.get("task_prefix") or ""
    return Task(
        name=name,
        description=str(data.get("description") or "").strip(),
        examples=tuple(examples),
        source=f"bigbench:{name}",
        prefix=prefix if isinstance(prefix, str) else "",
    )


def _example(raw: object, prefer_mc: bool) -> Example | None:
    """One BIG-bench example, or None when it has no input or no single clear answer."""
    if not isinstance(raw, dict) or not isinstance(raw.get("input"), str):
        return None
    scores = raw.get("target_scores")
    target = raw.get("target")
    if isinstance(target, list):
        target = next((t for t in target if isinstance(t, str) and t.strip()), None)
    if isinstance(scores, dict) and len(scores) >= 2 and (prefer_mc or not target):
        try:
            values = {str(k): float(v) for k, v in scores.items()}
        except (TypeError, ValueError):
            return None
        best = max(values.values())
        winners = [k for k, v in values.items() if v == best]
        # No positive answer, or a tie at the top: no single target to teach towards.
        if best <= 0 or len(winners) != 1:
            return None
        return Example(input=raw["input"], target=winners[0], choices=tuple(values))
    if isinstance(target, int | float) and not isinstance(target, bool):
        target = str(target)
    if not isinstance(target, str) or not target.strip():
        return None
    return Example(input=raw["input"], target=target)
