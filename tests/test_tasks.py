"""Tests for teachlab.tasks: BIG-bench files, uploads and their validation, splits, overlaps."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from teachlab.errors import DataError
from teachlab.settings import get_settings
from teachlab.tasks import (
    Example,
    Task,
    bigbench,
    fetch_bigbench,
    list_bigbench,
    load_bigbench,
    load_task_file,
    make_splits,
    overlap_report,
    resolve_task,
    save_uploaded_task,
)
from teachlab.tasks.bigbench import ARCHIVE_NAME, BUNDLE, BUNDLED_TASKS
from teachlab.tasks.splits import near_duplicates

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "lamp",
    "violin",
    "harbor",
    "maple",
    "quartz",
    "tiger",
    "window",
    "velvet",
    "canyon",
    "pepper",
    "rocket",
    "saddle",
    "thunder",
    "island",
    "marble",
    "candle",
    "forest",
    "engine",
    "lemon",
]


# Where the slow test fetches the real BIG-bench data; read before any fixture edits the env.
REAL_DATA = Path(
    os.environ.get("TEACHLAB_TEST_DATA_CACHE")
    or os.environ.get("TEACHLAB_DATA_CACHE")
    or Path(__file__).resolve().parents[1] / "storage" / "data"
)


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty storage folder and no other TEACHLAB_* settings (data_dir inside it).

    Named like the shared autouse fixture so that it replaces it here: these tests need
    their own data folder, not the shared BIG-bench cache.
    """
    folder = tmp_path / "storage"
    folder.mkdir(exist_ok=True)
    for key in list(os.environ):
        if key.startswith("TEACHLAB_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TEACHLAB_STORAGE", str(folder))
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def free_rows(n: int = 12) -> list[dict]:
    return [{"input": f"What is {i} plus {i}?", "target": str(2 * i)} for i in range(n)]


def mc_rows(n: int = 12) -> list[dict]:
    return [
        {
            "input": f"Is {i} even?",
            "target": "yes" if i % 2 == 0 else "no",
            "choices": ["yes", "no"],
        }
        for i in range(n)
    ]


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def make_task(inputs: list[str], name: str = "t") -> Task:
    return Task(
        name=name,
        description="",
        examples=tuple(Example(input=text, target="x") for text in inputs),
        source="test",
    )


# ---------------------------------------------------------------- model


def test_task_properties_and_fingerprint() -> None:
    mc = Task(
        name="mc",
        description="d",
        examples=(
            Example("q1", "a", ("a", "b")),
            Example("q2", "c", ("a", "b", "c", "d")),
        ),
        source="test",
    )
    assert mc.is_multiple_choice
    assert mc.chance_rate == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert mc.target_is_valid("b", ("a", "b"))
    assert not mc.target_is_valid("z", ("a", "b"))

    numeric = Task("n", "", (Example("1+1", "2"), Example("2+2", "4.0")), "test")
    assert not numeric.is_multiple_choice and numeric.chance_rate is None
    assert numeric.is_numeric
    assert numeric.target_is_valid("1,024") and not numeric.target_is_valid("four")
    words = Task("w", "", (Example("1+1", "two"),), "test")
    assert not words.is_numeric and words.target_is_valid("four")
    assert not words.target_is_valid("  ")

    assert mc.fingerprint() == replace(mc).fingerprint()
    assert len(mc.fingerprint()) == 64
    changed = replace(mc, examples=(*mc.examples[:1], Example("q2", "d", ("a", "b", "c", "d"))))
    assert changed.fingerprint() != mc.fingerprint()
    assert replace(mc, prefix="P").fingerprint() != mc.fingerprint()


# ---------------------------------------------------------------- BIG-bench


