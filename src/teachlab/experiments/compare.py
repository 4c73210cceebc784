"""The comparison an experiment's paper needs: accuracy per cell, macro averages, paired
differences against the reference arm with corrected p-values and power, and costs.

Pure functions on plain records (no database, no models): a script reads ``ItemResult`` and
``Cost`` rows into ``Item`` and ``CostRow``, calls ``compare`` and writes its JSON and ``markdown``.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from teachlab.errors import ConfigError, DataError
from teachlab.stats import (
    clopper_pearson,
    holm,
    items_needed,
    min_detectable_effect,
    paired_permutation_pvalue,
    stratified_bootstrap_ci,
)

MODE_ORDER = ("loglik", "cot")  # spec.EVAL_MODES; other modes follow, sorted
# The pipeline's order, so a cost table reads as the work happened; other stages follow, sorted.
STAGE_ORDER = (
    "check",
    "draft",
    "score",
    "pairs",
    "align",
    "regenerate",
    "distill",
    "evaluate",
    "round",
)
SHARED = "shared"  # the cost rows' arm for steps the arms share
POOLED = "all"  # the differences' task for all tasks pooled
SMALL_CELL = 10
POWER = 0.8
MAX_LISTED = 5  # examples named in a note before "…"


@dataclass(frozen=True)
class Item:
    """One held-out test item as an arm's student answered it (``ItemResult``'s fields)."""

    arm: str
    task: str
    seed: int
    mode: str  # loglik | cot
    shots: int
    item: int  # the example's index in its task
    correct: bool

    @classmethod
    def of(cls, row: Any) -> Item:
        """From any object with these attributes (an ``ItemResult`` row)."""
        return cls(row.arm, row.task, row.seed, row.mode, row.shots, row.item, bool(row.correct))


@dataclass(frozen=True)
class CostRow:
    """What one step spent (``Cost``'s fields); ``arm`` None: a step the arms share."""

    arm: str | None
    stage: str
    seed: int
    task: str | None
    seconds: float
    tokens_generated: int = 0
    tokens_scored: int = 0
    peak_rss_mb: float = 0.0
    gpu_seconds: float | None = None

    @classmethod
    def of(cls, row: Any) -> CostRow:
        """From any object with these attributes (a ``Cost`` row)."""
        return cls(
            row.arm,
            row.stage,
            row.seed,
            row.task,
            row.seconds,
            row.tokens_generated,
            row.tokens_scored,
            row.peak_rss_mb,
            row.gpu_seconds,
        )


Eval = tuple[str, int]  # (mode, shots)
Key = tuple[str, str, int, str, int]  # (arm, task, seed, mode, shots)


def _eval_order(ev: Eval) -> tuple[int, str, int]:
    mode, shots = ev
    rank = MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)
    return rank, mode, shots


def _stage_order(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)), stage


def _seed_for(seed: int, *parts: object) -> list[int]:
    # Each row draws from its own stream, derived from the seed and what the row is, so a row's
    # interval does not change when another arm or task is added to the comparison.
    return [seed, zlib.crc32("|".join(map(str, parts)).encode())]


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _check_settings(
    arms: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    reference: str,
    n_resamples: int,
    permutations: int,
    alpha: float,
) -> None:
    if not arms or len(set(arms)) < len(arms):
        raise ConfigError(
            f"Name each arm once, and at least one (got {', '.join(arms) or 'none'})."
        )
    if reference not in arms:
        raise ConfigError(
            f"The reference arm {reference!r} is not among the arms ({', '.join(arms)}); "
            "add it, or set reference to one of them."
        )
    if not tasks or len(set(tasks)) < len(tasks):
        raise ConfigError("Name each task once, and at least one.")
    if not seeds or len(set(seeds)) < len(seeds):
        raise ConfigError("Give each seed once, and at least one.")
    if n_resamples < 1 or permutations < 1:
        raise ConfigError(
            f"n_resamples and permutations must be at least 1 (got {n_resamples}, "
            f"{permutations}); the defaults are 2000 and 10000."
        )
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie strictly between 0 and 1 (got {alpha}); use 0.05.")


def _collect(
    items: Sequence[Item], arms: Sequence[str], tasks: Sequence[str], seeds: Sequence[int]
) -> tuple[dict[Key, dict[int, bool]], int]:
    """Each cell's outcomes by item, and how many items lie outside the arms, tasks and seeds."""
    wanted_arms, wanted_tasks, wanted_seeds = set(arms), set(tasks), set(seeds)
    results: dict[Key, dict[int, bool]] = defaultdict(dict)
    outside = 0
    for it in items:
        if it.arm not in wanted_arms or it.task not in wanted_tasks or it.seed not in wanted_seeds:
            outside += 1
            continue
        cell = results[(it.arm, it.task, it.seed, it.mode, it.shots)]
        if it.item in cell:
            raise DataError(
                f"Item {it.item} of {it.task} appears twice for arm {it.arm}, seed {it.seed}, "
                f"{it.mode} {it.shots}-shot; pass each item result once."
            )
        cell[it.item] = bool(it.correct)
    return results, outside


