"""Training in a process group (``num_processes`` > 1, through ``accelerate launch``): on CPU
with gloo, 2 processes reach the same losses as 1 process for the same global batch, as one
durable run (its metrics, one result); a setting the machine cannot honour is refused first."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from teachlab.config import StudyConfig
from teachlab.db import Metric, Round, Run, Study, read_session, write_session
from teachlab.errors import ConfigError
from teachlab.jobs.context import LocalContext
from teachlab.train import train_dpo, train_sft

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
STUDENT = "bundled:smollm2-135m-instruct"
SPORTS = ("football", "tennis", "golf", "rugby", "hockey", "boxing", "cricket", "judo")
EXAMPLES = [{"prompt": f"Q: Is {s} a sport?\nA:", "completion": " Yes, it is."} for s in SPORTS]
PAIRS = [
    {"prompt": f"Q: Is {s} a sport?\nA:", "chosen": " Yes.", "rejected": " No, never."}
    for s in SPORTS
]
# Losses of one step agree to float32 reduction order (sums over 2 ranks, not 1).
TOLERANCE = 1e-4


def new_run(kind: str, processes: int) -> int:
    with write_session() as session:
        study = Study(name=f"mp-{kind}-{processes}", task_ref="x", teacher=STUDENT, student=STUDENT)
        session.add(study)
        session.flush()
        rnd = Round(study_id=study.id, teacher=STUDENT, student=STUDENT)  # type: ignore[arg-type]
        session.add(rnd)
        session.flush()
        run = Run(study_id=study.id, round_id=rnd.id, kind=kind)  # type: ignore[arg-type]
        session.add(run)
        session.flush()
        return run.id  # type: ignore[return-value]


def logged(run_id: int, name: str) -> dict[int, float]:
    with read_session() as session:
        rows = session.exec(
            select(Metric).where(Metric.run_id == run_id, Metric.name == name)
        ).all()
    return {m.step: m.value for m in rows}


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_gloo_processes_reach_the_losses_of_one_for_the_same_global_batch(
    method: str, db_path: Path, tmp_path: Path
) -> None:
    results, seen, lines = {}, {}, {}
    for processes in (1, 2):
        run_id = new_run("distill" if method == "sft" else "align", processes)
        ctx = LocalContext(run_id=run_id, seed=3)
        if method == "sft":
            config = StudyConfig(
                sft_lr=2e-3, sft_batch_size=4, sft_max_steps=3, lora_r=4, num_processes=processes
            )
            result = train_sft(
                ctx, base_ref=STUDENT, adapter_in=None,
                examples=EXAMPLES, config=config, run_dir=tmp_path / f"{method}{processes}",
                run_id=run_id,
            )  # fmt: skip
        else:
            config = StudyConfig(
                dpo_lr=2e-3, dpo_batch_size=4, dpo_max_steps=3, lora_r=4, num_processes=processes
            )
            result = train_dpo(
                ctx, base_ref=STUDENT, adapter_in=None,
                pairs=PAIRS, config=config, run_dir=tmp_path / f"{method}{processes}",
                run_id=run_id,
            )  # fmt: skip
        # The loss, and a value that depends on which rows made the batch.
        data = "logps/chosen" if method == "dpo" else "num_tokens"
        results[processes] = result
        seen[processes] = {"loss": logged(run_id, "loss"), data: logged(run_id, data)}
        lines[processes] = ctx.lines
    assert results[2].global_step == results[1].global_step == 3
    assert any("2 processes (MULTI_CPU)" in line for line in lines[2]), lines[2]
    for name, by_step in seen[1].items():
        assert set(by_step) == set(seen[2][name]) == {1, 2, 3}  # one run's rows, each step once
        for step, value in by_step.items():
            assert seen[2][name][step] == pytest.approx(value, abs=TOLERANCE), (name, step, seen)
    assert seen[1]["loss"][3] != seen[1]["loss"][1]  # it trained: the comparison is not idle
    assert (tmp_path / f"{method}2" / "group" / "log.txt").is_file()
    assert len(results[2].adapter_sha256) == 64


def test_settings_a_machine_cannot_honour_are_refused_before_training(
    db_path: Path, tmp_path: Path
) -> None:
    import os

    with pytest.raises(ConfigError, match="does not split over num_processes=3"):
        StudyConfig(sft_batch_size=4, dpo_batch_size=6, num_processes=3).validate()
    cores = os.cpu_count() or 1
    too_many = StudyConfig(
        sft_batch_size=4 * (cores + 1), dpo_batch_size=4 * (cores + 1), num_processes=cores + 1
    ).validate()
    with pytest.raises(ConfigError, match="more processes than this machine's"):
        train_sft(
            LocalContext(), base_ref=STUDENT, adapter_in=None, examples=EXAMPLES,
            config=too_many, run_dir=tmp_path / "r", run_id=None,
        )  # fmt: skip
    assert not (tmp_path / "r" / "output").exists()
    missing = StudyConfig(accelerate_config=str(tmp_path / "nope.yaml")).validate()
    with pytest.raises(ConfigError, match="is not a file"):
        train_sft(
            LocalContext(), base_ref=STUDENT, adapter_in=None, examples=EXAMPLES,
            config=missing, run_dir=tmp_path / "r2", run_id=None,
        )  # fmt: skip