def write_bigbench(data_dir: Path) -> None:
    tasks = {
        "mc_task": {
            "description": "Pick the right one",
            "task_prefix": "Answer carefully.\n",
            "preferred_score": "multiple_choice_grade",
            "examples": [
                {"input": "q1", "target_scores": {"a": 0, "b": 1, "c": 0}},
                {"input": "q2", "target_scores": {"a": 1, "b": 0}},
                {"input": "tie", "target_scores": {"a": 1, "b": 1}},
                {"input": "none right", "target_scores": {"a": 0, "b": 0}},
            ],
        },
        "free_task": {
            "description": "Count",
            "examples": [
                {"input": "How many?", "target": ["three", "3"]},
                {"input": "And now?", "target": "4"},
                # both fields, generative preferred score: stays free-form
                {"input": "Sum?", "target": "5", "target_scores": {"5": 1, "banana": 0}},
            ],
            "preferred_score": "exact_str_match",
        },
        "parent": {"description": "Has subtasks", "name": "parent"},
        "parent/one": {
            "description": "Subtask one",
            "examples": [{"input": "x", "target_scores": {"y": 1, "z": 0}}],
        },
        "parent/two": {"description": "Subtask two", "examples": [{"input": "u", "target": "v"}]},
    }
    for name, content in tasks.items():
        path = data_dir / "bigbench" / name / "task.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content), encoding="utf-8")


def test_load_bigbench_multiple_choice(storage: Path) -> None:
    data_dir = get_settings().data_dir
    write_bigbench(data_dir)
    task = load_bigbench("mc_task", data_dir)
    assert task.name == "mc_task" and task.source == "bigbench:mc_task"
    assert task.description == "Pick the right one"
    assert task.prefix == "Answer carefully.\n"
    # the tie and the example with no positive score are skipped
    assert [(e.input, e.target, e.choices) for e in task.examples] == [
        ("q1", "b", ("a", "b", "c")),
        ("q2", "a", ("a", "b")),
    ]
    assert task.is_multiple_choice and task.chance_rate == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_load_bigbench_free_form_and_subtasks(storage: Path) -> None:
    data_dir = get_settings().data_dir
    write_bigbench(data_dir)
    task = load_bigbench("free_task", data_dir)
    assert [(e.input, e.target, e.choices) for e in task.examples] == [
        ("How many?", "three", ()),
        ("And now?", "4", ()),
        ("Sum?", "5", ()),
    ]
    assert task.prefix == "" and not task.is_multiple_choice and task.chance_rate is None

    assert list_bigbench(data_dir) == ["free_task", "mc_task", "parent/one", "parent/two"]
    sub = resolve_task("bigbench:parent/one")
    assert sub.name == "parent/one" and sub.examples[0].target == "y"
    with pytest.raises(DataError, match="parent/one, parent/two"):
        load_bigbench("parent", data_dir)


@pytest.mark.parametrize("name", ["nope", "../mc_task", "mc_task/../../x", ""])
def test_load_bigbench_unknown(storage: Path, name: str) -> None:
    write_bigbench(get_settings().data_dir)
    with pytest.raises(DataError, match="teachlab data list"):
        load_bigbench(name)


def test_load_bigbench_nothing_fetched(storage: Path) -> None:
    with pytest.raises(DataError, match="teachlab data fetch"):
        load_bigbench("date_understanding")


