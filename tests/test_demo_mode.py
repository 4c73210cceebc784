"""A public demo's limits, enforced on the server: study sizes where studies are made, runs at a
time per visitor and in all where runs are launched."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import parity_rows, task_file, update

from teachlab import demo, studies
from teachlab.db import Run
from teachlab.errors import ConfigError, JobError
from teachlab.settings import get_settings
from teachlab.stages.launch import launch


@pytest.fixture
def demo_mode(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLAB_DEMO_MODE", "true")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def small_task(tmp_path: Path) -> str:
    return f"file:{task_file(tmp_path, parity_rows(120)).path}"


def test_a_demo_refuses_studies_over_its_size_limits(demo_mode: None, tmp_path: Path) -> None:
    task = small_task(tmp_path)
    with pytest.raises(ConfigError, match=r"n_questions=100 \(at most 16\).*n_probe=200"):
        studies.create_study("big", task, config={"n_questions": 100, "n_probe": 200})
    with pytest.raises(ConfigError, match=r"dpo_max_steps=0"):  # whole epochs: unbounded
        studies.create_study("epochs", task, config={"dpo_max_steps": 0})
    assert studies.list_studies() == []
    made = studies.create_study("fits", task, config=studies.DEMO_CONFIG)
    assert made.config["n_questions"] == studies.DEMO_CONFIG["n_questions"]


def test_the_demo_presets_own_settings_fit_its_limits() -> None:
    demo.check_config(studies.preset_config(next(p for p in studies.PRESETS if "demo" in p)))
    with pytest.raises(ConfigError, match="n_questions=250"):
        demo.check_config(studies.preset_config(next(p for p in studies.PRESETS if "paper" in p)))


def test_a_demo_runs_one_run_per_visitor_and_a_few_in_all(demo_mode: None, tmp_path: Path) -> None:
    task = small_task(tmp_path)
    # One run of a study at a time holds anyway: each visitor works on a study of their own.
    own = {
        who: studies.create_study(who, task, config=studies.DEMO_CONFIG).id
        for who in ("visitor-a", "visitor-b", "visitor-c", "visitor-d")
    }

    def go(who: str, study: str | None = None, kind: str = "draft") -> Run:
        return launch(own[study or who], kind, requested_by=who, demo_mode=True).run  # type: ignore[arg-type]

    first = go("visitor-a")
    with pytest.raises(JobError, match="1 per visitor"):
        go("visitor-a", "visitor-b")  # another study, the same visitor
    go("visitor-b")
    go("visitor-c")
    with pytest.raises(JobError, match="demo is busy"):
        go("visitor-d")
    update(Run, first.id, status="succeeded")  # type: ignore[arg-type]
    go("visitor-d")
    assert "n_questions ≤ 16" in demo.describe() and f"{demo.UPLOAD_MB} MB" in demo.describe()
