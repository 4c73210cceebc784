"""The round stage: every stage of a round, in the table's order, as child runs; then the next
round opens from the aligned teacher and the distilled student.

A resumed round skips the stages that succeeded and resumes the one that stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from teachlab.db import Run, read_session
from teachlab.errors import JobError
from teachlab.jobs import runs
from teachlab.jobs.executor import execute
from teachlab.rounds import load_round, open_next_round, row_id

if TYPE_CHECKING:
    from teachlab.jobs.executor import RunContext


def stage_round(ctx: RunContext, run: Run) -> dict[str, Any]:
    """Every ``in_round`` stage of the runner's table in order, as child runs."""
    stages = ctx.stages
    kinds = [s.name for s in stages.values() if s.in_round]
    results: dict[str, Any] = {}
    for i, kind in enumerate(kinds):
        ctx.check_cancelled()
        with read_session() as session:
            child = session.exec(
                select(Run)
                .where(Run.parent_id == run.id, Run.kind == kind)
                .order_by(col(Run.id).desc())
            ).first()
        if child is not None and child.status == "succeeded":
            results[kind] = child.result
            continue
        if child is None:
            child = runs.create_run(
                run.study_id, kind, round_id=run.round_id, seed=run.seed, parent_id=run.id
            )
        elif child.status in ("failed", "cancelled", "interrupted"):
            runs.prepare_resume(row_id(child))
        ctx.progress(i, len(kinds), f"stage {kind}")
        final = execute(row_id(child), stages)
        if final.status != "succeeded":
            raise JobError(
                f"Stage {kind} (run #{final.id}) {final.status}: {final.error or ''}".strip()
            )
        results[kind] = final.result
    if run.round_id is None:
        raise JobError(f"Round run #{run.id} names no round.")
    # The next round starts from the aligned teacher and the distilled student.
    rnd = load_round(run.round_id).round
    next_round = open_next_round(
        run.round_id,
        teacher_adapter=(results.get("align") or {}).get("adapter", rnd.teacher_adapter),
        student_adapter=(results.get("distill") or {}).get("adapter", rnd.student_adapter),
    )
    ctx.progress(len(kinds), len(kinds), f"round done; round {next_round} is ready")
    return {"stages": list(results), "next_round": next_round}
