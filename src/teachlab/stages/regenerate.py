"""The regenerate stage (ARTE step 7): the aligned teacher writes the tailored data.

Questions at the study's question temperature, then one greedy rationale per question from
the plain prompt ("prompt erasure"), stored as the round's ``tailored`` phase.
"""

from __future__ import annotations

from typing import Any

from teachlab.db import Run
from teachlab.jobs.context import StageContext
from teachlab.rounds import load_round, stage_result
from teachlab.stages.draft import draft_questions, draft_rationales


def stage_regenerate(ctx: StageContext, run: Run) -> dict[str, Any]:
    from teachlab.backends import make_backend

    loaded = load_round(run.round_id)
    rnd = loaded.round
    aligned = stage_result(loaded.id, "align")
    adapter = aligned["adapter"] if aligned else rnd.teacher_adapter
    ctx.log(f"regenerating with teacher {rnd.teacher} adapter {adapter or '(base)'}")
    backend = make_backend(loaded.study.backend, rnd.teacher, adapter=adapter)
    try:
        questions = draft_questions(ctx, loaded.id, backend, phase="tailored")
        rationales = draft_rationales(ctx, loaded.id, backend, phase="tailored")
        tokens = dict(getattr(backend, "tokens", {}))
    finally:
        backend.close()
    return {"questions": questions, "rationales": rationales, "adapter": adapter, "tokens": tokens}
