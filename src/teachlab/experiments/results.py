"""An experiment's results as `teachlab experiment compare --json` prints them: the stored
per-item results and costs through the paired statistics, with the run's provenance and the
estimate made before it set beside what it measured."""

from __future__ import annotations

from typing import Any

from teachlab.experiments import store
from teachlab.experiments.compare import CostRow, Item, compare


def results(ref: int | str, *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    exp = store.load_experiment(ref)
    spec = exp.spec
    items = [
        Item(r.arm, r.task, r.seed, r.mode, r.shots, r.item, r.correct) for r in store.items(exp.id)
    ]
    costs = [
        CostRow(
            c.arm,
            c.stage,
            c.seed,
            c.task,
            c.seconds,
            c.tokens_generated,
            c.tokens_scored,
            c.peak_rss_mb,
            c.gpu_seconds,
        )
        for c in store.costs(exp.id)
    ]
    out = compare(
        items,
        costs,
        arms=list(spec.arms),
        tasks=list(spec.tasks),
        seeds=list(spec.seeds),
        reference=spec.reference if spec.reference in spec.arms else spec.arms[0],
        n_resamples=n_resamples,
        seed=seed,
    )
    out["experiment"] = spec.name
    out["spec"] = spec.to_dict()
    out["provenance"] = provenance(exp)
    if exp.row.estimate:
        from teachlab.experiments.estimate import against

        out["estimate"] = exp.row.estimate
        out["estimate_vs_measured"] = against(exp.row.estimate, out["cost"])
    return out


def provenance(exp: store.Loaded) -> dict[str, Any]:
    """What the results came from: the studies, and each run's packages, revision and hashes."""
    from sqlmodel import col, select

    from teachlab.db import Run, read_session

    ids = [s.id for s in exp.members.values()]
    with read_session() as session:
        found = session.exec(
            select(Run).where(col(Run.study_id).in_(ids), Run.status == "succeeded")
        ).all()
    first = next((r.provenance for r in found if r.provenance.get("packages")), {})
    return {
        "studies": {f"{t}@seed{s}": m.name for (t, s), m in exp.members.items()},
        "packages": first.get("packages", {}),
        "git_revision": first.get("git_revision"),
        "runs": [
            {
                "run": r.id,
                "kind": r.kind,
                "config": r.config,
                "adapter_sha256": r.provenance.get("adapter_sha256"),
                "student_sha256": r.provenance.get("student_sha256"),
            }
            for r in found
            if r.kind.startswith("arm-") or r.kind in ("draft", "score", "pairs")
        ],
    }
