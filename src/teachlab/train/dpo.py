"""Align the teacher to the student's preferences with trl's DPOTrainer (SPEC step 6).

Pairs are trl's standard text form: ``prompt`` is the exact chat-templated generation prompt
(prefill included) and ``chosen``/``rejected`` are completions. We tokenise them ourselves:
the prompt with generation's own function (``common.encode_prompt``), each completion alone
plus EOS. trl 1.16 would encode prompt and prompt+completion with ``add_special_tokens=True``
and cut the prompt where tokens merge across the boundary (a prompt ending in a space loses
its last token), so its prompt would differ from the one generated from. The reference is:
LoRA on the base: the base with the adapter disabled; LoRA continuing ``adapter_in``: a frozen
copy of ``adapter_in`` as loaded (trl's "ref" adapter), i.e. the previous round's teacher; full
fine-tuning: a second copy of the base (with ``adapter_in`` merged). Never a resumed checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from teachlab.config import StudyConfig
from teachlab.jobs.context import StageContext
from teachlab.train.common import (
    CompleteMarker,
    DbMetricsCallback,
    TrainResult,
    check_lengths,
    completion_ids,
    context_limit,
    encode_prompt,
    fingerprint,
    finished_result,
    lora_config,
    prepare_checkpoints,
    require_fields,
    run_training,
    training_arguments,
    training_plan,
)

WARMUP = 0.1  # paper: 10% warm-up, cosine decay
SCHEDULER = "cosine"


def tokenize_pairs(tokenizer: Any, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of prompt/chosen/rejected ids (completions end with EOS), texts kept beside them."""
    require_fields(pairs, ("prompt", "chosen", "rejected"), "pairs")
    return [
        {
            "prompt": p["prompt"],
            "chosen": p["chosen"],
            "rejected": p["rejected"],
            "prompt_ids": encode_prompt(tokenizer, p["prompt"]),
            "chosen_ids": completion_ids(tokenizer, p["chosen"]),
            "rejected_ids": completion_ids(tokenizer, p["rejected"]),
        }
        for p in pairs
    ]


def _trainer_class() -> type:
    from trl import DPOTrainer

    class ExactDPOTrainer(DPOTrainer):
        """A DPOTrainer that trains on the token ids it is given, unchanged."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            needed = {"prompt_ids", "chosen_ids", "rejected_ids"}
            if not needed <= set(dataset.column_names):
                raise TypeError(f"ExactDPOTrainer needs pre-tokenised {sorted(needed)} columns.")
            return dataset

    return ExactDPOTrainer


def build_dpo_trainer(
    ctx: StageContext,
    *,
    base_ref: str,
    adapter_in: str | None,
    rows: list[dict[str, Any]],
    config: StudyConfig,
    run_dir: Path,
    max_length: int,
    callbacks: list[Any] | None = None,
    ordered: bool = False,
) -> Any:
    """A DPO trainer over pre-tokenised rows (see ``tokenize_pairs``); nothing trained yet."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig

    from teachlab.models import load

    # Seed before the model is built: LoRA's A matrices are initialised randomly.
    set_seed(ctx.seed)
    loaded = load(base_ref, adapter_in, trainable=True)
    model: Any = loaded.model
    tokenizer = loaded.tokenizer
    peft_config = lora_config(config.lora_r) if config.lora and not adapter_in else None
    ref_model: Any = None  # LoRA: trl disables the adapter, or uses its frozen "ref" copy
    if not config.lora:
        ref_model = load(base_ref, adapter_in).model
        if adapter_in:  # full fine-tuning continues from the merged weights
            model, ref_model = model.merge_and_unload(), ref_model.merge_and_unload()
    args = training_arguments(
        DPOConfig,
        run_dir=run_dir,
        seed=ctx.seed,
        learning_rate=config.dpo_lr,
        epochs=config.dpo_epochs,
        batch_size=config.dpo_batch_size,
        max_steps=config.dpo_max_steps,
        save_steps=config.save_steps,
        warmup=WARMUP,
        scheduler=SCHEDULER,
        ordered=ordered,
        beta=config.dpo_beta,
        max_length=max_length,  # every row was checked to fit: the collator never truncates
        precompute_ref_log_probs=False,
    )
    return _trainer_class()(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def train_dpo(
    ctx: StageContext,
    *,
    base_ref: str,
    adapter_in: str | None,
    pairs: list[dict[str, Any]],
    config: StudyConfig,
    run_dir: Path,
    db_path: Path | None,
    run_id: int | None,
    max_length: int | None = None,
    ordered: bool = False,
) -> TrainResult:
    """Align the teacher with DPO; resumes from the newest complete checkpoint in ``run_dir``.

    ``max_length`` defaults to the model's context; any pair longer than it raises ConfigError
    before anything is trained. ``ordered`` keeps the pairs' order (curriculum) instead of
    shuffling. Raises ``Cancelled`` (with a checkpoint kept) when the run is cancelled.
    """
    from transformers import AutoTokenizer

    from teachlab.models import fetch

    run_dir = Path(run_dir)
    folder = fetch(base_ref)
    rows = tokenize_pairs(AutoTokenizer.from_pretrained(folder), pairs)
    limit = max_length or context_limit(folder)
    lengths = [
        len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows
    ]
    check_lengths(lengths, limit, "pairs")
    ids = [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]
    plan = training_plan(
        "dpo",
        base_ref,
        adapter_in,
        seed=ctx.seed,
        lr=config.dpo_lr,
        beta=config.dpo_beta,
        epochs=config.dpo_epochs,
        batch=config.dpo_batch_size,
        max_steps=config.dpo_max_steps,
        lora=config.lora,
        lora_r=config.lora_r,
        max_length=limit,
        ordered=ordered,
    )
    plan_hash = fingerprint(plan, ids)
    done = finished_result(run_dir, plan_hash)
    if done is not None:
        ctx.log(f"DPO already finished in {run_dir}; reusing adapter {done.adapter_sha256[:12]}.")
        return done
    resume = prepare_checkpoints(run_dir, plan_hash)
    ctx.log(
        f"DPO on {len(rows)} pairs (longest {max(lengths)} of {limit} tokens), "
        f"{'LoRA r=' + str(config.lora_r) if config.lora else 'full fine-tuning'}."
    )
    metrics = DbMetricsCallback(ctx, db_path, run_id)
    trainer = build_dpo_trainer(
        ctx,
        base_ref=base_ref,
        adapter_in=adapter_in,
        rows=rows,
        config=config,
        run_dir=run_dir,
        max_length=limit,
        callbacks=[metrics, CompleteMarker(ctx, db_path, run_id)],
        ordered=ordered,
    )
    return run_training(
        trainer,
        ctx,
        run_dir=run_dir,
        plan_hash=plan_hash,
        resume=resume,
        metrics=metrics,
        db_path=db_path,
        run_id=run_id,
        full_model=not config.lora,
    )