def build_fake_sdist(path: Path, extra: dict[str, bytes] | None = None) -> None:
    """A small stand-in for the bigbench sdist, with files that must not be extracted."""
    top = "bigbench-1.0.0/bigbench/benchmark_tasks"
    files = {
        f"{top}/alpha/task.json": json.dumps({"examples": [{"input": "a", "target": "b"}]}),
        f"{top}/alpha/README.md": "not a task file",
        f"{top}/beta/task.json": json.dumps({"name": "beta", "subtasks": ["sub"]}),
        f"{top}/beta/sub/task.json": json.dumps({"examples": [{"input": "e", "target": "f"}]}),
        f"{top}/prog/task.py": "print('programmatic')",
        "bigbench-1.0.0/setup.py": "raise SystemExit",
        f"{top}/../../evil/task.json": "{}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_fetch_bigbench_extracts_only_task_files_from_cached_archive(storage: Path) -> None:
    data_dir = get_settings().data_dir
    archive = data_dir / "downloads" / ARCHIVE_NAME
    build_fake_sdist(archive)
    root = fetch_bigbench(tasks=["alpha"])
    assert root == data_dir / "bigbench"
    assert list_bigbench(data_dir) == ["alpha"]
    assert not (root / "alpha" / "README.md").exists()

    # a second selection reuses the cached archive and keeps what is there
    fetch_bigbench(tasks=["beta"])
    assert list_bigbench(data_dir) == ["alpha", "beta/sub"]  # the parent holds no examples
    fetch_bigbench(everything=True)
    files = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.is_file())
    assert files == [
        "bigbench/.complete",
        "bigbench/alpha/task.json",
        "bigbench/beta/sub/task.json",
        "bigbench/beta/task.json",
        "downloads/.bigbench.lock",
        f"downloads/{ARCHIVE_NAME}",
    ]
    assert not (storage.parent / "evil").exists()
    assert load_bigbench("beta/sub").examples == (Example("e", "f"),)

    # complete: returns at once, without the archive
    archive.unlink()
    assert fetch_bigbench(everything=True) == root
    assert fetch_bigbench(tasks=["beta/sub"]) == root


def test_fetch_bigbench_programmatic_only_is_an_error(storage: Path) -> None:
    build_fake_sdist(get_settings().data_dir / "downloads" / ARCHIVE_NAME)
    with pytest.raises(DataError, match="teachlab data list"):
        fetch_bigbench(tasks=["prog"])


def test_fetch_bigbench_corrupt_archive_is_removed(storage: Path) -> None:
    archive = get_settings().data_dir / "downloads" / ARCHIVE_NAME
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(2000))
    with pytest.raises(DataError, match="fetch"):
        fetch_bigbench(everything=True)
    assert not archive.exists()
    assert not (get_settings().data_dir / "bigbench" / ".complete").exists()


