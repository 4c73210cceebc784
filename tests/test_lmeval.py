"""The lm-eval route: an lm-evaluation-harness task run on the student (with its adapter), alone
and inside the evaluate stage, fully offline on a tiny task file the tests write.

Fast tests cover the errors (lm-eval missing, a bad or task-less YAML, an unknown task name, a
dataset that cannot load offline) and the reading of lm-eval's results; the slow ones run the
bundled SmolLM2-135M through lm-eval's own ``hf`` model.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from teachlab.config import StudyConfig
from teachlab.errors import ConfigError, DataError
from teachlab.score.lmeval import LmEvalResult, _result, run_lm_eval, task_name
from teachlab.stages.evaluate import lm_eval_steps
from tests.conftest import bigbench_available

STUDENT = "bundled:smollm2-135m-instruct"
TASK_NAME = "teachlab_tiny_mc"
ITEMS = [
    ("What color is the sky on a clear day?", ["blue", "green", "red"], 0),
    ("How many legs does a dog have?", ["two", "four", "six"], 1),
    ("What is 2 + 2?", ["three", "five", "four"], 2),
    ("Which animal says meow?", ["cat", "cow", "duck"], 0),
    ("What do bees make?", ["milk", "honey", "silk"], 1),
    ("Which of these is a fruit?", ["carrot", "potato", "apple"], 2),
    ("What is frozen water called?", ["ice", "steam", "sand"], 0),
    ("Which planet do we live on?", ["Mars", "Earth", "Venus"], 1),
]

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-eval is not installed: pip install -e '.[eval]'",
)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' Arrow cache in the test's folder, not the user's home."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def write_task(folder: Path, *, data: Path | None = None, **extra: Any) -> Path:
    """A multiple-choice task over ITEMS (a local JSONL file) as an lm-eval task YAML; its
    metrics: accuracy (the primary one) and the Brier score, which moves with any change to
    the choices' log-likelihoods."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = folder / "items.jsonl"
        data.write_text(
            "".join(
                json.dumps({"question": q, "choices": c, "gold": g}) + "\n" for q, c, g in ITEMS
            )
        )
    config = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "brier_score", "aggregation": "brier_score", "higher_is_better": False},
        ],
    } | extra
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def make_adapter(folder: Path, *, zero: bool) -> Path:
    """A LoRA adapter for the student. ``zero``: peft's default start (B = 0, so the adapted
    model is the base model); otherwise random A and B, which change every log-likelihood."""
    import torch
    from peft import LoraConfig, get_peft_model

    from teachlab import models

    torch.manual_seed(0)
    base = models.load(STUDENT).model
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=zero
    )
    get_peft_model(base, config).save_pretrained(folder)
    assert (folder / "adapter_config.json").is_file()
    return folder


# --- errors, fast ---------------------------------------------------------------------------


def test_missing_lm_eval_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[eval\]'"):
        run_lm_eval(STUDENT, None, "arc_easy")
    with pytest.raises(ConfigError, match="not installed"):
        task_name(str(write_task(tmp_path)))
    # A study without lm-eval tasks never needs it: the stage adds nothing.
    assert lm_eval_steps((), [("student-before", None)]) == []
    with pytest.raises(ConfigError, match="not installed"):
        lm_eval_steps((str(write_task(tmp_path)),), [("student-before", None)])


@needs_lm_eval
def test_task_names_come_from_the_yaml(tmp_path: Path) -> None:
    assert task_name("arc_easy") == "arc_easy"
    assert task_name(str(write_task(tmp_path))) == TASK_NAME
    variants = [("student-before", None), ("student-after", "/a")]
    yaml_path = str(write_task(tmp_path))
    assert lm_eval_steps((yaml_path, "arc_easy", yaml_path), variants) == [
        ("student-before", None, yaml_path, TASK_NAME),
        ("student-before", None, "arc_easy", "arc_easy"),
        ("student-after", "/a", yaml_path, TASK_NAME),
        ("student-after", "/a", "arc_easy", "arc_easy"),
    ]


