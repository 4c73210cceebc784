"""Experiments for the Compare page: the picker's options, an experiment's spec and run, and its
results (``teachlab experiment compare --json``) as tables, recomputed only when its stored item
results, costs, estimate or finished runs change."""

from __future__ import annotations

import shlex
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
from sqlalchemy import func
from sqlmodel import col, select

from teachlab.db import Run, Study, read_session
from teachlab.db.tables import Cost, Experiment, ItemResult
from teachlab.errors import DataError, NotFoundError
from teachlab.experiments.compare import fmt_accuracy, fmt_num, fmt_p, fmt_signed
from teachlab.experiments.spec import ExperimentSpec
from teachlab.views.common import aware

NO_RESULTS = "no item results stored yet"  # ExperimentResults.reason before any arm is evaluated
POOLED = "all"  # a difference row's task for all tasks pooled (compare.POOLED)
MACRO = "macro (tasks averaged)"
ACCURACY_KEYS = ["mode", "shots", "task"]
DIFFERENCE_COLUMNS = ["arm", "task", "mode", "shots", "diff [CI]", "p", "p_holm", "n", "MDE"]
COST_COLUMNS = ["arm", "stage", "seconds", "tokens", "peak MB"]
GPU_COLUMN = "GPU s"  # shown only when a step ran on a GPU
ESTIMATE_COLUMNS = ["stage", "arm", "quantity", "estimated", "measured", "ratio"]


# ---------------------------------------------------------------- the picker and the spec


def summary(spec: ExperimentSpec) -> str:
    """arms × tasks × seeds, in words (the picker's and the spec's one line)."""

    def count(n: int, what: str) -> str:
        return f"{n} {what}{'' if n == 1 else 's'}"

    return " × ".join(
        (
            count(len(spec.arms), "arm"),
            count(len(spec.tasks), "task"),
            count(len(spec.seeds), "seed"),
        )
    )


def _spec(row: Experiment) -> ExperimentSpec:
    try:
        return ExperimentSpec.from_dict(row.spec)
    except Exception as exc:  # a spec this version cannot read: still listed, by name
        raise DataError(
            f"Experiment {row.name!r} has settings this version cannot read: {exc}"
        ) from exc


def experiment_options() -> list[tuple[str, int]]:
    """(label, id) for every experiment, newest first: "#id name — arms × tasks × seeds"."""
    with read_session() as session:
        rows = session.exec(select(Experiment).order_by(col(Experiment.id).desc())).all()
    out = []
    for row in rows:
        try:
            line = summary(_spec(row))
        except DataError:
            line = "settings unreadable"
        out.append((f"#{row.id} {row.name} — {line}", int(row.id)))  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class ExperimentInfo:
    id: int
    name: str
    spec: ExperimentSpec
    created: datetime | None
    studies: dict[str, str]  # "task @ seed N" -> member study name
    estimated: bool  # a compute estimate was recorded before it ran


def experiment_info(exp_id: int) -> ExperimentInfo:
    with read_session() as session:
        row = session.get(Experiment, exp_id)
        if row is None:
            raise NotFoundError(
                f"Experiment #{exp_id} does not exist (deleted?); pick one from the list."
            )
        members = session.exec(
            select(Study).where(Study.experiment_id == exp_id).order_by(col(Study.id))
        ).all()
    spec = _spec(row)
    studies = {f"{s.task_ref} @ seed {s.seed}": s.name for s in members}
    return ExperimentInfo(
        int(exp_id), row.name, spec, aware(row.created_at), studies, bool(row.estimate)
    )


def experiment_command(name: str) -> str:
    """The command line that runs (or resumes) the experiment in the foreground."""
    return f"teachlab experiment run {shlex.quote(name)}"


def experiment_run(exp_id: int) -> Run | None:
    """The experiment's newest run: the one its Launch records or resumes (kind "experiment",
    on the study of its first seed's first task)."""
    with read_session() as session:
        row = session.get(Experiment, exp_id)
        if row is None:
            return None
        spec = _spec(row)
        anchor = session.exec(
            select(Study.id).where(
                Study.experiment_id == exp_id,
                Study.task_ref == spec.tasks[0],
                Study.seed == spec.seeds[0],
            )
        ).first()
        if anchor is None:
            return None
        return session.exec(
            select(Run)
            .where(Run.kind == "experiment", Run.study_id == anchor)
            .order_by(col(Run.id).desc())
        ).first()


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class ExperimentResults:
    """The comparison (``results(name)``'s JSON), or None with the reason there is none yet."""

    result: dict[str, Any] | None
    reason: str | None
    signature: tuple[Any, ...]


def data_signature(exp_id: int) -> tuple[Any, ...]:
    """What the results depend on, cheaply: the item results and costs stored so far, whether an
    estimate is recorded, and the finished runs of its studies (the provenance)."""
    with read_session() as session:
        items = session.exec(
            select(func.count(), func.max(ItemResult.id)).where(ItemResult.experiment_id == exp_id)
        ).one()
        costs = session.exec(
            select(func.count(), func.max(Cost.id)).where(Cost.experiment_id == exp_id)
        ).one()
        estimate = session.exec(select(Experiment.estimate).where(Experiment.id == exp_id)).first()
        members = select(Study.id).where(Study.experiment_id == exp_id)
        done = session.exec(
            select(func.count(), func.max(Run.id)).where(
                col(Run.study_id).in_(members), Run.status == "succeeded"
            )
        ).one()
    return (exp_id, tuple(items), tuple(costs), bool(estimate), tuple(done))


