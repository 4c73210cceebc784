"""The signal check stage: is there a signal worth spending compute on, before spending it?

It scores the student zero- and few-shot on the probe set against chance, then scores a
sample of demonstrations (the round's scored drafts, or before any drafts exist, task
examples outside the probe and test splits) on two disjoint probe halves to measure how
reliably a demonstration's effect can be read, and how much the answer label explains.
The verdict is on the study's score metric (``pair_metric``); both metrics are stored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from teachlab.db import ProbeResult, Run, SignalCheck, queries, read_session
from teachlab.jobs.context import StageContext
from teachlab.rounds import load_round
from teachlab.stages.probes import ensure_probes

if TYPE_CHECKING:
    from teachlab.score import Scorer
    from teachlab.signalcheck import Metric, SignalCheckResult
    from teachlab.tasks import Task

SAMPLE_DEMOS = 24
MIN_DRAFTS = 8  # fewer scored drafts than this: task examples stand in as demonstrations
METRICS: tuple[Metric, ...] = ("accuracy", "margin")


class Outcome(Protocol):
    """One demonstration × probe result: a ``ProbeOutcome``, or a stored ``ProbeResult``."""

    @property
    def probe_index(self) -> int: ...
    @property
    def correct(self) -> bool: ...
    @property
    def margin(self) -> float | None: ...


@dataclass(frozen=True)
class Measurement:
    """What the student did on the probe set: the raw material of a signal check."""

    zero_shot: Sequence[Outcome]
    few_shot: Sequence[Outcome]
    demos: Mapping[Hashable, Sequence[Outcome]]  # per demonstration (draft id or example index)
    labels: Mapping[Hashable, str | None]  # each demonstration's answer label
    source: str  # "scored drafts" | "task examples"
    probe_labels: Mapping[Hashable, Hashable] = field(
        default_factory=dict
    )  # gold answer per probe item


def per_probe(
    demos: Mapping[Hashable, Sequence[Outcome]], metric: Metric
) -> dict[Hashable, dict[int, float]]:
    """Each demonstration's score on each probe item: right/wrong, or the log-prob margin.

    A missing margin (free-form items, generate mode) is NaN, so the probe set keeps its shape
    and the check reports that nothing could be measured instead of failing.
    """
    if metric == "accuracy":
        return {d: {o.probe_index: float(o.correct) for o in rows} for d, rows in demos.items()}
    return {
        d: {o.probe_index: math.nan if o.margin is None else float(o.margin) for o in rows}
        for d, rows in demos.items()
    }


def example_demos(
    task: Task, splits: Mapping[str, Sequence[int]], seed: int, n: int = SAMPLE_DEMOS
) -> list[int]:
    """Task examples that may stand in for drafts: never a probe or test item (seeded sample)."""
    used = set(splits["probe"]) | set(splits["test"])
    pool = [i for i in range(len(task.examples)) if i not in used]
    return random.Random(seed).sample(pool, min(n, len(pool)))


def measure(
    scorer: Scorer,
    task: Task,
    splits: Mapping[str, Sequence[int]],
    seed: int,
    *,
    shots: int,
    n_demos: int = SAMPLE_DEMOS,
    drafts: tuple[Mapping[Hashable, Sequence[Outcome]], Mapping[Hashable, str | None]]
    | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> Measurement:
    """Score the student zero-shot, ``shots``-shot (seed examples) and per demonstration.

    ``drafts`` are already scored drafts (outcomes per draft, answer labels); with fewer than
    ``MIN_DRAFTS`` of them, ``n_demos`` task examples outside the probe and test splits are
    scored as one-shot demonstrations instead.
    """
    from teachlab.score import Demo

    def report(done: int, total: int, message: str) -> None:
        if progress is not None:
            progress(done, total, message)

    use_drafts = drafts is not None and len(drafts[0]) >= MIN_DRAFTS
    sample = [] if use_drafts else example_demos(task, splits, seed, n_demos)
    total = len(sample) + 2
    seed_demos = [
        Demo(question=task.examples[i].input, answer=task.examples[i].target)
        for i in list(splits["seed"])[: max(shots, 1)]
    ]
    report(0, total, "student zero-shot on the probe set")
    zero = scorer.score([])
    report(1, total, "student few-shot on the probe set")
    few = scorer.score(seed_demos)
    gold: dict[Hashable, Hashable] = {p.index: p.target for p in scorer.probes}
    if use_drafts and drafts is not None:
        report(total, total, "scored drafts as demonstrations")
        return Measurement(zero, few, drafts[0], drafts[1], "scored drafts", gold)
    demos: dict[Hashable, Sequence[Outcome]] = {}
    labels: dict[Hashable, str | None] = {}
    for n, i in enumerate(sample, 2):
        if check_cancelled is not None:
            check_cancelled()
        ex = task.examples[i]
        demos[i] = scorer.score([Demo(question=ex.input, answer=ex.target)])
        labels[i] = ex.target
        report(n + 1, total, f"demonstration {n - 1}/{len(sample)}")  # done: 2 + n - 1
    return Measurement(zero, few, demos, labels, "task examples", gold)


def assess(
    measurement: Measurement,
    chance_rate: float | None,
    *,
    metric: Metric,
    seed: int,
    label_balanced: bool = False,
) -> SignalCheckResult:
    """The signal check (statistics and verdict) of one measurement on one score metric;
    the probe halves are stratified by gold answer."""
    from teachlab.signalcheck import signal_check

    return signal_check(
        per_probe(measurement.demos, metric),
        dict(measurement.labels),
        [o.correct for o in measurement.zero_shot],
        [o.correct for o in measurement.few_shot],
        chance_rate,
        seed=seed,
        metric=metric,
        label_balanced=label_balanced,
        probe_labels=dict(measurement.probe_labels) or None,
    )


def stored_result(
    results: Mapping[Metric, SignalCheckResult], primary: Metric, source: str
) -> dict[str, Any]:
    """The JSON kept on a ``SignalCheck`` row: the primary metric's result at the top level
    (as before), every metric under ``by_metric``, and ``margin_metric`` for older readers."""
    data = results[primary].to_dict()
    data["source"] = source
    data["by_metric"] = {m: r.to_dict() for m, r in results.items()}
    if "margin" in results:
        data["margin_metric"] = data["by_metric"]["margin"]
    return data


def stage_check(ctx: StageContext, run: Run) -> dict[str, Any]:
    from teachlab import models
    from teachlab.score import Scorer

    loaded = ensure_probes(ctx, load_round(run.round_id))
    rnd, cfg, task = loaded.round, loaded.config, loaded.task
    student = models.load(rnd.student, rnd.student_adapter)
    scorer = Scorer(
        student.model, student.tokenizer, task.description, loaded.probes("probe"), mode="loglik"
    )
    measurement = measure(
        scorer,
        task,
        loaded.study.splits,
        loaded.study.seed,
        shots=cfg.eval_shots,
        drafts=_scored_drafts(loaded.id, cfg.scorer),
        progress=ctx.progress,
        check_cancelled=ctx.check_cancelled,
    )
    metric: Metric = "margin" if cfg.pair_metric == "margin" else "accuracy"
    results = {
        m: assess(
            measurement,
            task.chance_rate,
            metric=m,
            seed=loaded.study.seed,
            label_balanced=cfg.label_balanced,
        )
        for m in METRICS
    }
    verdict = results[metric].verdict
    assert verdict is not None  # signal_check always sets it
    with ctx.write() as session:
        session.add(
            SignalCheck(
                round_id=loaded.id,
                run_id=run.id,
                level=verdict.level,
                reasons=list(verdict.reasons),
                result=stored_result(results, metric, measurement.source),
            )
        )
    ctx.log(f"signal check on the {metric} score ({measurement.source}): {verdict.level}")
    for reason in verdict.reasons:
        ctx.log(reason)
    for other, result in results.items():
        if other != metric and result.verdict is not None:
            ctx.log(f"for comparison, on the {other} score: {result.verdict.level}")
    return {
        "level": verdict.level,
        "reasons": list(verdict.reasons),
        "source": measurement.source,
        "metric": metric,
    }


def _scored_drafts(
    round_id: int, mode: str
) -> tuple[dict[Hashable, list[ProbeResult]], dict[Hashable, str | None]]:
    """The round's scored rationale drafts: their probe results and their answer labels."""
    with read_session() as session:
        rows = session.exec(
            queries.probe_results(round_id=round_id, mode=mode, baseline=False)
        ).all()
        drafts = {d.id: d for d in session.exec(queries.drafts(round_id, kind="rationale"))}
    per_draft: dict[Hashable, list[ProbeResult]] = {}
    for r in rows:
        per_draft.setdefault(r.draft_id, []).append(r)
    labels = {k: (drafts[k].answer if k in drafts else None) for k in per_draft}
    return per_draft, labels
