"""Distil the student on the tailored data with trl's SFTTrainer (SPEC step 8).

Examples are prompt-completion text; the loss covers the completion (and its EOS) only. We
tokenise them as DPO does (prompt as generation and scoring encode it, completion alone plus
EOS) and hand trl pre-tokenised ``input_ids``/``labels``, a form SFTTrainer takes as is.
Paper: lr 2e-5, 1 epoch, 3% warm-up, linear decay.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from teachlab.config import StudyConfig
from teachlab.jobs.context import StageContext
from teachlab.train.common import (
    Schedule,
    TrainResult,
    completion_ids,
    encode_prompt,
    merged,
    require_fields,
)
from teachlab.train.routine import Method, train

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


def _classes() -> tuple[type, type]:
    from trl import SFTConfig, SFTTrainer

    return SFTConfig, SFTTrainer


def _merged(
    model: Any, base_ref: str, adapter_in: str | None, *, lora: bool
) -> tuple[Any, dict[str, Any]]:
    """The student to train: full fine-tuning continues from ``adapter_in`` merged in."""
    return (model if lora else merged(model)), {}


def sft_method(config: StudyConfig) -> Method:
    """SFT as the training routine runs it."""
    return Method(
        kind="sft",
        noun="examples",
        tokenize=tokenize_examples,
        length=lambda row: len(row["input_ids"]),
        hashed=lambda row: row["input_ids"] + row["labels"],
        schedule=Schedule(
            lr=config.sft_lr,
            epochs=config.sft_epochs,
            batch=config.sft_batch_size,
            max_steps=config.sft_max_steps,
            warmup=WARMUP,
            scheduler=SCHEDULER,
        ),
        models=partial(_merged, lora=config.lora),
        classes=_classes,
        started="SFT on {rows} examples (longest {longest} of {limit} tokens).",
        reused="SFT already finished in {run_dir}; reusing {sha}.",
        arguments={"packing": False},
    )


def train_sft(
    ctx: StageContext,
    *,
    base_ref: str,
    adapter_in: str | None,
    examples: list[dict[str, Any]],
    config: StudyConfig,
    run_dir: Path,
    run_id: int | None,
    max_length: int | None = None,
) -> TrainResult:
    """Distil the student with SFT; resumes from the newest complete checkpoint in ``run_dir``.

    With ``adapter_in`` (the student's adapter from an earlier round) LoRA training continues
    that adapter. Raises ConfigError before training when an example exceeds ``max_length``
    (default: the model's context), ``Cancelled`` (checkpoint kept) when cancelled.
    """
    return train(
        sft_method(config),
        ctx,
        base_ref=base_ref,
        adapter_in=adapter_in,
        data=examples,
        config=config,
        run_dir=run_dir,
        run_id=run_id,
        max_length=max_length,
    )