def test_the_bundled_tasks_unpack_with_no_network_and_match_their_list(
    storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any attempt at the package index fails loudly: the bundle must not need it.
    monkeypatch.setattr(bigbench, "_download_archive", lambda *a: pytest.fail("downloaded"))
    root = fetch_bigbench()
    with tarfile.open(BUNDLE) as tar:
        members = sorted(tar.getnames())
    assert sorted({m.split("/", 1)[0] for m in members}) == list(BUNDLED_TASKS)
    assert all(m.endswith("/task.json") for m in members)
    names = list_bigbench()
    assert {n.split("/", 1)[0] for n in names} == set(BUNDLED_TASKS)
    assert "goal_step_wikihow/step_inference" in names and "logical_deduction" not in names
    # unchanged BIG-bench files: the demo task keeps its canary and its 1,100 examples
    raw = json.loads((root / "goal_step_wikihow" / "step_inference" / "task.json").read_text())
    assert "canary GUID" in raw["canary"]
    demo = load_bigbench("goal_step_wikihow/step_inference")
    assert demo.is_multiple_choice and len(demo) == len(raw["examples"]) > 1000
    assert fetch_bigbench(tasks=["ruin_names"]) == root  # covered: returns at once


def test_a_task_outside_the_bundle_comes_from_the_sdist_beside_the_bundled_ones(
    storage: Path,
) -> None:
    data_dir = get_settings().data_dir
    build_fake_sdist(data_dir / "downloads" / ARCHIVE_NAME)
    fetch_bigbench(tasks=["navigate", "alpha"])
    assert list_bigbench() == ["alpha", "navigate"]
    assert load_bigbench("navigate").is_multiple_choice


def test_a_missing_sdist_names_the_bundled_tasks_and_keeps_what_is_there(
    storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch_bigbench(tasks=["snarks"])
    # an index that refuses every connection (pip gets the same one)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(DataError, match="needed for emoji_movie") as caught:
        fetch_bigbench(tasks=["emoji_movie"])
    message = str(caught.value)
    assert "`teachlab data fetch` with no task names" in message
    assert "causal_judgment" in message and "JSONL" in message
    assert list_bigbench() == ["snarks"]


# ---------------------------------------------------------------- task files


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_load_jsonl_and_csv(storage: Path, tmp_path: Path) -> None:
    task = load_task_file(write(tmp_path, "adds.jsonl", jsonl(free_rows())), description="d")
    assert task.name == "adds" and task.description == "d" and len(task) == 12
    assert task.is_numeric and not task.is_multiple_choice
    assert task.source.startswith("file:")

    lines = ["input,target,choices"] + [
        f'"Is {i} even, yes?",{"yes" if i % 2 == 0 else "no"},yes | no' for i in range(12)
    ]
    task = load_task_file(write(tmp_path, "even.csv", "\n".join(lines)), name="even")
    assert task.name == "even" and task.is_multiple_choice
    assert task.examples[0] == Example("Is 0 even, yes?", "yes", ("yes", "no"))


def test_bom_and_crlf_accepted(storage: Path, tmp_path: Path) -> None:
    body = jsonl(mc_rows()).replace("\n", "\r\n")
    task = load_task_file(write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + body.encode()))
    assert len(task) == 12 and task.examples[0].input == "Is 0 even?"
    assert not any("\r" in e.input + e.target for e in task.examples)

    rows = ["Input,Target"] + [f"q{i},a{i}" for i in range(12)]
    task = load_task_file(write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + "\r\n".join(rows).encode()))
    assert task.examples[0] == Example("q0", "a0")
    assert task.examples[-1] == Example("q11", "a11")


def test_bigbench_style_upload_lines(storage: Path, tmp_path: Path) -> None:
    rows = [{"input": f"q{i}", "target_scores": {"yes": i % 2, "no": 1 - i % 2}} for i in range(12)]
    task = load_task_file(write(tmp_path, "bb.jsonl", jsonl(rows)))
    assert task.examples[1] == Example("q1", "yes", ("yes", "no"))


BAD_LINE = 3  # the malformed record goes on this line


