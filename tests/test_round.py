"""The teaching loop on the real bundled models: a whole round, kill-and-resume, the worker.

These are the slow tests: tiny settings, but real drafting, scoring, DPO and SFT on CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from teachlab.db import (
    Draft,
    Evaluation,
    Metric,
    Pair,
    ProbeResult,
    Round,
    Run,
    read_session,
    write_session,
)
from teachlab.jobs import runs
from teachlab.rounds import current_round
from teachlab.stages.launch import execute_here, submit
from teachlab.studies import create_study
from tests.conftest import bigbench_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not bigbench_available("sports_understanding"), reason="run `teachlab data fetch` first"
    ),
]

# Short questions: the tiny base teacher writes parseable ones within the default token budget.
TASK = "bigbench:sports_understanding"
TINY = {
    "n_questions": 4,
    "n_rationales": 2,
    "n_probe": 8,
    "n_test": 12,
    "n_tailored": 2,
    "dpo_max_steps": 2,
    "sft_max_steps": 2,
    "save_steps": 1,
    "eval_shots": 1,
    # A 135M student's probe accuracy often ties between drafts; margins rarely do.
    "pair_metric": "margin",
    # Questions drafted field by field: asked for whole questions, a tiny teacher aligned on a
    # pair or two can write no parseable tailored question, and leave distil nothing.
    "scaffold": True,
}


def count(model: type, *where: object) -> int:
    with read_session() as session:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())


def run_stage(study_id: int, kind: str, **kw: object) -> Run:
    rnd = current_round(study_id)
    return runs.create_run(study_id, kind, round_id=rnd.id, seed=0, **kw)  # type: ignore[arg-type]


def spawn_exec(run_id: int, storage: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "teachlab", "run", "exec", str(run_id)],
        env={**os.environ, "TEACHLAB_STORAGE": str(storage)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_whole_round_on_the_bundled_models(storage: Path) -> None:
    study = create_study("round", TASK, config=TINY)
    rnd = current_round(study.id)  # type: ignore[arg-type]
    final = execute_here(runs.create_run(study.id, "round", round_id=rnd.id).id)  # type: ignore[arg-type]
    assert final.status == "succeeded", final.error
    children = {r.kind: r for r in runs.list_runs(study.id) if r.parent_id == final.id}
    assert set(children) == {
        "draft",
        "score",
        "pairs",
        "align",
        "regenerate",
        "distill",
        "evaluate",
    }
    assert all(r.status == "succeeded" for r in children.values())

    ok_rationales = count(
        Draft,
        Draft.round_id == rnd.id,
        Draft.kind == "rationale",
        Draft.phase == "draft",
        Draft.status == "ok",
    )
    assert ok_rationales > 0
    # Every scored draft × every probe item, plus the zero-shot baseline once.
    assert count(ProbeResult, ProbeResult.round_id == rnd.id) == (ok_rationales + 1) * 8
    assert count(Pair, Pair.round_id == rnd.id) > 0
    for kind in ("align", "distill"):
        run = children[kind]
        assert len(run.result["adapter_sha256"]) == 64
        assert count(Metric, Metric.run_id == run.id, Metric.name == "loss") == 2
        assert run.provenance["packages"]["trl"]
    assert (
        count(Metric, Metric.run_id == children["align"].id, Metric.name == "rewards/margins") == 2
    )
    with read_session() as session:
        evals = session.exec(select(Evaluation).where(Evaluation.round_id == rnd.id)).all()
        nxt = session.exec(select(Round).where(Round.study_id == study.id, Round.index == 1)).one()
    assert {(e.model, e.shots) for e in evals} == {
        ("student-before", 0),
        ("student-before", 1),
        ("student-after", 0),
        ("student-after", 1),
    }
    assert all(e.n == 12 and e.ci_low <= e.accuracy <= e.ci_high for e in evals)
    # The next round starts from the aligned teacher and the distilled student.
    assert nxt.teacher_adapter == children["align"].result["adapter"]
    assert nxt.student_adapter == children["distill"].result["adapter"]


def test_kill_mid_scoring_loses_nothing_finished(storage: Path) -> None:
    study = create_study("kill-score", TASK, config=TINY)
    assert execute_here(run_stage(study.id, "draft").id).status == "succeeded"  # type: ignore[arg-type]
    score = run_stage(study.id, "score")  # type: ignore[arg-type]
    proc = spawn_exec(score.id, storage)  # type: ignore[arg-type]
    scored = col(ProbeResult.draft_id).is_not(None)
    wait_for(lambda: count(ProbeResult, scored) >= 16, 600, "two drafts scored")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with read_session() as session:
        before = {(r.draft_id, r.probe_index): r.id for r in session.exec(select(ProbeResult))}
    assert runs.get_run(score.id).status == "running"  # the killed process recorded no end
    assert runs.reap(stale_after_s=0) == [score.id]
    assert runs.get_run(score.id).status == "interrupted"
    final = execute_here(score.id)  # type: ignore[arg-type]
    assert final.status == "succeeded" and final.attempts == 2
    with read_session() as session:
        after = {(r.draft_id, r.probe_index): r.id for r in session.exec(select(ProbeResult))}
    # Rows stored before the kill are the same rows (same ids): nothing was recomputed.
    assert all(after[key] == row_id for key, row_id in before.items())
    ok = count(Draft, Draft.kind == "rationale", Draft.status == "ok")
    assert len(after) == (ok + 1) * 8


def test_kill_mid_training_resumes_from_the_last_checkpoint(storage: Path) -> None:
    config = {**TINY, "dpo_max_steps": 4, "dpo_batch_size": 2}
    study = create_study("kill-align", TASK, config=config)
    rnd = current_round(study.id)  # type: ignore[arg-type]
    with write_session() as session:
        for i in range(8):
            session.add(
                Pair(
                    round_id=rnd.id,
                    level="question",
                    rule="arte",  # type: ignore[arg-type]
                    prompt=f"User: Write question {i} about dates.\nAssistant:",
                    chosen=f" What day follows Monday {i}? <ans>Tuesday</ans>",
                    rejected=f" banana {i}",
                    margin=0.5,
                    status="approved",
                )
            )
    align = run_stage(study.id, "align")  # type: ignore[arg-type]
    proc = spawn_exec(align.id, storage)  # type: ignore[arg-type]
    run_dir = storage / "runs" / f"run-{align.id:05d}"
    wait_for(lambda: any(run_dir.glob("**/checkpoint-2/.complete")), 900, "checkpoint 2")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    runs.reap(stale_after_s=0)
    assert runs.get_run(align.id).status == "interrupted"
    final = execute_here(align.id)  # type: ignore[arg-type]
    assert final.status == "succeeded", final.error
    assert final.result["steps"] == 4 and final.result["resumed_from"] >= 2
    with read_session() as session:
        steps = session.exec(
            select(Metric.step).where(Metric.run_id == align.id, Metric.name == "loss")
        ).all()
    assert sorted(steps) == [1, 2, 3, 4]  # no step logged twice, none lost


def test_the_worker_executes_a_queued_run(storage: Path) -> None:
    study = create_study("worker", TASK, config={**TINY, "n_test": 6})
    rnd = current_round(study.id)  # type: ignore[arg-type]
    run = submit(study.id, "evaluate", requested_by="test").run  # type: ignore[arg-type]
    worker = subprocess.Popen(
        [sys.executable, "-m", "teachlab", "worker"],
        env={**os.environ, "TEACHLAB_STORAGE": str(storage)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: runs.get_run(run.id).status not in ("queued", "running"), 600, "the run")  # type: ignore[arg-type]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    assert runs.get_run(run.id).status == "succeeded"  # type: ignore[arg-type]
    assert count(Evaluation, Evaluation.round_id == rnd.id) == 2


def test_two_rounds_of_full_fine_tuning_run_through_every_stage(storage: Path) -> None:
    """lora off: align and distil save whole models, and every later stage (the next round's
    drafting and scoring, its training, evaluation, export) loads them in place of the base."""
    from teachlab.export import Selection, export
    from teachlab.models import trained_kind

    study = create_study("full", TASK, config={**TINY, "lora": False, "dpo_lr": 1e-6})
    sid: int = study.id  # type: ignore[assignment]
    for index in (0, 1):
        rnd = current_round(sid)
        assert rnd.index == index
        final = execute_here(runs.create_run(sid, "round", round_id=rnd.id).id)  # type: ignore[arg-type]
        assert final.status == "succeeded", final.error
        children = {r.kind: r for r in runs.list_runs(sid) if r.parent_id == final.id}
        assert all(r.status == "succeeded" for r in children.values()), children
        for kind in ("align", "distill"):
            result = children[kind].result
            assert result["full_model"] is True
            assert trained_kind(result["adapter"]) == "model"
            assert not (Path(result["adapter"]) / "adapter_config.json").exists()
    with read_session() as session:
        r1 = session.exec(select(Round).where(Round.study_id == sid, Round.index == 1)).one()
        # Round 1 drafted with the fully fine-tuned teacher and recorded its weights' hash.
        hashes = session.exec(
            select(Draft.adapter_hash)
            .where(Draft.round_id == r1.id, Draft.phase == "draft")
            .distinct()
        ).all()
        after = session.exec(
            select(Evaluation).where(
                Evaluation.round_id == r1.id, Evaluation.model == "student-after"
            )
        ).all()
    assert r1.teacher_adapter and set(hashes) == {
        children_hash(sid, 0, "align"),
    }
    assert after and all(e.n == 12 for e in after)
    for kind in ("dpo", "sft"):  # pairs by both teachers; the fine-tuned one's tailored data
        assert export(Selection(study=sid), kind).rows > 0


def children_hash(study_id: int, index: int, kind: str) -> str:
    """The output hash of round ``index``'s ``kind`` run."""
    with read_session() as session:
        rnd = session.exec(
            select(Round).where(Round.study_id == study_id, Round.index == index)
        ).one()
        run = session.exec(
            select(Run).where(Run.round_id == rnd.id, Run.kind == kind, Run.status == "succeeded")
        ).one()
    return str(run.result["adapter_sha256"])