@needs_lm_eval
def test_bad_task_files_are_one_line_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [unclosed\ndataset_path: json\n")
    with pytest.raises(ConfigError, match="cannot be read as a task YAML") as info:
        run_lm_eval(STUDENT, None, str(broken))
    assert "\n" not in str(info.value)
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("dataset_path: json\noutput_type: multiple_choice\n")
    with pytest.raises(ConfigError, match="names no task; add a line `task: <name>`"):
        run_lm_eval(STUDENT, None, str(nameless))
    with pytest.raises(ConfigError, match="does not exist"):
        task_name(str(tmp_path / "missing.yaml"))
    listed = tmp_path / "list.yaml"
    listed.write_text("- task: x\n")
    with pytest.raises(ConfigError, match="cannot be read as a task YAML"):
        task_name(str(listed))


@needs_lm_eval
def test_a_missing_data_file_is_a_data_error(tmp_path: Path) -> None:
    path = write_task(tmp_path / "t", data=tmp_path / "nowhere.jsonl")
    with pytest.raises(DataError, match=f"dataset of lm-eval task '{TASK_NAME}'") as info:
        run_lm_eval(STUDENT, None, str(path))
    assert "\n" not in str(info.value)


@needs_lm_eval
def test_an_unknown_task_name_suggests_close_ones() -> None:
    with pytest.raises(
        ConfigError, match="'arc_eazy' is not an lm-eval task; did you mean arc_easy"
    ):
        run_lm_eval(STUDENT, None, "arc_eazy")


@needs_lm_eval
def test_a_named_task_offline_without_its_dataset_cached_says_so() -> None:
    import datasets.config

    if any(Path(datasets.config.HF_DATASETS_CACHE).glob("allenai___ai2_arc*")):
        pytest.skip("ARC is cached here; it would load")
    with pytest.raises(DataError, match=r"TEACHLAB_OFFLINE is set.*run the task once where"):
        run_lm_eval(STUDENT, None, "arc_easy", limit=1)


@needs_lm_eval
def test_adapter_folders_are_checked_before_lm_eval_runs(tmp_path: Path) -> None:
    from teachlab.errors import ModelError

    with pytest.raises(ModelError, match=r"holds neither a LoRA adapter \(adapter_config\.json\)"):
        run_lm_eval(STUDENT, str(tmp_path), str(write_task(tmp_path)))


def test_results_are_read_from_lm_eval_output() -> None:
    output = {
        "results": {
            "t": {"alias": "t", "acc,none": 0.9, "acc_stderr,none": 0.1, "f1,none": 0.2},
            "u": {"alias": "u", "exact_match,strict": 0.5, "exact_match_stderr,strict": "N/A"},
        },
        "configs": {"t": {"metric_list": [{"metric": "acc"}], "validation_split": "dev"}},
        "n-samples": {"t": {"original": 20, "effective": 10}, "u": {"effective": 4}},
        "n-shot": {"t": 5, "u": 0},
        "config": {"model_args": {"pretrained": "/m", "peft": "/a"}},
    }
    t = _result("t", output, "0.4.13", {})
    assert (t.metric, t.value, t.stderr, t.n, t.num_fewshot, t.split) == (
        "acc",
        0.9,
        0.1,
        10,
        5,
        "dev",
    )
    assert t.interval() == pytest.approx((0.704, 1.0))  # clipped at 1
    assert t.model_args["peft"] == "/a"
    u = _result("u", output, "0.4.13", {"pretrained": "/m"})
    assert (u.metric, u.stderr, u.interval(), u.split) == (
        "exact_match,strict",
        None,
        (None, None),
        "test",
    )
    low = LmEvalResult("x", "acc", 0.05, 0.1, 8, 0, "test", "0.4.13", {})
    assert low.interval() == pytest.approx((0.0, 0.246))


def test_the_setting_is_a_comma_separated_tuple() -> None:
    assert StudyConfig().lm_eval_tasks == ()
    cfg = StudyConfig.from_dict({"lm_eval_tasks": "arc_easy, /tasks/mine.yaml"})
    assert cfg.lm_eval_tasks == ("arc_easy", "/tasks/mine.yaml")
    assert StudyConfig.parse("lm_eval_tasks", "") == ()
    assert "lm-evaluation-harness" in StudyConfig.help()["lm_eval_tasks"]


# --- the real thing, slow -------------------------------------------------------------------


@pytest.mark.slow
@needs_lm_eval
def test_run_lm_eval_on_the_student_with_and_without_its_adapter(tmp_path: Path) -> None:
    task = str(write_task(tmp_path / "task"))
    base = run_lm_eval(STUDENT, None, task, batch_size=8)
    assert (base.task, base.metric, base.n, base.num_fewshot) == (TASK_NAME, "acc", 8, 0)
    assert base.lm_eval_version == "0.4.13" and base.split == "test"
    assert 0.0 <= base.value <= 1.0 and base.value * 8 == round(base.value * 8)
    assert base.stderr is not None and base.interval()[0] is not None
    assert "peft" not in base.model_args and base.model_args["dtype"] == "float32"

    # peft's default LoRA starts with B = 0: lm-eval loads it, and scores the base model.
    zero = make_adapter(tmp_path / "zero", zero=True)
    same = run_lm_eval(STUDENT, str(zero), task, batch_size=8)
    assert same.model_args["peft"] == str(zero)  # lm-eval's own config echoes the adapter
    brier = "brier_score,none"
    assert same.value == base.value
    assert same.results[TASK_NAME][brier] == pytest.approx(base.results[TASK_NAME][brier])

    # Random LoRA weights change every choice's log-likelihood, so the Brier score moves.
    noisy = make_adapter(tmp_path / "noisy", zero=False)
    moved = run_lm_eval(STUDENT, str(noisy), task, batch_size=8, limit=4)
    assert moved.n == 4 and moved.model_args["peft"] == str(noisy)
    assert moved.results[TASK_NAME][brier] != pytest.approx(
        base.results[TASK_NAME][brier], abs=1e-4
    )


@pytest.mark.slow
@needs_lm_eval
@pytest.mark.skipif(
    not bigbench_available("sports_understanding"), reason="run `teachlab data fetch` first"
)
def test_the_evaluate_stage_runs_lm_eval_tasks_and_resumes(tmp_path: Path) -> None:
    from sqlmodel import select

    from teachlab import models
    from teachlab.db import Evaluation, read_session
    from teachlab.jobs import runs
    from teachlab.rounds import current_round
    from teachlab.stages.launch import execute_here
    from teachlab.studies import create_study
    from tests.builders import run as run_row

    task = str(write_task(tmp_path / "task"))
    config = {
        "n_probe": 4,
        "n_test": 6,
        "eval_shots": 1,
        "bootstrap": 100,
        "lm_eval_tasks": [task],
    }
    study = create_study("lm-eval", "bigbench:sports_understanding", config=config)
    rnd = current_round(study.id)  # type: ignore[arg-type]
    # A distilled student (a random LoRA) as if the distil stage had made it.
    adapter = make_adapter(tmp_path / "distilled", zero=False)
    run_row(rnd, "distill", status="succeeded", result={"adapter": str(adapter)})

    first = execute_here(runs.create_run(study.id, "evaluate", round_id=rnd.id).id)  # type: ignore[arg-type]
    assert first.status == "succeeded", first.error
    with read_session() as session:
        rows = session.exec(select(Evaluation).where(Evaluation.round_id == rnd.id)).all()
    mode = f"lm-eval:{TASK_NAME}"
    assert sorted((e.model, e.mode, e.shots) for e in rows) == [
        ("student-after", "lm-eval:teachlab_tiny_mc", 0),
        ("student-after", "loglik", 0),
        ("student-after", "loglik", 1),
        ("student-before", "lm-eval:teachlab_tiny_mc", 0),
        ("student-before", "loglik", 0),
        ("student-before", "loglik", 1),
    ]
    lm_rows = {e.model: e for e in rows if e.mode == mode}
    for e in lm_rows.values():
        assert e.n == 8 and e.split == "test" and e.model_ref == STUDENT
        assert e.ci_low is not None and e.ci_high is not None
        assert 0.0 <= e.ci_low <= e.accuracy <= e.ci_high <= 1.0
    assert lm_rows["student-before"].adapter_hash is None
    assert lm_rows["student-after"].adapter_hash == models.hash_folder(
        adapter, "adapter_model.safetensors"
    )
    assert first.result[f"student-after@{mode}"] == lm_rows["student-after"].accuracy

    # A second run finds everything stored and adds nothing.
    again = execute_here(runs.create_run(study.id, "evaluate", round_id=rnd.id).id)  # type: ignore[arg-type]
    assert again.status == "succeeded", again.error
    with read_session() as session:
        count = len(session.exec(select(Evaluation).where(Evaluation.round_id == rnd.id)).all())
    assert count == 6 and not again.result
