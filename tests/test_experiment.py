"""Experiments end to end on the bundled models at tiny sizes: create, run, kill and resume,
compare; the JSON checked against the stored rows; the arms share what they must."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from teachlab.db import Draft, Pair, Round, Run, read_session
from teachlab.db.tables import Cost, ItemResult
from teachlab.errors import ConfigError
from teachlab.experiments.spec import ExperimentSpec
from teachlab.experiments.store import create_experiment, load_experiment
from teachlab.jobs import runs
from tests.conftest import bigbench_available

SMOL = "bundled:smollm2-135m-instruct"
GEMMA = "bundled:gemma-3-270m"  # the teacher: it writes step-inference questions, SmolLM2 does not
TASKS = ["bigbench:sports_understanding", "bigbench:goal_step_wikihow/step_inference"]
TINY = {
    "n_questions": 2,
    "questions_per_call": 2,
    "n_rationales": 2,
    "n_probe": 6,
    "n_test": 8,
    "n_tailored": 2,
    "dpo_max_steps": 2,
    "dpo_batch_size": 2,
    "sft_max_steps": 2,
    "sft_batch_size": 2,
    "save_steps": 1,
    "max_new_tokens": 64,
    "pair_metric": "margin",
    "scaffold": True,  # field by field: the tiny teacher writes usable questions this way
}


def spec(name: str = "tiny", **over: Any) -> ExperimentSpec:
    data: dict[str, Any] = {
        "name": name,
        "tasks": TASKS,
        "arms": ["original", "arte"],
        "seeds": [0],
        "teacher": GEMMA,
        "student": SMOL,
        "study": TINY,
        "eval_shots": [0, 1],
        "cot_max_tokens": 24,
    }
    return ExperimentSpec.from_dict({**data, **over})


def cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "teachlab", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"arms": ["original", "teleport"]}, "Unknown arm kind"),
        ({"arms": []}, "at least one"),
        ({"seeds": [0, 0]}, "each seed once"),
        ({"seeds": [-1]}, "from 0 to 4294967295"),
        ({"eval_modes": ["vibes"]}, "not known"),
        ({"reference": "gold"}, "reference arm 'gold' is not among the arms"),
        ({"tasks": ["bigbench:no_such_task"]}, "no_such_task"),
        ({"name": "12"}, "not all digits"),
    ],
)
def test_bad_experiments_are_refused_before_anything_is_stored(
    db_path: Path, over: dict, message: str
) -> None:
    from teachlab.errors import TeachlabError
    from teachlab.experiments.store import list_experiments
    from teachlab.studies import list_studies

    with pytest.raises(TeachlabError, match=message):
        create_experiment(spec(**over))
    assert list_experiments() == [] and list_studies() == []


def test_a_suite_with_no_task_data_names_the_fix(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEACHLAB_DATA_CACHE", str(db_path.parent / "empty"))
    from teachlab.settings import get_settings

    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="teachlab data fetch"):
        spec(tasks=["bbh"])


@pytest.mark.skipif(not bigbench_available(), reason="needs the bundled BIG-bench data")
def test_launching_again_after_the_executor_died_resumes_the_same_run(db_path: Path) -> None:
    from datetime import timedelta

    from teachlab.db import write_session
    from teachlab.db.tables import utcnow
    from teachlab.stages.launch import launch_experiment

    create_experiment(spec())
    first = launch_experiment("tiny", requested_by="test").run
    with write_session() as session:  # what a killed foreground run leaves behind
        row = session.get(Run, first.id)
        assert row is not None
        row.status, row.worker = "running", "gone-worker"
        row.heartbeat_at = utcnow() - timedelta(seconds=runs.STALE_AFTER_S * 100)
        session.add(row)

    again = launch_experiment("tiny", requested_by="test").run
    assert again.id == first.id and again.status == "queued"

    with write_session() as session:  # a live executor is still refused
        row = session.get(Run, first.id)
        assert row is not None
        row.status, row.heartbeat_at = "running", utcnow()
        session.add(row)
    assert launch_experiment("tiny", requested_by="test").run.status == "running"


@pytest.mark.slow
@pytest.mark.timeout(3000)
@pytest.mark.skipif(
    not bigbench_available("sports_understanding"), reason="run `teachlab data fetch` first"
)
def test_a_two_task_two_arm_experiment_runs_resumes_and_compares(db_path: Path) -> None:
    made = cli(
        "experiment", "create", "tiny", "--task", TASKS[0], "--task", TASKS[1],
        "--arms", "original,arte", "--seeds", "0", "--teacher", GEMMA, "--student", SMOL,
        "--shots", "0", *(x for k, v in TINY.items() for x in ("--set", f"{k}={v}")),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    exp = load_experiment("tiny")
    # Killed mid-way (once the first arm step has started), then resumed.
    proc = subprocess.Popen(
        [sys.executable, "-m", "teachlab", "experiment", "run", "tiny"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline and proc.poll() is None:
        with read_session() as s:
            started = s.exec(select(Run).where(col(Run.kind).startswith("arm-"))).first()
        if started is not None:
            break
        time.sleep(1)
    assert proc.poll() is None, "the experiment ended before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with read_session() as s:
        done_before = {r.id for r in s.exec(select(Run).where(Run.status == "succeeded"))}
    runs.reap(stale_after_s=0, requeue=False)
    resumed = cli("experiment", "run", "tiny")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with read_session() as s:
        all_runs = s.exec(select(Run)).all()
        items = s.exec(select(ItemResult)).all()
        costs = s.exec(select(Cost)).all()
    # Nothing that had succeeded ran again: each step has one run, the finished ones kept.
    steps = [(r.kind, r.study_id, json.dumps(r.config, sort_keys=True)) for r in all_runs]
    assert len(steps) == len(set(steps))
    assert all(r.status == "succeeded" for r in all_runs if r.id in done_before)
    assert all(r.status == "succeeded" for r in all_runs)

    # The arms share probe items and first-round drafts: both aligned/regenerated from the
    # same round 0 of each study, and evaluated on the very same items.
    for (task, _seed), study in exp.members.items():
        with read_session() as s:
            rounds = {r.arm: r for r in s.exec(select(Round).where(Round.study_id == study.id))}
            first = s.exec(select(Draft).where(Draft.round_id == rounds[None].id)).all()
            pairs = s.exec(select(Pair).where(Pair.round_id == rounds[None].id)).all()
        assert {"original", "arte"} <= set(rounds) and first and pairs
        assert rounds["arte"].teacher_adapter and rounds["original"].teacher_adapter is None
        assert rounds["arte"].student_adapter != rounds["original"].student_adapter
        keys = {arm: {(i.mode, i.shots, i.item) for i in items if i.arm == arm and i.task == task}
                for arm in ("original", "arte")}  # fmt: skip
        assert keys["original"] == keys["arte"]
        assert {i for _, _, i in keys["arte"]} == set(study.splits["test"])

    compared = cli("experiment", "compare", "tiny", "--json")
    assert compared.returncode == 0, compared.stderr
    found = json.loads(compared.stdout)
    assert found["arms"] == ["original", "arte"] and found["tasks"] == TASKS
    by_key = {(c["arm"], c["task"], c["seed"], c["mode"], c["shots"]): c for c in found["cells"]}
    assert len(by_key) == 2 * 2 * 1 * 2 * 1  # arms × tasks × seeds × modes × shots
    for (arm, task, seed, mode, shots), cell in by_key.items():
        stored = [
            i.correct
            for i in items
            if (i.arm, i.task, i.seed, i.mode, i.shots) == (arm, task, seed, mode, shots)
        ]
        assert cell["n"] == len(stored) == 8
        assert cell["accuracy"] == pytest.approx(sum(stored) / len(stored))
        assert cell["ci"][0] <= cell["accuracy"] <= cell["ci"][1]
    pooled = [d for d in found["differences"] if d["task"] == "all"]
    assert {(d["arm"], d["vs"]) for d in pooled} == {("arte", "original")}
    for d in pooled:
        assert d["ci"][0] <= d["diff"] <= d["ci"][1] and 0 <= d["p"] <= 1
    spent = {(c["arm"], c["stage"]) for c in found["cost"]}
    assert {("arte", "align"), ("arte", "distill"), ("original", "regenerate")} <= spent
    assert sum(c.seconds for c in costs) > 0 and all(c.peak_rss_mb > 0 for c in costs)


def test_the_placebo_coin_follows_a_pairs_content_not_its_row_id() -> None:
    from teachlab.db.tables import Pair
    from teachlab.stages.experiment import _coin

    def pair(i: int, row_id: int) -> Pair:
        return Pair(
            id=row_id, round_id=1, level="rationale", rule="arte", prompt=f"p{i}",
            chosen=f"c{i}", rejected=f"r{i}", margin=0.1, rank=0,
        )  # fmt: skip

    assert _coin(0, pair(1, 10)) == _coin(0, pair(1, 999))
    draws = [_coin(0, pair(i, i)) for i in range(400)]
    assert all(0 <= d < 1 for d in draws)
    assert 150 < sum(d < 0.5 for d in draws) < 250  # a fair coin
    assert draws != [_coin(1, pair(i, i)) for i in range(400)]  # the seed matters
