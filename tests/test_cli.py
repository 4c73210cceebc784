"""The `teachlab` command line, run as a user runs it (a subprocess on a temporary storage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def teachlab(*args: str, storage: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEACHLAB_STORAGE": str(storage)}
    return subprocess.run(
        [sys.executable, "-m", "teachlab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "capitals.jsonl"
    rows = [
        {
            "input": f"What is the capital of country number {i}?",
            "target": f"City {i % 3}",
            "choices": ["City 0", "City 1", "City 2"],
        }
        for i in range(40)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_help_lists_every_command(storage: Path) -> None:
    out = teachlab("--help", storage=storage)
    assert out.returncode == 0
    for command in ("serve", "worker", "demo", "models", "data", "study", "round", "run"):
        assert command in out.stdout
    for group, subs in {
        "models": ("fetch", "list"),
        "data": ("fetch", "list"),
        "study": ("create", "list", "show"),
    }.items():
        sub = teachlab(group, "--help", storage=storage)
        assert sub.returncode == 0 and all(s in sub.stdout for s in subs)


def test_study_create_list_show(storage: Path, task_file: Path) -> None:
    created = teachlab(
        "study",
        "create",
        "caps",
        "--task",
        f"file:{task_file}",
        "--seed",
        "3",
        "--set",
        "n_probe=8",
        "--set",
        "n_test=10",
        storage=storage,
    )
    assert created.returncode == 0, created.stderr
    assert "Created study #1 'caps'" in created.stdout
    listed = teachlab("study", "list", storage=storage)
    assert "caps" in listed.stdout and f"file:{task_file}" in listed.stdout
    shown = json.loads(teachlab("study", "show", "caps", storage=storage).stdout)
    assert shown["seed"] == 3 and shown["config"]["n_probe"] == 8
    assert shown["splits"]["probe"] == 8 and shown["splits"]["test"] == 10
    assert shown["rounds"][0]["index"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("study", "show", "nope"), "No study 'nope'"),
        (("study", "create", "x", "--task", "bigbench:no_such_task"), "teachlab data"),
        (("study", "create", "x", "--task", "file:/no/such.jsonl"), "/no/such.jsonl"),
        (
            ("study", "create", "x", "--task", "bigbench:x", "--teacher", "bundled:nope"),
            "Unknown bundled model",
        ),
        (("study", "create", "x", "--task", "bigbench:x", "--set", "n_probe"), "key=value"),
        (("study", "create", "x", "--task", "bigbench:x", "--set", "scorer=magic"), "loglik"),
        (("run", "cancel", "42"), "Run #42 does not exist"),
    ],
)
def test_errors_are_one_clear_line_and_exit_1(
    storage: Path, args: tuple[str, ...], message: str
) -> None:
    out = teachlab(*args, storage=storage)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_usage_error_exits_2(storage: Path) -> None:
    out = teachlab("study", "create", storage=storage)
    assert out.returncode == 2


def test_duplicate_name_is_refused_and_nothing_changes(storage: Path, task_file: Path) -> None:
    assert (
        teachlab(
            "study", "create", "caps", "--task", f"file:{task_file}", storage=storage
        ).returncode
        == 0
    )
    again = teachlab(
        "study", "create", "caps", "--task", f"file:{task_file}", "--seed", "9", storage=storage
    )
    assert again.returncode == 1 and "exists already" in again.stderr
    shown = json.loads(teachlab("study", "show", "caps", storage=storage).stdout)
    assert shown["seed"] == 0
