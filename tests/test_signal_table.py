"""The signal table's pure parts (experiments/signal_table.py): which tasks the screen takes,
the cache versioning, and the rendered tables, on hand-made tasks and rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments import signal_table as st
from teachlab.signalcheck import majority_answer, student_vs_chance
from teachlab.tasks.model import Example, Task


def _task(n: int, choices: int = 4, input_chars: int = 40) -> Task:
    labels = tuple(f"option {k}" for k in range(choices))
    examples = tuple(Example("x" * input_chars, labels[0], labels) for _ in range(n))
    return Task("t", "", examples, "test")


def test_the_screen_takes_small_multiple_choice_tasks_only() -> None:
    assert st.screen_eligible(_task(100))
    assert not st.screen_eligible(_task(st.SCREEN_MIN_EXAMPLES - 1))  # no room for the splits
    assert not st.screen_eligible(_task(100, choices=st.SCREEN_MAX_CHOICES + 1))
    assert not st.screen_eligible(_task(100, input_chars=st.SCREEN_MAX_INPUT_CHARS + 1))
    free = Task("f", "", tuple(Example(f"q{i}", str(i)) for i in range(100)), "test")
    assert not st.screen_eligible(free)


def test_rows_of_another_cache_version_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "table.md.json"
    path.write_text(json.dumps({"signal": {"old": {}}, "parse": {}, "invocations": []}))
    assert st.load_cache(path)["signal"] == {}
    current = {"version": st.CACHE_VERSION, "signal": {"k": {"x": 1}}, "invocations": []}
    path.write_text(json.dumps(current))
    loaded = st.load_cache(path)
    assert loaded["signal"] == {"k": {"x": 1}} and loaded["screen"] == {}


def _screen_row(task: str, k: int, gold: list[str]) -> dict[str, Any]:
    few = [True] * k + [False] * (len(gold) - k)
    chance = student_vs_chance(few, few, 0.5, majority=majority_answer(gold))
    return {
        "task": task,
        "student": "bundled:smollm2-135m-instruct",
        "n_examples": 100,
        "chance": chance,
        "p_value": 0.01 if k > 24 else 0.6,
        "seconds": 30.0,
    }


def test_the_screen_table_sorts_by_p_and_marks_a_majority_baseline() -> None:
    balanced = ["a", "b"] * 16
    skewed = ["a"] * 28 + ["b"] * 4  # always answering "a" scores 0.88
    cache = {
        "screen": {
            "one": _screen_row("weak", 17, balanced),
            "two": _screen_row("strong", 28, balanced),
            "three": _screen_row("skewed", 28, skewed),
        }
    }
    lines = st.render_screen(cache)
    body = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0] for line in body] == ["| skewed", "| strong", "| weak"]
    assert "0.88ᵐ" in body[0] and "0.50 |" in body[1]
    assert "**0.88 (0.71–0.96)**" in body[1]  # the whole interval above chance
    assert "1 have the whole 3-shot CI above chance" in lines[2]
    assert st.render_screen({"screen": {}}) == []


def test_parse_rows_are_keyed_by_their_drafting_settings() -> None:
    from teachlab.config import StudyConfig
    from teachlab.studies import DEMO_CONFIG

    assert st.parse_sets(["scaffold=false", "question_temperature=1.0", "x=word"]) == {
        "scaffold": False,
        "question_temperature": 1.0,
        "x": "word",
    }
    demo = st.parse_key("t", 4)
    blocks = st.parse_key("t", 4, {"scaffold": False})
    assert demo != blocks and "scaffolded, one question per call" in demo
    assert "5 questions per call, prefilled" in blocks
    rows = {
        demo: {
            "task": "t",
            "settings": st.describe_drafting(StudyConfig.from_dict(DEMO_CONFIG)),
            "calls": 4,
            "blocks": 4,
            "ok": 3,
            "duplicate": 0,
            "rejected": 1,
            "parse_rate": 0.75,
            "seconds": 40.0,
        },
        blocks: {
            "task": "t",
            "settings": st.describe_drafting(
                StudyConfig.from_dict({**DEMO_CONFIG, "scaffold": False})
            ),
            "calls": 4,
            "blocks": 13,
            "ok": 3,
            "duplicate": 0,
            "rejected": 10,
            "parse_rate": 3 / 13,
            "seconds": 50.0,
        },
    }
    cache = {"parse": rows}
    assert st._parse_text(cache, "t") == "75% (3 ok / 4)"  # the demo's own settings only
    table = st.render_parse(cache)
    assert sum(line.startswith("| t |") for line in table) == 2
    assert any("| 23% |" in line for line in table)