_CACHE: OrderedDict[tuple[Any, ...], ExperimentResults] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 8


def experiment_results(exp_id: int) -> ExperimentResults:
    """The experiment's results, computed once per state of its stored rows (a page poll or a
    second visitor reuses them; the bootstrap of a large experiment takes seconds)."""
    from teachlab.experiments.results import results

    sig = data_signature(exp_id)
    with _CACHE_LOCK:
        hit = _CACHE.get(sig)
        if hit is not None:
            _CACHE.move_to_end(sig)
            return hit
    if not sig[1][0]:
        found = ExperimentResults(None, NO_RESULTS, sig)
    else:
        try:
            found = ExperimentResults(results(exp_id), None, sig)
        except DataError as exc:  # e.g. only some arms evaluated so far
            found = ExperimentResults(None, str(exc), sig)
    with _CACHE_LOCK:
        _CACHE[sig] = found
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return found


def task_labels(tasks: Sequence[str]) -> dict[str, str]:
    """Short names for task references: "bigbench:navigate" -> "navigate", "file:/x/y.jsonl" ->
    "y.jsonl"; the whole reference wherever two short names would collide."""

    def short(ref: str) -> str:
        kind, _, rest = ref.partition(":")
        if not rest:
            return ref
        return PurePosixPath(rest).name or rest if kind == "file" else rest

    shorts = {t: short(t) for t in tasks}
    taken = list(shorts.values())
    return {t: s if taken.count(s) == 1 else t for t, s in shorts.items()}


def accuracy_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    """Accuracy [95% CI] per task (seeds pooled) and the macro average, one column per arm, for
    each mode × shots."""
    arms, tasks = list(result["arms"]), list(result["tasks"])
    names = task_labels(tasks)
    by_task = {(r["arm"], r["task"], r["mode"], r["shots"]): r for r in result["by_task"]}
    macro = {(r["arm"], r["mode"], r["shots"]): r for r in result["macro"]}
    rows: list[list[Any]] = []
    for ev in result["evals"]:
        mode, shots = ev["mode"], ev["shots"]
        for task in tasks:
            rows.append(
                [
                    mode,
                    shots,
                    names[task],
                    *(fmt_accuracy(by_task.get((a, task, mode, shots))) for a in arms),
                ]
            )
        rows.append(
            [mode, shots, MACRO, *(fmt_accuracy(macro.get((a, mode, shots))) for a in arms)]
        )
    return pd.DataFrame(rows, columns=[*ACCURACY_KEYS, *arms])


def forest_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The differences with short task names, for the forest plot."""
    names = task_labels(list(result["tasks"]))
    return [{**d, "task": names.get(d["task"], d["task"])} for d in result["differences"]]


def differences_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    names = task_labels(list(result["tasks"]))
    return pd.DataFrame(
        [
            [
                d["arm"],
                "all tasks" if d["task"] == POOLED else names.get(d["task"], d["task"]),
                d["mode"],
                d["shots"],
                f"{fmt_signed(d['diff'])} [{fmt_signed(d['ci'][0])}, {fmt_signed(d['ci'][1])}]",
                fmt_p(d["p"]),
                fmt_p(d["p_holm"]),
                d["n"],
                fmt_num(d["mde"], ".3f"),
            ]
            for d in result["differences"]
        ],
        columns=DIFFERENCE_COLUMNS,
    )


def cost_frame(result: Mapping[str, Any]) -> pd.DataFrame:
    """Cost per arm × stage (summed over seeds and tasks; "shared" for the arms' common steps):
    seconds, tokens (generated and read), peak memory, and GPU seconds when any step had one."""
    gpu = any(c.get("gpu_seconds") is not None for c in result["cost"])
    return pd.DataFrame(
        [
            [
                c["arm"],
                c["stage"],
                fmt_num(c["seconds"]),
                _count(c["tokens"]),
                fmt_num(c["peak_rss_mb"], ".0f"),
                *([fmt_num(c["gpu_seconds"])] if gpu else []),
            ]
            for c in result["cost"]
        ],
        columns=[*COST_COLUMNS, *([GPU_COLUMN] if gpu else [])],
    )


def _count(n: float | None) -> str:
    if n is None:
        return "–"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def format_seconds(s: float | None) -> str:
    """A duration for people: "42 s", "3.5 min", "2.1 h", "3 d"."""
    if s is None:
        return "–"
    for limit, div, unit in ((90, 1, "s"), (90 * 60, 60, "min"), (48 * 3600, 3600, "h")):
        if s < limit:
            return f"{s / div:.3g} {unit}"
    return f"{s / 86400:.3g} d"


def estimate_frame(result: Mapping[str, Any]) -> pd.DataFrame | None:
    """The estimate made before the run beside what it measured, or None without an estimate."""
    rows = result.get("estimate_vs_measured")
    if not rows:
        return None
    out = []
    for r in rows:
        fmt = format_seconds if r.get("quantity") == "seconds" else _count
        ratio = r.get("ratio")
        out.append(
            [
                r.get("stage"),
                r.get("arm") or ("" if r.get("stage") == "total" else "shared"),
                str(r.get("quantity", "")).replace("_", " "),
                fmt(r.get("estimated")),
                fmt(r.get("measured")),
                "–" if ratio is None else f"{ratio:.2f}",
            ]
        )
    return pd.DataFrame(out, columns=ESTIMATE_COLUMNS)
