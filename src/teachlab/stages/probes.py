"""Probe-set selection by IRT (ARTE step 3): keep the most discriminative items.

Candidate items (outside the seed and test splits) are answered by the available models (the
study's student and teacher) at 0..k shots; a 2PL model fitted to those answers ranks items by
discrimination. The choice is stored in the study's splits once, so every later stage, run and
export sees the same probe set.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np

from teachlab.db import Study
from teachlab.errors import DataError
from teachlab.rounds import LoadedRound, probes_for

if TYPE_CHECKING:
    from teachlab.jobs.context import StageContext
    from teachlab.tasks import Task

POOL_FACTOR = 3
MAX_SHOTS = 3


def candidate_pool(task: Task, splits: dict[str, Any], n_probe: int, seed: int) -> list[int]:
    """Items that may become probes: never a seed example or a test item."""
    used = set(splits["seed"]) | set(splits["test"])
    pool = [i for i in range(len(task.examples)) if i not in used]
    if len(pool) < n_probe:
        raise DataError(
            f"Only {len(pool)} items are left outside the seed and test splits, fewer than the "
            f"{n_probe} probe items asked for; lower n_probe or n_test."
        )
    size = min(len(pool), n_probe * POOL_FACTOR)
    return sorted(random.Random(seed).sample(pool, size))


def response_rows(
    scorer_for: Any, task: Task, seed_idx: list[int], refs: list[str], shots: range
) -> np.ndarray:
    """One 0/1 row per (model, shot count) over the pool: the subjects of the IRT fit."""
    from teachlab.score import Demo

    rows = []
    for ref in refs:
        scorer = scorer_for(ref)
        for k in shots:
            demos = [
                Demo(question=task.examples[i].input, answer=task.examples[i].target)
                for i in seed_idx[:k]
            ]
            rows.append([float(o.correct) for o in scorer.score(demos)])
    return np.array(rows)


def select_probes_irt(ctx: StageContext, study: Study, task: Task, n_probe: int) -> list[int]:
    """Fit 2PL to the available models' 0..3-shot answers; store and return the probe set."""
    from teachlab import models
    from teachlab.irt import fit_2pl, select_items
    from teachlab.score import Scorer

    pool = candidate_pool(task, study.splits, n_probe, study.seed)
    probes = probes_for(task, pool)
    refs = list(dict.fromkeys([study.student, study.teacher]))
    shots = range(min(MAX_SHOTS, len(study.splits["seed"])) + 1)
    ctx.log(f"IRT probe selection: {len(pool)} candidates, {len(refs)} models x {len(shots)} shots")

    def scorer_for(ref: str) -> Any:
        loaded = models.load(ref)
        return Scorer(loaded.model, loaded.tokenizer, task.description, probes, mode="loglik")

    matrix = response_rows(scorer_for, task, list(study.splits["seed"]), refs, shots)
    fit = fit_2pl(matrix, seed=study.seed)
    chosen = sorted(pool[j] for j in select_items(fit, n_probe))
    save_probes(
        ctx,
        study.id,  # type: ignore[arg-type]
        chosen,
        {
            "method": "irt",
            "pool": pool,
            "subjects": [f"{r}@{k}-shot" for r in refs for k in shots],
            "a": [round(float(x), 4) for x in fit.a],
            "b": [round(float(x), 4) for x in fit.b],
        },
    )
    return chosen


def save_probes(ctx: StageContext, study_id: int, probe: list[int], info: dict[str, Any]) -> None:
    with ctx.write() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise DataError(f"Study #{study_id} vanished while its probes were chosen.")
        splits = dict(study.splits)
        splits["random_probe"] = splits.get("random_probe", splits["probe"])
        splits["probe"] = probe
        splits["probe_selection"] = info
        study.splits = splits
        session.add(study)


def ensure_probes(ctx: StageContext, loaded: LoadedRound) -> LoadedRound:
    """Choose the probe set by IRT once, if the study asks for it; returns the round with its
    study as it is now (its probe split may have just changed)."""
    cfg, study = loaded.config, loaded.study
    if (
        cfg.probe_selection != "irt"
        or study.splits.get("probe_selection", {}).get("method") == "irt"
    ):
        return loaded
    select_probes_irt(ctx, study, loaded.task, cfg.n_probe)
    return loaded.reload_study()
