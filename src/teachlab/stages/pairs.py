"""The pairs stage (ARTE step 5): candidates from scored drafts → the study's pair rule →
stored automatic pairs, which the Review page shows and researchers decide on.

Question pairs keep the exact generation prompt (chat template and prefill); rationale pairs
use the plain prompt ("prompt erasure"), as ARTE does.
"""

from __future__ import annotations

from typing import Any

from teachlab.db import Draft, Run, queries, read_session
from teachlab.jobs.context import StageContext
from teachlab.rounds import LoadedRound, load_round, row_id
from teachlab.stages.score import baseline_score


def candidates(loaded: LoadedRound, drafts: list[Draft], metric: str) -> list[Any]:
    """Each ok draft as a pair candidate: its prompt, its text, its score on ``metric``."""
    from teachlab import pairs
    from teachlab.prompts import load_tokenizer, plain_prompt_for, question_completion_for

    questions = {d.id: d for d in drafts if d.kind == "question"}
    tokenizer = load_tokenizer(loaded.round.teacher)

    def score_of(d: Draft) -> float | None:
        return d.margin_score if metric == "margin" else d.score

    out = []
    for d in drafts:
        if d.kind == "question":
            out.append(
                pairs.Candidate(
                    draft_id=row_id(d),
                    prompt=d.prompt,
                    text=question_completion_for(d),
                    score=score_of(d),
                    label=d.target,
                    level="question",
                    group=d.prompt,
                )
            )
            continue
        q = questions.get(d.parent_id)
        if q is None:
            continue
        out.append(
            pairs.Candidate(
                draft_id=row_id(d),
                prompt=plain_prompt_for(loaded.study, loaded.round, q, tokenizer),
                text=d.rationale or d.raw_output,  # cut after its last </ans>
                score=score_of(d),
                label=d.answer,
                level="rationale",
                group=str(d.parent_id),
            )
        )
    return out


def stage_pairs(ctx: StageContext, run: Run) -> dict[str, Any]:
    from teachlab import pairs, review

    loaded = load_round(run.round_id)
    cfg = loaded.config
    with read_session() as session:
        drafts = list(session.exec(queries.drafts(loaded.id, phase="draft", status="ok")).all())
    specs = pairs.build_pairs(
        candidates(loaded, drafts, cfg.pair_metric),
        cfg.pair_rule,
        quantile=cfg.quantile,
        min_margin=cfg.min_margin,
        max_per_prompt=cfg.max_pairs_per_prompt,
        baseline=baseline_score(loaded.id, cfg.scorer, margin=cfg.pair_metric == "margin"),
        label_balanced=cfg.label_balanced,
    )
    stored = review.store_pairs(loaded.id, specs, writer=ctx.write)
    ctx.progress(1, 1, f"{len(specs)} pairs ({stored} new)")
    return {"pairs": len(specs), "new": stored, "label_mix": pairs.label_mix(specs)}
