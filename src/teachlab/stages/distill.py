"""The distill stage (ARTE step 8): SFT of the student on the round's tailored data.

The student learns to continue the very prompt it is scored and evaluated with: the task
description, then the tailored question, then the teacher's greedy rationale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teachlab.db import Run, queries, read_session
from teachlab.errors import JobError
from teachlab.rounds import load_round
from teachlab.stages.align import trained

if TYPE_CHECKING:
    from teachlab.jobs.executor import RunContext


def tailored_examples(round_id: int, description: str) -> list[dict[str, str]]:
    """Prompt-completion examples from the round's tailored rationales (oldest first)."""
    from teachlab.score.prompt import description_segment, probe_segment

    with read_session() as session:
        tailored = session.exec(
            queries.drafts(round_id, kind="rationale", phase="tailored", status="ok")
        ).all()
        parents = queries.questions(session, round_id, phase="tailored")
    examples = []
    for d in tailored:
        q = parents.get(d.parent_id)
        if q is None or not q.input or not d.rationale:
            continue
        prompt = description_segment(description) + probe_segment(q.input, "generate")
        examples.append({"prompt": prompt, "completion": " " + d.rationale.strip()})
    return examples


def _nothing_to_distil(round_id: int) -> str:
    """Why a round has no tailored example, and what to do about it."""
    with read_session() as session:
        tailored = session.exec(queries.drafts(round_id, kind="question", phase="tailored")).all()
    if not tailored:
        return "No tailored examples to distil on: run the regenerate stage first."
    reasons = sorted({d.reason.split(":")[-1].strip() for d in tailored if d.reason})[:2]
    return (
        f"No tailored examples to distil on: the aligned teacher wrote {len(tailored)} tailored "
        f"questions and none was usable ({'; '.join(reasons) or 'no usable rationale'}). Draft "
        "field by field (scaffold = true), give the teacher more tokens (max_new_tokens), or align "
        "it more gently (fewer DPO steps, a lower learning rate), then run regenerate again."
    )


def stage_distill(ctx: RunContext, run: Run) -> dict[str, Any]:
    from teachlab.train import train_sft

    loaded = load_round(run.round_id)
    rnd = loaded.round
    examples = tailored_examples(loaded.id, loaded.task.description)
    if not examples:
        raise JobError(_nothing_to_distil(loaded.id))
    result = train_sft(
        ctx,
        base_ref=rnd.student,
        adapter_in=rnd.student_adapter,
        examples=examples,
        config=loaded.config,
        run_dir=ctx.run_dir,
        run_id=run.id,
    )
    return trained(ctx, result, len(examples), "examples")
