"""The align stage (ARTE step 6): DPO on the round's training pairs aligns the teacher.

The pairs are the approved ones (and, where the study allows it, the unreviewed automatic
ones); human decisions always win. The adapter's hash is recorded with the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teachlab.db import Run
from teachlab.errors import JobError
from teachlab.rounds import load_round

if TYPE_CHECKING:
    from teachlab.jobs.executor import RunContext
    from teachlab.train import TrainResult


def trained(ctx: RunContext, result: TrainResult, rows: int, what: str) -> dict[str, Any]:
    """A training stage's run result, with the output's hash kept in the run's provenance."""
    ctx.provenance({"adapter_sha256": result.adapter_sha256})
    return {
        "adapter": str(result.output_dir),
        "adapter_sha256": result.adapter_sha256,
        # Full fine-tuning saves the whole model in the "adapter" folder; later stages load it
        # in place of the base (teachlab.models.trained_kind).
        "full_model": result.full_model,
        what: rows,
        "steps": result.global_step,
        "resumed_from": result.resumed_from,
        "metrics": result.metrics,
        "tokens": {"trained": result.tokens},
    }


def stage_align(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab import review
    from teachlab.train import train_dpo

    loaded = load_round(run.round_id)
    rnd, cfg = loaded.round, loaded.config
    chosen = review.training_pairs(loaded.id, use_unreviewed=cfg.use_unreviewed)
    if not chosen:
        raise JobError(
            "No pairs to train on: build pairs first (stage pairs), and approve some on the Review "
            "page or allow unreviewed pairs in the study settings."
        )
    data = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in chosen]
    result = train_dpo(
        ctx,
        base_ref=rnd.teacher,
        adapter_in=rnd.teacher_adapter,
        pairs=data,
        config=cfg,
        run_dir=ctx.run_dir,
        run_id=run.id,
        ordered=cfg.pair_rule == "ranked",  # Curry-DPO: easy pairs first
    )
    return trained(ctx, result, len(data), "pairs")