def _ci(lo: float, hi: float) -> list[float]:
    return [float(lo), float(hi)]


def compare(
    items: Iterable[Item],
    costs: Iterable[CostRow],
    *,
    arms: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    reference: str,
    n_resamples: int = 2000,
    permutations: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The whole comparison as one JSON-ready dict (see the module docstring and ``markdown``).

    Cells (arm × task × seed × mode × shots) with exact binomial CIs; per-task (seeds averaged)
    and macro (tasks averaged) accuracies with bootstrap CIs stratified by task × seed; paired
    differences from ``reference`` per task and pooled, with bootstrap CIs, sign-flip p-values,
    Holm-adjusted p-values, MDE and items needed; costs per arm × stage. Deterministic for a
    given ``seed``. Raises ConfigError/DataError saying what to fix.
    """
    arms, tasks, seeds = list(arms), list(tasks), [int(s) for s in seeds]
    _check_settings(arms, tasks, seeds, reference, n_resamples, permutations, alpha)
    item_list = list(items)
    if not item_list:
        raise DataError(
            "No item results were given, so there is nothing to compare; evaluate the arms "
            "first (the evaluate stage stores one result per held-out item)."
        )
    results, outside = _collect(item_list, arms, tasks, seeds)
    if not results:
        raise DataError(
            f"None of the {len(item_list)} item results belong to the arms ({', '.join(arms)}), "
            f"tasks and seeds named; check the experiment's arms, tasks and seeds."
        )
    if not any(key[0] == reference for key in results):
        raise DataError(
            f"The reference arm {reference!r} has no item results, so nothing can be compared "
            "with it; evaluate it first, or choose another reference."
        )
    confidence = 1 - alpha
    evals = sorted({(k[3], k[4]) for k in results}, key=_eval_order)
    notes: list[str] = []

    cells = _cells(results, arms, tasks, seeds, evals, confidence)
    by_task, macro = _accuracies(
        results, arms, tasks, seeds, evals, confidence, n_resamples, seed, notes
    )
    differences, unpaired = _differences(
        results,
        arms,
        tasks,
        seeds,
        evals,
        reference,
        confidence=confidence,
        n_resamples=n_resamples,
        permutations=permutations,
        seed=seed,
        alpha=alpha,
    )
    cost = _costs(list(costs), arms, notes)
    _notes(
        notes,
        cells,
        differences,
        unpaired,
        outside=outside,
        arms=arms,
        reference=reference,
        evals=evals,
        n_resamples=n_resamples,
        permutations=permutations,
        alpha=alpha,
    )
    return {
        "arms": arms,
        "tasks": tasks,
        "seeds": seeds,
        "reference": reference,
        "evals": [{"mode": m, "shots": s} for m, s in evals],
        "settings": {
            "confidence": confidence,
            "alpha": alpha,
            "power": POWER,
            "n_resamples": n_resamples,
            "permutations": permutations,
            "seed": seed,
        },
        "cells": cells,
        "by_task": by_task,
        "macro": macro,
        "differences": differences,
        "cost": cost,
        "notes": notes,
    }


def _cells(
    results: Mapping[Key, dict[int, bool]],
    arms: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    evals: Sequence[Eval],
    confidence: float,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for arm in arms:
        for mode, shots in evals:
            for task in tasks:
                for s in seeds:
                    outcomes = results.get((arm, task, s, mode, shots), {})
                    n, k = len(outcomes), sum(outcomes.values())
                    out.append(
                        {
                            "arm": arm,
                            "task": task,
                            "seed": s,
                            "mode": mode,
                            "shots": shots,
                            "n": n,
                            "correct": k,
                            "accuracy": k / n if n else None,
                            "ci": None,
                        }
                    )
    # All intervals in one call: a root search per cell would dominate the whole comparison.
    lows, highs = clopper_pearson([c["correct"] for c in out], [c["n"] for c in out], confidence)
    for c, lo, hi in zip(out, lows, highs, strict=True):
        if c["n"]:
            c["ci"] = _ci(lo, hi)
    return out


def _accuracies(
    results: Mapping[Key, dict[int, bool]],
    arms: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    evals: Sequence[Eval],
    confidence: float,
    n_resamples: int,
    seed: int,
    notes: list[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-task accuracy (seeds averaged) and the macro average over tasks, each with a
    percentile bootstrap resampling items within task × seed."""
    by_task: list[dict[str, Any]] = []
    macro: list[dict[str, Any]] = []
    partial: list[str] = []
    for arm in arms:
        for mode, shots in evals:
            task_strata: dict[str, list[np.ndarray]] = {}
            for task in tasks:
                strata = [
                    np.fromiter(outcomes.values(), dtype=float)
                    for s in seeds
                    if (outcomes := results.get((arm, task, s, mode, shots)))
                ]
                if not strata:
                    continue
                task_strata[task] = strata
                acc, lo, hi = stratified_bootstrap_ci(
                    strata,
                    [1 / len(strata)] * len(strata),
                    n_resamples=n_resamples,
                    confidence=confidence,
                    seed=_seed_for(seed, "task", arm, task, mode, shots),
                )
                by_task.append(
                    {
                        "arm": arm,
                        "task": task,
                        "mode": mode,
                        "shots": shots,
                        "n": int(sum(a.size for a in strata)),
                        "n_seeds": len(strata),
                        "accuracy": acc,
                        "ci": _ci(lo, hi),
                    }
                )
            if not task_strata:
                continue
            if len(task_strata) < len(tasks):
                partial.append(f"{arm} {mode} {shots}-shot ({len(task_strata)}/{len(tasks)})")
            # Each task weighs 1/T, shared equally by its seeds: the mean of per-task means.
            strata, weights = [], []
            for per_seed in task_strata.values():
                strata.extend(per_seed)
                weights.extend([1 / (len(task_strata) * len(per_seed))] * len(per_seed))
            acc, lo, hi = stratified_bootstrap_ci(
                strata,
                weights,
                n_resamples=n_resamples,
                confidence=confidence,
                seed=_seed_for(seed, "macro", arm, mode, shots),
            )
            macro.append(
                {
                    "arm": arm,
                    "mode": mode,
                    "shots": shots,
                    "n": int(sum(a.size for a in strata)),
                    "n_tasks": len(task_strata),
                    "accuracy": acc,
                    "ci": _ci(lo, hi),
                }
            )
    if partial:
        notes.append(
            "Some macro averages cover only the tasks with results, so they are not comparable "
            f"with the others: {_listed(partial)}."
        )
    return by_task, macro


def _differences(
    results: Mapping[Key, dict[int, bool]],
    arms: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    evals: Sequence[Eval],
    reference: str,
    *,
    confidence: float,
    n_resamples: int,
    permutations: int,
    seed: int,
    alpha: float,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Paired differences arm − reference per task and pooled, Holm-adjusted over all rows;
    and the items dropped per arm for want of a partner."""
    rows: list[dict[str, Any]] = []
    unpaired: dict[str, int] = defaultdict(int)
    for arm in arms:
        if arm == reference:
            continue
        for mode, shots in evals:
            per_task: dict[str, list[np.ndarray]] = {}
            for task in tasks:
                strata = []
                for s in seeds:
                    mine = results.get((arm, task, s, mode, shots), {})
                    ref = results.get((reference, task, s, mode, shots), {})
                    both = sorted(mine.keys() & ref.keys())
                    unpaired[arm] += len(mine.keys() ^ ref.keys())
                    if both:
                        strata.append(np.array([int(mine[i]) - int(ref[i]) for i in both], float))
                if strata:
                    per_task[task] = strata
            if not per_task:
                continue
            pooled = [a for per_seed in per_task.values() for a in per_seed]
            for task, strata in [*per_task.items(), (POOLED, pooled)]:
                rows.append(
                    _difference(
                        (arm, reference, task, mode, shots),
                        strata,
                        confidence=confidence,
                        n_resamples=n_resamples,
                        permutations=permutations,
                        seed=seed,
                        alpha=alpha,
                    )
                )
    for row, p in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = p
    return rows, dict(unpaired)


def _difference(
    what: tuple[str, str, str, str, int],
    strata: Sequence[np.ndarray],
    *,
    confidence: float,
    n_resamples: int,
    permutations: int,
    seed: int,
    alpha: float,
) -> dict[str, Any]:
    arm, reference, task, mode, shots = what
    diffs = np.concatenate(strata)
    n = int(diffs.size)
    # The pooled mean: each stratum weighs by its paired items.
    diff, lo, hi = stratified_bootstrap_ci(
        strata,
        [a.size / n for a in strata],
        n_resamples=n_resamples,
        confidence=confidence,
        seed=_seed_for(seed, "diff", arm, task, mode, shots),
    )
    p = paired_permutation_pvalue(
        diffs, n=permutations, seed=_seed_for(seed, "perm", arm, task, mode, shots)
    )
    sd = float(diffs.std(ddof=1)) if n > 1 else None
    return {
        "arm": arm,
        "vs": reference,
        "task": task,
        "mode": mode,
        "shots": shots,
        "n": n,
        "diff": diff,
        "ci": _ci(lo, hi),
        "p": p,
        "p_holm": None,  # set once the whole family is known
        "sd": sd,
        # Arms that agree on every item leave sd 0, from which no detectable effect follows.
        "mde": min_detectable_effect(sd, n, alpha, POWER) if sd else None,
        "n_needed": items_needed(diff, sd, alpha, POWER) if sd else None,
    }


def _costs(costs: Sequence[CostRow], arms: Sequence[str], notes: list[str]) -> list[dict[str, Any]]:
    """Costs per arm × stage, summed over seeds and tasks; shared steps under arm "shared"."""
    groups: dict[tuple[str, str], list[CostRow]] = defaultdict(list)
    outside = 0
    for c in costs:
        if c.arm is not None and c.arm not in arms:
            outside += 1
            continue
        groups[(c.arm or SHARED, c.stage)].append(c)
    if outside:
        notes.append(
            f"{outside} cost row(s) of arms not in this comparison were left out of the cost table."
        )
    order = [SHARED, *arms]
    out: list[dict[str, Any]] = []
    for (arm, stage), rows in sorted(
        groups.items(), key=lambda kv: (order.index(kv[0][0]), _stage_order(kv[0][1]))
    ):
        generated = sum(int(r.tokens_generated) for r in rows)
        scored = sum(int(r.tokens_scored) for r in rows)
        gpu = [float(r.gpu_seconds) for r in rows if r.gpu_seconds is not None]
        out.append(
            {
                "arm": arm,
                "stage": stage,
                "steps": len(rows),
                "seconds": float(sum(r.seconds for r in rows)),
                "tokens": generated + scored,
                "tokens_generated": generated,
                "tokens_scored": scored,
                "peak_rss_mb": float(max(r.peak_rss_mb for r in rows)),
                # Steps that ran on the CPU record none; null only when none of them had a GPU.
                "gpu_seconds": sum(gpu) if gpu else None,
            }
        )
    return out


def _notes(
    notes: list[str],
    cells: Sequence[dict[str, Any]],
    differences: Sequence[dict[str, Any]],
    unpaired: Mapping[str, int],
    *,
    outside: int,
    arms: Sequence[str],
    reference: str,
    evals: Sequence[Eval],
    n_resamples: int,
    permutations: int,
    alpha: float,
) -> None:
    level = f"{100 * (1 - alpha):g}%"
    m = len(differences)
    others = [a for a in arms if a != reference]
    if m:
        notes.append(
            f"{m} differences were tested ({len(others)} arm(s) against {reference}, "
            f"{len(evals)} mode/shots setting(s), each task and all tasks pooled); p_holm is "
            f"Holm–Bonferroni-adjusted over all {m}, so rejecting where p_holm ≤ {alpha:g} "
            f"controls the family-wise error rate at {alpha:g}. The CIs are not adjusted."
        )
    else:
        notes.append(f"No differences: no arm other than {reference} shares items with it.")
    notes.append(
        f"CIs are {level}. Cells: exact binomial (Clopper–Pearson). Per-task accuracy (seeds "
        f"averaged) and macro averages (tasks averaged): percentile bootstrap, {n_resamples} "
        "resamples of items within each task × seed. Differences: paired percentile bootstrap "
        "over items, resampled within seeds (per task) or within task × seed (all)."
    )
    notes.append(
        "p is a two-sided paired sign-flip test; with right/wrong items (every difference −1, 0 "
        "or +1) it is exact (the exact sign test on the items the arms disagree on, McNemar's "
        f"exact test), otherwise {permutations} random flips, p = (1 + as extreme) / "
        f"({permutations} + 1). The "
        f"pooled difference ('{POOLED}') is the mean over all paired items, so larger tasks weigh "
        "more; the macro accuracies weigh tasks equally."
    )
    notes.append(
        f"mde is the difference detectable at α = {alpha:g} with {POWER:.0%} power from the "
        "observed sd and n, (z_{1−α/2} + z_0.8)·sd/√n; n_needed is the paired items needed to "
        "detect the observed diff (normal approximation). Both are blank (–) where the arms "
        "agree on every item: sd is 0 and the data say nothing about power; plan with "
        "`teachlab.stats.mcnemar_items_needed` and an assumed share of disagreeing items."
    )
    dropped = {a: k for a, k in unpaired.items() if k}
    if dropped:
        notes.append(
            f"{sum(dropped.values())} item result(s) without a partner on the other side were "
            "dropped from the differences: "
            + ", ".join(f"{k} for {a} vs {reference}" for a, k in dropped.items())
            + "."
        )
    if outside:
        notes.append(
            f"{outside} item result(s) of arms, tasks or seeds not in this comparison were left "
            "out."
        )
    empty = [_cell_name(c) for c in cells if c["n"] == 0]
    if empty:
        notes.append(f"{len(empty)} cell(s) have no items: {_listed(empty)}.")
    small = [f"{_cell_name(c)} (n={c['n']})" for c in cells if 0 < c["n"] < SMALL_CELL]
    if small:
        notes.append(
            f"{len(small)} cell(s) have fewer than {SMALL_CELL} items, so their accuracies are "
            f"very uncertain: {_listed(small)}."
        )


def _cell_name(c: Mapping[str, Any]) -> str:
    return f"{c['arm']} · {c['task']} · seed {c['seed']} · {c['mode']} {c['shots']}-shot"


# Markdown ----------------------------------------------------------------------------------


def _md(text: object) -> str:
    return str(text).replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def fmt_accuracy(row: Mapping[str, Any] | None) -> str:
    """An accuracy with its CI, "0.600 [0.400, 0.800]" ("–" without one): tables and pages."""
    if row is None or row.get("accuracy") is None:
        return "–"
    lo, hi = row["ci"]
    return f"{row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_signed(x: float | None) -> str:
    if x is None:
        return "–"
    # "−0.000" reads as an effect; show a plain zero.
    return "0.000" if round(x, 3) == 0 else f"{x:+.3f}".replace("-", "−")


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_num(x: float | None, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(result: Mapping[str, Any]) -> str:
    """The tables docs/experiments.md shows: accuracy per task and arm (seeds averaged) for each
    mode and shots, the differences from the reference, and the costs; then the notes."""
    arms, tasks, reference = result["arms"], result["tasks"], result["reference"]
    level = f"{100 * result['settings']['confidence']:g}%"
    lines: list[str] = []
    by_task = {(r["arm"], r["task"], r["mode"], r["shots"]): r for r in result["by_task"]}
    macro = {(r["arm"], r["mode"], r["shots"]): r for r in result["macro"]}
    for ev in result["evals"]:
        mode, shots = ev["mode"], ev["shots"]
        lines += [f"### Accuracy: {mode}, {shots}-shot (seeds averaged, {level} CI)", ""]
        rows: list[list[object]] = [
            [task, *(fmt_accuracy(by_task.get((arm, task, mode, shots))) for arm in arms)]
            for task in tasks
        ]
        rows.append(["**macro**", *(fmt_accuracy(macro.get((arm, mode, shots))) for arm in arms)])
        lines += [*_table(["task", *arms], rows), ""]
    lines += [f"### Differences from {reference} (arm − {reference}, paired items)", ""]
    if result["differences"]:
        lines += _table(
            ["arm", "task", "mode", "shots", "diff [CI]", "p", "p_holm", "n", "MDE"],
            (
                [
                    d["arm"],
                    f"**{d['task']}**" if d["task"] == POOLED else d["task"],
                    d["mode"],
                    d["shots"],
                    f"{fmt_signed(d['diff'])} [{fmt_signed(d['ci'][0])}, {fmt_signed(d['ci'][1])}]",
                    fmt_p(d["p"]),
                    fmt_p(d["p_holm"]),
                    d["n"],
                    fmt_num(d["mde"], ".3f"),
                ]
                for d in result["differences"]
            ),
        )
    else:
        lines.append(f"No arm shares items with {reference}.")
    lines += ["", "### Cost (summed over seeds and tasks)", ""]
    if result["cost"]:
        lines += _table(
            ["arm", "stage", "seconds", "tokens", "generated", "scored", "peak RSS MB", "GPU s"],
            (
                [
                    c["arm"],
                    c["stage"],
                    fmt_num(c["seconds"]),
                    c["tokens"],
                    c["tokens_generated"],
                    c["tokens_scored"],
                    fmt_num(c["peak_rss_mb"], ".0f"),
                    fmt_num(c["gpu_seconds"]),
                ]
                for c in result["cost"]
            ),
        )
    else:
        lines.append("No costs recorded.")
    lines += ["", *(f"- {note}" for note in result["notes"]), ""]
    return "\n".join(lines)
