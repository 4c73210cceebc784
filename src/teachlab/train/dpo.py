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
from teachlab.train.routine import Method, build_trainer, train

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


def _classes() -> tuple[type, type]:
    from trl import DPOConfig, DPOTrainer

    class ExactDPOTrainer(DPOTrainer):
        """A DPOTrainer that trains on the token ids it is given, unchanged."""

        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            needed = {"prompt_ids", "chosen_ids", "rejected_ids"}
            if not needed <= set(dataset.column_names):
                raise TypeError(f"ExactDPOTrainer needs pre-tokenised {sorted(needed)} columns.")
            return dataset

    return DPOConfig, ExactDPOTrainer


def _with_reference(
    model: Any, base_ref: str, adapter_in: str | None, *, lora: bool
) -> tuple[Any, dict[str, Any]]:
    """The policy and its reference model (the rules are in this module's docstring)."""
    from teachlab.models import load

    ref_model: Any = None  # LoRA: trl disables the adapter, or uses its frozen "ref" copy
    if not lora:
        ref_model = load(base_ref, adapter_in).model
        # Full fine-tuning continues from the starting weights: a LoRA adapter is merged in
        # (a fully fine-tuned model was loaded whole).
        model, ref_model = merged(model), merged(ref_model)
    return model, {"ref_model": ref_model}


def dpo_method(config: StudyConfig, *, ordered: bool = False) -> Method:
    """DPO as the training routine runs it; ``ordered`` keeps the pairs' order (curriculum)."""
    training = f"LoRA r={config.lora_r}" if config.lora else "full fine-tuning"
    return Method(
        kind="dpo",
        noun="pairs",
        tokenize=tokenize_pairs,
        # Prompt + chosen and prompt + rejected are each one sequence: the longer must fit.
        length=lambda r: len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])),
        hashed=lambda r: (r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]),
        schedule=Schedule(
            lr=config.dpo_lr,
            epochs=config.dpo_epochs,
            batch=config.dpo_batch_size,
            max_steps=config.dpo_max_steps,
            warmup=WARMUP,
            scheduler=SCHEDULER,
        ),
        models=partial(_with_reference, lora=config.lora),
        classes=_classes,
        started="DPO on {rows} pairs (longest {longest} of {limit} tokens), " + training + ".",
        reused="DPO already finished in {run_dir}; reusing adapter {sha}.",
        settings={"beta": config.dpo_beta, "ordered": ordered},
        arguments={"beta": config.dpo_beta, "ordered": ordered, "precompute_ref_log_probs": False},
    )


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
    return build_trainer(
        dpo_method(config, ordered=ordered),
        ctx,
        base_ref=base_ref,
        adapter_in=adapter_in,
        rows=rows,
        config=config,
        run_dir=run_dir,
        max_length=max_length,
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
    run_id: int | None,
    max_length: int | None = None,
    ordered: bool = False,
) -> TrainResult:
    """Align the teacher with DPO; resumes from the newest complete checkpoint in ``run_dir``.

    ``max_length`` defaults to the model's context; any pair longer than it raises ConfigError
    before anything is trained. ``ordered`` keeps the pairs' order (curriculum) instead of
    shuffling. Raises ``Cancelled`` (with a checkpoint kept) when the run is cancelled.
    """
    return train(
        dpo_method(config, ordered=ordered),
        ctx,
        base_ref=base_ref,
        adapter_in=adapter_in,
        data=pairs,
        config=config,
        run_dir=run_dir,
        run_id=run_id,
        max_length=max_length,
    )