@pytest.mark.parametrize(
    ("base", "bad", "fragments"),
    [
        pytest.param("free", '{"input": "q", "target": }', ["not valid JSON"], id="bad-json"),
        pytest.param("free", '["q", "a"]', ["JSON object", "array"], id="not-an-object"),
        pytest.param("free", '{"target": "a"}', ["field 'input'", "missing"], id="no-input"),
        pytest.param("free", '{"input": "q"}', ["field 'target'", "missing"], id="no-target"),
        pytest.param(
            "free", '{"input": "  ", "target": "a"}', ["field 'input'", "empty"], id="empty-input"
        ),
        pytest.param(
            "free", '{"input": "q", "target": ""}', ["field 'target'", "empty"], id="empty-target"
        ),
        pytest.param(
            "free", '{"input": 5, "target": "a"}', ["field 'input'", "string"], id="input-number"
        ),
        pytest.param(
            "free",
            '{"input": "q", "target": {"a": 1}}',
            ["field 'target'", "string", "object"],
            id="target-object",
        ),
        pytest.param(
            "mc",
            '{"input": "q", "target": "maybe", "choices": ["yes", "no"]}',
            ["field 'target'", "'maybe' is not one of the choices"],
            id="target-not-a-choice",
        ),
        pytest.param(
            "mc",
            '{"input": "q", "target": "yes", "choices": "yes|no"}',
            ["field 'choices'", "list of strings"],
            id="choices-not-list",
        ),
        pytest.param(
            "mc",
            '{"input": "q", "target": "yes", "choices": ["yes", 1]}',
            ["field 'choices'", "list of strings"],
            id="choice-not-string",
        ),
        pytest.param(
            "mc",
            '{"input": "q", "target": "yes", "choices": ["yes", "no", "yes"]}',
            ["field 'choices'", "duplicate choice 'yes'"],
            id="duplicate-choices",
        ),
        pytest.param(
            "mc",
            '{"input": "q", "target": "yes", "choices": ["yes"]}',
            ["field 'choices'", "at least two"],
            id="one-choice",
        ),
        pytest.param(
            "mc",
            '{"input": "q", "target": "yes", "choices": ["yes", " "]}',
            ["field 'choices'", "empty choice"],
            id="empty-choice",
        ),
        pytest.param(
            "mc",
            '{"input": "q", "target_scores": {"yes": 0, "no": 0}}',
            ["field 'target_scores'", "positive"],
            id="scores-no-positive",
        ),
        pytest.param(
            "mc",
            '{"input": "q", "target_scores": {"yes": 1, "no": 1}}',
            ["field 'target_scores'", "top score"],
            id="scores-tie",
        ),
        pytest.param(
            "free",
            '{"input": "q", "target": "yes", "choices": ["yes", "no"]}',
            ["field 'choices'", "all multiple choice or all free-form"],
            id="mixed-kinds",
        ),
    ],
)
def test_malformed_jsonl_names_line_and_field(
    storage: Path, tmp_path: Path, base: str, bad: str, fragments: list[str]
) -> None:
    lines = [json.dumps(r) for r in (free_rows() if base == "free" else mc_rows())]
    lines.insert(BAD_LINE - 1, bad)
    path = write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        load_task_file(path)
    message = str(caught.value)
    assert f"line {BAD_LINE}" in message
    for fragment in fragments:
        assert fragment in message
    assert "bad.jsonl" in message


@pytest.mark.parametrize(
    ("content", "line", "fragments"),
    [
        pytest.param(
            "input,answer\nq,a\n", 1, ["field 'target'", "no such column"], id="no-target-column"
        ),
        pytest.param(
            "input,target\n" + "q,a\n" * 3 + " ,a\n" + "q,a\n" * 9,
            5,
            ["field 'input'", "empty"],
            id="empty-input-cell",
        ),
        pytest.param(
            "input,target,choices\nq,yes,yes|no\n" + "q,maybe,yes|no\n" + "q,no,yes|no\n" * 10,
            3,
            ["field 'target'", "not one of the choices"],
            id="target-not-a-choice",
        ),
        pytest.param(
            "input,target,choices\nq,yes,yes|no|yes\n" + "q,no,yes|no\n" * 10,
            2,
            ["field 'choices'", "duplicate"],
            id="duplicate-choices",
        ),
        pytest.param(
            # a quoted input spanning lines 2-3 must not shift the line numbers after it
            'input,target\n"two\nlines",a\nq,a\nq,a,extra\n' + "q,a\n" * 10,
            5,
            ["has 3 cells"],
            id="cell-count-after-multiline",
        ),
    ],
)
def test_malformed_csv_names_line_and_field(
    storage: Path, tmp_path: Path, content: str, line: int, fragments: list[str]
) -> None:
    with pytest.raises(DataError) as caught:
        load_task_file(write(tmp_path, "bad.csv", content))
    message = str(caught.value)
    assert f"line {line}" in message
    for fragment in fragments:
        assert fragment in message


def test_several_problems_are_reported_together(storage: Path, tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in free_rows(14)]
    for number in (2, 4, 6, 8, 10, 12, 13):
        lines[number - 1] = '{"input": "q"}'
    with pytest.raises(DataError) as caught:
        load_task_file(write(tmp_path, "many.jsonl", "\n".join(lines)))
    message = str(caught.value)
    for number in (2, 4, 6, 8, 10):
        assert f"line {number}, field 'target'" in message
    assert "line 12" not in message and "and 2 more problems" in message


