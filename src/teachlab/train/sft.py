"""Distil the student on the tailored data with trl's SFTTrainer (SPEC step 8).

Examples are prompt-completion text; the loss covers the completion (and its EOS) only. We
tokenise them as DPO does (prompt as generation and scoring encode it, completion alone plus
EOS) and hand trl pre-tokenised ``input_ids``/``labels``, a form SFTTrainer takes as is.
Paper: lr 2e-5, 1 epoch, 3% warm-up, linear decay.
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

WARMUP = 0.03
SCHEDULER = "linear"
IGNORE = -100  # label value the loss skips


def tokenize_examples(tokenizer: Any, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of input_ids and labels, the prompt's labels masked out."""
    require_fields(examples, ("prompt", "completion"), "examples")
    rows = []
    for example in examples:
        prompt = encode_prompt(tokenizer, example["prompt"])
        completion = completion_ids(tokenizer, example["completion"])
        rows.append(
            {"input_ids": prompt + completion, "labels": [IGNORE] * len(prompt) + completion}
        )
    return rows


def build_sft_trainer(
    ctx: StageContext,
    *,
    base_ref: str,
    adapter_in: str | None,
    rows: list[dict[str, Any]],
    config: StudyConfig,
    run_dir: Path,
    max_length: int,
    callbacks: list[Any] | None = None,
) -> Any:
    """An SFT trainer over pre-tokenised rows (see ``tokenize_examples``); nothing trained yet."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from teachlab.models import load

    set_seed(ctx.seed)  # before the model is built: LoRA's A matrices are random
    loaded = load(base_ref, adapter_in, trainable=True)
    model: Any = loaded.model
    if adapter_in and not config.lora:
        model = model.merge_and_unload()
    args = training_arguments(
        SFTConfig,
        run_dir=run_dir,
        seed=ctx.seed,
        learning_rate=config.sft_lr,
        epochs=config.sft_epochs,
        batch_size=config.sft_batch_size,
        max_steps=config.sft_max_steps,
        save_steps=config.save_steps,
        warmup=WARMUP,
        scheduler=SCHEDULER,
        max_length=max_length,  # every row was checked to fit: nothing is truncated
        packing=False,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=loaded.tokenizer,
        peft_config=lora_config(config.lora_r) if config.lora and not adapter_in else None,
        callbacks=callbacks,
    )


def train_sft(
    ctx: StageContext,
    *,
    base_ref: str,
    adapter_in: str | None,
    examples: list[dict[str, Any]],
    config: StudyConfig,
    run_dir: Path,
    db_path: Path | None,
    run_id: int | None,
    max_length: int | None = None,
) -> TrainResult:
    """Distil the student with SFT; resumes from the newest complete checkpoint in ``run_dir``.

    With ``adapter_in`` (the student's adapter from an earlier round) LoRA training continues
    that adapter. Raises ConfigError before training when an example exceeds ``max_length``
    (default: the model's context), ``Cancelled`` (checkpoint kept) when cancelled.
    """
    from transformers import AutoTokenizer

    from teachlab.models import fetch

    run_dir = Path(run_dir)
    folder = fetch(base_ref)
    rows = tokenize_examples(AutoTokenizer.from_pretrained(folder), examples)
    limit = max_length or context_limit(folder)
    lengths = [len(r["input_ids"]) for r in rows]
    check_lengths(lengths, limit, "examples")
    plan = training_plan(
        "sft",
        base_ref,
        adapter_in,
        seed=ctx.seed,
        lr=config.sft_lr,
        epochs=config.sft_epochs,
        batch=config.sft_batch_size,
        max_steps=config.sft_max_steps,
        lora=config.lora,
        lora_r=config.lora_r,
        max_length=limit,
    )
    plan_hash = fingerprint(plan, (r["input_ids"] + r["labels"] for r in rows))
    done = finished_result(run_dir, plan_hash)
    if done is not None:
        ctx.log(f"SFT already finished in {run_dir}; reusing {done.adapter_sha256[:12]}.")
        return done
    resume = prepare_checkpoints(run_dir, plan_hash)
    ctx.log(f"SFT on {len(rows)} examples (longest {max(lengths)} of {limit} tokens).")
    metrics = DbMetricsCallback(ctx, db_path, run_id)
    trainer = build_sft_trainer(
        ctx,
        base_ref=base_ref,
        adapter_in=adapter_in,
        rows=rows,
        config=config,
        run_dir=run_dir,
        max_length=limit,
        callbacks=[metrics, CompleteMarker(ctx, db_path, run_id)],
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
