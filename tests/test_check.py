"""The check stage: what it measures with the student, and which score metric its verdict is on.

A fake scorer stands in for the student in the pure tests (the statistics themselves are tested
on simulated data in test_signalcheck.py); the slow test runs the bundled student.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
from builders import draft, parity_rows, probe_results, task_file
from sqlmodel import select

from teachlab import models, score
from teachlab.db import Round, SignalCheck, Study, read_session
from teachlab.jobs import runs
from teachlab.jobs.context import LocalContext
from teachlab.score import Demo, Probe, ProbeOutcome
from teachlab.stages import check
from teachlab.studies import create_study
from teachlab.tasks import resolve_task
from tests.conftest import bigbench_available


def parity_task(folder: Path, n: int = 80) -> str:
    """A binary task file: is the number even? (labels 'yes'/'no', chance 0.5)."""
    return task_file(folder, parity_rows(n, "Is {} an even number?"), "parity.jsonl").ref


class FakeScorer:
    """Right on even probe indices zero-shot, right on all of them with any demonstration;
    the margin grows with the demonstration's example index (a known 'quality')."""

    calls: ClassVar[list[list[Demo]]] = []

    def __init__(self, model, tokenizer, description, probes, mode="loglik") -> None:
        self.probes: list[Probe] = list(probes)

    def score(self, demos=()) -> list[ProbeOutcome]:
        FakeScorer.calls.append(list(demos))
        quality = int(demos[0].question.split()[1]) / 10 if len(demos) == 1 else 0.0
        return [
            ProbeOutcome(
                p.index,
                p.target,
                bool(demos) or p.index % 2 == 0,
                -1.0,
                quality + 0.01 * (p.index % 3),
            )
            for p in self.probes
        ]


def outcome(index: int, correct: bool, margin: float | None) -> ProbeOutcome:
    return ProbeOutcome(index, "", correct, None, margin)


# --- pure pieces ---------------------------------------------------------------------------------


def test_per_probe_reads_the_chosen_metric() -> None:
    demos = {"a": [outcome(3, True, 1.5), outcome(7, False, None)]}
    assert check.per_probe(demos, "accuracy") == {"a": {3: 1.0, 7: 0.0}}
    margins = check.per_probe(demos, "margin")
    assert margins["a"][3] == 1.5 and math.isnan(margins["a"][7])


def test_example_demos_never_use_probe_or_test_items(tmp_path: Path) -> None:
    task = resolve_task(parity_task(tmp_path))
    splits = {"seed": [0, 1, 2], "probe": list(range(10, 30)), "test": list(range(30, 70))}
    picked = check.example_demos(task, splits, seed=4, n=15)
    assert len(picked) == len(set(picked)) == 15
    assert not set(picked) & (set(splits["probe"]) | set(splits["test"]))
    assert check.example_demos(task, splits, seed=4, n=15) == picked
    assert len(check.example_demos(task, splits, seed=4, n=100)) == 80 - 60  # the whole pool


def test_measure_scores_examples_before_drafts_exist(tmp_path: Path) -> None:
    task = resolve_task(parity_task(tmp_path))
    probes = [
        Probe(i, task.examples[i].input, task.examples[i].target, ("yes", "no")) for i in (4, 5)
    ]
    splits = {"seed": [0, 1, 2], "probe": [4, 5], "test": [6, 7]}
    events: list[tuple[int, int, str]] = []
    FakeScorer.calls = []
    m = check.measure(
        FakeScorer(None, None, "", probes),  # type: ignore[arg-type]
        task,
        splits,
        seed=0,
        shots=3,
        n_demos=5,
        drafts=({}, {}),  # too few scored drafts
        progress=lambda d, t, msg: events.append((d, t, msg)),
    )
    assert m.source == "task examples" and len(m.demos) == 5
    assert [len(c) for c in FakeScorer.calls] == [0, 3, 1, 1, 1, 1, 1]
    assert [d.question for d in FakeScorer.calls[1]] == [task.examples[i].input for i in (0, 1, 2)]
    assert all(m.labels[i] == task.examples[i].target for i in m.demos)
    assert [o.correct for o in m.zero_shot] == [True, False]
    assert events[-1][:2] == (7, 7)  # a finished check is at 100%, not 6/7


def test_measure_uses_scored_drafts_when_there_are_enough(tmp_path: Path) -> None:
    task = resolve_task(parity_task(tmp_path))
    probes = [Probe(4, task.examples[4].input, "yes", ("yes", "no"))]
    drafts = {d: [outcome(4, True, 0.1 * d)] for d in range(check.MIN_DRAFTS)}
    labels = dict.fromkeys(drafts, "yes")
    events: list[tuple[int, int, str]] = []
    FakeScorer.calls = []
    m = check.measure(
        FakeScorer(None, None, "", probes),  # type: ignore[arg-type]
        task,
        {"seed": [0], "probe": [4], "test": [6]},
        seed=0,
        shots=0,
        drafts=(drafts, labels),
        progress=lambda d, t, msg: events.append((d, t, msg)),
    )
    assert m.source == "scored drafts" and m.demos == drafts
    assert events[-1][0] == events[-1][1]
    assert [len(c) for c in FakeScorer.calls] == [0, 1]  # zero-shot, one seed shot at least