def test_not_utf8_names_the_line(storage: Path, tmp_path: Path) -> None:
    content = jsonl(free_rows()).encode().replace(b"What is 3", b"What is \xe9 3")
    with pytest.raises(DataError, match=r"not UTF-8 text: line 4 has the byte 0xe9"):
        load_task_file(write(tmp_path, "latin1.jsonl", content))
    utf16 = jsonl(free_rows()).encode("utf-16")
    with pytest.raises(DataError, match="UTF-16"):
        load_task_file(write(tmp_path, "utf16.jsonl", utf16))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.jsonl", "", "is empty"),
        ("blank.jsonl", "\n  \n\r\n", "is empty"),
        ("header.csv", "input,target\n", "has no examples"),
        ("few.jsonl", jsonl(free_rows(9)), "only 9 examples; a task needs at least 10"),
        ("task.txt", jsonl(free_rows()), r"unknown extension '\.txt'"),
        ("task", jsonl(free_rows()), "unknown extension"),
    ],
)
def test_file_level_problems(
    storage: Path, tmp_path: Path, name: str, content: str, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        load_task_file(write(tmp_path, name, content))


def test_oversize_rejected_before_reading(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEACHLAB_MAX_UPLOAD_MB", "1")
    get_settings.cache_clear()
    # invalid UTF-8 too: the size must be checked before the content is read
    path = write(tmp_path, "big.jsonl", b"\xff" * (1024 * 1024 + 1))
    with pytest.raises(DataError, match=r"over the 1 MB limit \(TEACHLAB_MAX_UPLOAD_MB\)"):
        load_task_file(path)
    within = write(tmp_path, "ok.jsonl", jsonl(free_rows()))
    assert len(load_task_file(within)) == 12


def test_loading_writes_nothing(storage: Path, tmp_path: Path) -> None:
    load_task_file(write(tmp_path, "t.jsonl", jsonl(free_rows())))
    assert list(storage.rglob("*")) == []


# ---------------------------------------------------------------- uploads


def test_save_uploaded_task_round_trip(storage: Path, tmp_path: Path) -> None:
    src = write(tmp_path, "even.csv", "input,target,choices\n" + "q,yes,yes|no\n" * 12)
    stored = save_uploaded_task(src, "My task!")
    assert stored == get_settings().data_dir / "uploads" / "My-task.jsonl"
    assert json.loads(stored.read_text().splitlines()[0]) == {
        "input": "q",
        "target": "yes",
        "choices": ["yes", "no"],
    }
    task = resolve_task("upload:My-task")
    assert task.source == "upload:My-task" and len(task) == 12 and task.is_multiple_choice
    # the same task again is fine and changes nothing
    assert save_uploaded_task(src, "My task!") == stored
    assert sorted(p.name for p in stored.parent.iterdir()) == ["My-task.jsonl"]


def test_save_uploaded_task_never_clobbers(storage: Path, tmp_path: Path) -> None:
    stored = save_uploaded_task(write(tmp_path, "a.jsonl", jsonl(free_rows())), "adds")
    before = stored.read_bytes()

    bad = jsonl(free_rows()).replace('"target": "4"', '"target": ""')
    with pytest.raises(DataError, match="line 3, field 'target'"):
        save_uploaded_task(write(tmp_path, "b.jsonl", bad), "adds")
    assert stored.read_bytes() == before

    other = write(tmp_path, "c.jsonl", jsonl(free_rows(13)))
    with pytest.raises(DataError, match="different task named 'adds'"):
        save_uploaded_task(other, "adds")
    assert stored.read_bytes() == before
    assert sorted(p.name for p in stored.parent.iterdir()) == ["adds.jsonl"]


def test_upload_names_cannot_escape(storage: Path, tmp_path: Path) -> None:
    src = write(tmp_path, "a.jsonl", jsonl(free_rows()))
    stored = save_uploaded_task(src, "../../etc/passwd")
    assert stored.parent == get_settings().data_dir / "uploads"
    assert stored.name == "etc-passwd.jsonl"
    with pytest.raises(DataError, match="no letters or digits"):
        save_uploaded_task(src, "../..")


# ---------------------------------------------------------------- resolve_task


def test_resolve_task_forms_and_errors(
    storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "t.jsonl", jsonl(free_rows()))
    assert len(resolve_task(f"file:{path}")) == 12
    for ref in ("s3:bucket/x", "date_understanding", "bigbench:", "  "):
        with pytest.raises(DataError, match=r"bigbench:<task>.*upload:<name"):
            resolve_task(ref)
    with pytest.raises(DataError, match=r"No uploaded task named 'missing'.*none yet"):
        resolve_task("upload:missing")
    with pytest.raises(DataError, match="unknown extension"):
        resolve_task(f"file:{tmp_path / 'x.parquet'}")
    with pytest.raises(DataError, match="does not exist"):
        resolve_task(f"file:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(DataError, match="Bad Hugging Face dataset reference"):
        resolve_task("hf:only-a-name")
    monkeypatch.setenv("TEACHLAB_OFFLINE", "1")
    get_settings.cache_clear()
    with pytest.raises(DataError, match="the Hub is unreachable; download the data"):
        resolve_task("hf:openai/gsm8k:main:test?input=question&target=answer")


def test_hf_dataset_columns_and_errors(storage: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    labelled = datasets.Dataset.from_dict(
        {"question": [f"q{i}" for i in range(12)], "label": [i % 2 for i in range(12)]},
        features=datasets.Features(
            {
                "question": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["no", "yes"]),
            }
        ),
    )
    with_choices = datasets.Dataset.from_dict(
        {
            "input": ["a", "b", ""],
            "options": [["x", "y"], ["x", "y"], ["x", "y"]],
            "target": [1, 0, 0],
        }
    )
    calls: list[tuple] = []

    def fake_load(path: str, name: str | None = None, split: str | None = None) -> object:
        calls.append((path, name, split))
        return labelled if path == "org/labelled" else with_choices

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = resolve_task("hf:org/labelled:cfg:train?input=question&target=label&limit=50")
    assert calls == [("org/labelled", "cfg", "train[:50]")]
    assert task.name == "labelled" and task.source.startswith("hf:org/labelled")
    assert task.examples[1] == Example("q1", "yes", ("no", "yes")) and len(task) == 12

    task = resolve_task("hf:org/mc:test?choices=options")
    assert calls[-1] == ("org/mc", None, "test[:5000]")
    assert task.examples == (Example("a", "y", ("x", "y")), Example("b", "x", ("x", "y")))

    with pytest.raises(DataError, match="no column 'input' for the input; its columns are"):
        resolve_task("hf:org/labelled:train")
    with pytest.raises(DataError, match="Unknown option"):
        resolve_task("hf:org/labelled:train?colour=red")

    def unreachable(*args: object, **kwargs: object) -> object:
        raise ConnectionError("Couldn't reach 'org/x' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match="the Hub is unreachable; download the data and upload"):
        resolve_task("hf:org/x:train")


# ---------------------------------------------------------------- splits


def distinct_task(n: int, seed: int = 7) -> Task:
    rng = random.Random(seed)
    return make_task([f"{i}: {sentence(rng)}" for i in range(n)])


def test_splits_deterministic_and_disjoint() -> None:
    task = distinct_task(100)
    first = make_splits(task, seed=0)
    random.seed(12345)  # the global random state must not matter
    assert make_splits(task, seed=0) == first
    assert make_splits(task, seed=1) != first
    assert (len(first.seed), len(first.probe), len(first.test)) == (3, 16, 40)
    everything = first.seed + first.probe + first.test
    assert len(set(everything)) == len(everything)
    assert all(0 <= i < len(task) for i in everything)


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(100, (3, 16, 40)), (40, (3, 16, 21)), (20, (3, 15, 2)), (7, (3, 2, 2))],
)
def test_small_tasks_shrink_test_first(n: int, sizes: tuple[int, int, int]) -> None:
    splits = make_splits(distinct_task(n))
    assert (len(splits.seed), len(splits.probe), len(splits.test)) == sizes


def test_too_small_task_is_an_error() -> None:
    with pytest.raises(DataError, match="6 distinct inputs, too few"):
        make_splits(distinct_task(6))
    # 40 rows but only 6 distinct inputs
    with pytest.raises(DataError, match="6 distinct inputs"):
        make_splits(make_task([f"q{i % 6}" for i in range(40)]))


def test_duplicate_inputs_never_straddle_splits() -> None:
    rng = random.Random(3)
    inputs = [f"question {rng.randrange(30)}" for _ in range(200)]
    task = make_task(inputs)
    for seed in range(20):
        splits = make_splits(task, n_seed=3, n_probe=8, n_test=40, seed=seed)
        seen: dict[str, str] = {}
        for split_name, indices in splits.items():
            for i in indices:
                assert inputs[i] not in seen, f"{inputs[i]!r} in {seen[inputs[i]]} and {split_name}"
                seen[inputs[i]] = split_name
        assert len(seen) == 3 + 8 + 19  # 30 distinct inputs, test shrunk to what is left


def test_overlap_report_finds_planted_duplicates() -> None:
    task = distinct_task(80)
    splits = make_splits(task)
    assert overlap_report(task, splits).exact == []
    assert overlap_report(task, splits).near == []

    examples = list(task.examples)
    s0, t0 = splits.seed[0], splits.test[0]
    p1, t5 = splits.probe[1], splits.test[5]
    examples[t0] = replace(examples[t0], input=examples[s0].input + "!")  # near copy
    examples[t5] = replace(examples[t5], input="  " + examples[p1].input.upper())  # same text
    report = overlap_report(replace(task, examples=tuple(examples)), splits, threshold=90)
    assert [(o.split_a, o.idx_a, o.split_b, o.idx_b) for o in report.near] == [
        ("seed", s0, "test", t0)
    ]
    assert report.near[0].score >= 90
    assert [(o.split_a, o.idx_a, o.split_b, o.idx_b, o.score) for o in report.exact] == [
        ("probe", p1, "test", t5, 100.0)
    ]
    assert not report.clean


def test_near_duplicates() -> None:
    texts = ["The cat sat on the mat.", "Something else entirely", "completely different words"]
    against = ["the  cat sat on the mat", "dogs run fast in parks", "Something else entirely!"]
    pairs = near_duplicates(texts, against, threshold=90)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 0), (1, 2)]
    assert pairs[0][2] >= pairs[1][2]  # best first
    assert all(score >= 90 for _, _, score in pairs)
    assert near_duplicates([], against, 90) == []


# ---------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_fetch_real_bigbench() -> None:
    data_dir = REAL_DATA
    root = fetch_bigbench(dest=data_dir, tasks=["date_understanding", "sports_understanding"])
    assert (root / ".complete").is_file()
    names = list_bigbench(data_dir)
    assert "date_understanding" in names and "sports_understanding" in names
    for name, n_choices in (("date_understanding", 6), ("sports_understanding", 2)):
        task = load_bigbench(name, data_dir)
        assert len(task) > 100
        assert task.is_multiple_choice
        assert all(e.target in e.choices for e in task.examples)
        assert max(len(e.choices) for e in task.examples) == n_choices
    sports = load_bigbench("sports_understanding", data_dir)
    assert set(sports.examples[0].choices) == {"plausible", "implausible"}
    assert sports.prefix.startswith("Determine whether")
    splits = make_splits(sports)
    assert len(splits.test) == 40