def test_margin_check_without_margins_says_why() -> None:
    # Free-form probes (or generate mode) have no margin: nothing to measure on that metric.
    demos = {d: [outcome(p, p % 2 == 0, None) for p in range(10)] for d in range(12)}
    m = check.Measurement([], [outcome(0, True, None)], demos, {}, "task examples")
    result = check.assess(m, None, metric="margin", seed=0)
    assert result.verdict is not None and result.verdict.level == "stop"
    assert result.verdict.reasons == [
        "no margin scores: the margin exists only for multiple-choice probe items scored by "
        "log-likelihood — use the accuracy metric on this task or scorer"
    ]


# --- the stage -----------------------------------------------------------------------------------


def _study(tmp_path: Path, pair_metric: str) -> tuple[int, int]:
    study = create_study(
        f"parity-{pair_metric}",
        parity_task(tmp_path),
        config={"n_probe": 20, "n_test": 20, "pair_metric": pair_metric},
    )
    with read_session() as s:
        rnd = s.exec(select(Round).where(Round.study_id == study.id)).one()
    return study.id, rnd.id  # type: ignore[return-value]


def _seed_scored_drafts(round_id: int, probes: list[int], n_drafts: int = 30) -> list[float]:
    """Drafts the student never gets right (accuracy pinned at 0) but whose margins follow a
    known quality plus probe noise: only the margin can rank them."""
    rng = np.random.default_rng(0)
    quality = rng.normal(0, 1, n_drafts)
    means = []
    for i in range(n_drafts):
        demo = draft(round_id, "rationale", key=f"r:{i}", answer="yes" if i % 2 else "no")
        margins = [float(m) for m in quality[i] + rng.normal(0, 0.5, len(probes))]
        means.append(float(np.mean(margins)))
        blank = {"predicted": [""] * len(probes), "gold_logprobs": [None] * len(probes)}
        probe_results(
            round_id, "F" * len(probes), draft=demo, indices=probes, margins=margins, **blank
        )
    return means


@pytest.mark.parametrize(("pair_metric", "level"), [("margin", "ok"), ("accuracy", "stop")])
def test_stage_verdict_is_on_the_studys_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pair_metric: str, level: str
) -> None:
    monkeypatch.setattr(
        models, "load", lambda ref, adapter=None: SimpleNamespace(model=None, tokenizer=None)
    )
    monkeypatch.setattr(score, "Scorer", FakeScorer)
    study_id, round_id = _study(tmp_path, pair_metric)
    means = _seed_scored_drafts(round_id, _probes(study_id))
    run = runs.create_run(study_id, "check", round_id=round_id)

    out = check.stage_check(LocalContext(), run)  # type: ignore[arg-type]

    assert out["metric"] == pair_metric and out["source"] == "scored drafts"
    assert out["level"] == level
    with read_session() as s:
        row = s.exec(select(SignalCheck)).one()
    assert row.level == level and row.reasons == out["reasons"]
    result = row.result
    # Backward compatible: the primary result at the top level, the margin one where it was.
    assert result["metric"] == pair_metric and result["source"] == "scored drafts"
    assert set(result["by_metric"]) == {"accuracy", "margin"}
    assert result["by_metric"][pair_metric]["verdict"] == result["verdict"]
    assert result["margin_metric"] == result["by_metric"]["margin"]
    margin = result["by_metric"]["margin"]
    assert margin["mean_score"] == pytest.approx(float(np.mean(means)))
    assert margin["reliability"]["reliability"] > 0.8
    assert result["by_metric"]["accuracy"]["mean_score"] == 0.0
    assert result["by_metric"]["accuracy"]["verdict"]["level"] == "stop"
    assert row.level == result["by_metric"][pair_metric]["verdict"]["level"]


def _probes(study_id: int) -> list[int]:
    from teachlab.studies import get_study

    return list(get_study(study_id).splits["probe"])


@pytest.mark.slow
@pytest.mark.skipif(not bigbench_available("sports_understanding"), reason="BIG-bench not fetched")
def test_stage_on_the_bundled_student_before_drafts() -> None:
    study = create_study(
        "sports",
        "bigbench:sports_understanding",
        config={"n_probe": 12, "n_test": 12, "pair_metric": "margin"},
    )
    with read_session() as s:
        rnd = s.exec(select(Round).where(Round.study_id == study.id)).one()
    run = runs.create_run(study.id, "check", round_id=rnd.id)  # type: ignore[arg-type]
    ctx = LocalContext()
    out = check.stage_check(ctx, run)  # type: ignore[arg-type]
    assert out["source"] == "task examples" and out["metric"] == "margin"
    with read_session() as s:
        row = s.exec(select(SignalCheck)).one()
    result = row.result
    assert result["metric"] == "margin" and result["n_drafts"] == check.SAMPLE_DEMOS
    assert result["n_probes"] == 12 and result["chance"]["uniform_rate"] == 0.5
    # Chance is the better of guessing and always giving the probe set's commonest answer.
    from collections import Counter

    from teachlab.tasks import resolve_task

    task = resolve_task(study.task_ref)
    with read_session() as s:
        probe = s.get(Study, study.id).splits["probe"]  # type: ignore[union-attr]
    common = Counter(task.examples[i].target for i in probe).most_common(1)[0][1] / len(probe)
    assert result["chance"]["chance_rate"] == max(0.5, common)
    for metric in ("accuracy", "margin"):
        rel = result["by_metric"][metric]["reliability"]
        assert rel["n_drafts"] == check.SAMPLE_DEMOS or rel["spearman"] is None
    # Real margins are log-prob differences, not 0/1: the two metrics really differ.
    assert result["by_metric"]["margin"]["mean_score"] not in (0.0, 1.0)
    assert ctx.lines[0].startswith("signal check on the margin score (task examples)")
