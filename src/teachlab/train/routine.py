"""The one training routine: every method (DPO, SFT, losses still to come) runs through ``train``.

``train`` fetches the base model's folder, tokenises the data, refuses rows longer than the
limit, fingerprints the plan and data, returns a finished result of the same fingerprint,
prepares the checkpoints, builds the trainer (``build_trainer``) and runs it (``run_training``).
What differs between methods is a ``Method`` record: how its rows are tokenised, measured and
fingerprinted, its schedule and further settings, its trl classes and its models.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.trainer_callback import PrinterCallback

from teachlab.config import StudyConfig
from teachlab.jobs.context import Cancelled, StageContext
from teachlab.train.common import (
    CHECKPOINTS,
    INFO_FILE,
    OUTPUT,
    CompleteMarker,
    DbMetricsCallback,
    Schedule,
    TrainResult,
    check_lengths,
    checkpoint_step,
    clear_metrics_after,
    context_limit,
    fingerprint,
    finished_result,
    lora_config,
    prepare_checkpoints,
    score_only_labelled_positions_on_cpu,
    training_arguments,
    training_plan,
    write_durably,
)

if TYPE_CHECKING:
    from transformers import Trainer

Row = dict[str, Any]


@dataclass(frozen=True)
class Method:
    """What one training method supplies to ``train``; made per run from the study config
    (``dpo.dpo_method``, ``sft.sft_method``; a new loss adds a function like them).

    ``kind``, ``settings``, the schedule (bar warm-up and scheduler) and the ``hashed`` rows make
    the run's fingerprint: changing them for an existing method orphans its earlier checkpoints
    and results.
    """

    kind: str  # the plan's "kind": "dpo", "sft"
    noun: str  # what its data rows are called in messages: "pairs"
    tokenize: Callable[[Any, list[Row]], list[Row]]  # (tokenizer, data) -> pre-tokenised rows
    length: Callable[[Row], int]  # the tokens of a row's longest sequence, checked to fit
    hashed: Callable[[Row], Any]  # what of a row the fingerprint covers (JSON)
    schedule: Schedule
    # (policy as loaded, base_ref, adapter_in) -> (policy to train, further trainer arguments)
    models: Callable[[Any, str, str | None], tuple[Any, dict[str, Any]]]
    classes: Callable[[], tuple[type, type]]  # (trl config, trainer); trl loads when called
    started: str  # log line before training, with {rows}, {longest} and {limit}
    reused: str  # log line for a finished run, with {run_dir} and {sha}
    settings: Mapping[str, Any] = field(default_factory=dict)  # further plan entries
    arguments: Mapping[str, Any] = field(default_factory=dict)  # further trl config fields


def build_trainer(
    method: Method,
    ctx: StageContext,
    *,
    base_ref: str,
    adapter_in: str | None,
    rows: list[Row],
    config: StudyConfig,
    run_dir: Path,
    max_length: int,
    callbacks: list[Any] | None = None,
    processes: int = 1,
) -> Any:
    """A trainer of ``method`` over pre-tokenised rows; nothing trained yet (``processes``: how
    many train together, for the per-device batch that keeps the global one).

    LoRA on the base gets a new adapter of rank ``lora_r``; with ``adapter_in`` LoRA training
    continues that adapter. Full fine-tuning (``lora`` off) trains every weight of the model
    ``method.models`` returns.
    """
    from datasets import Dataset
    from transformers import set_seed

    from teachlab.models import load, trained_kind

    # Seed before the model is built: LoRA's A matrices are initialised randomly.
    set_seed(ctx.seed)
    loaded = load(base_ref, adapter_in, trainable=True, quantize_4bit=config.load_in_4bit)
    # A new adapter unless training continues one (a fully fine-tuned start gets its own).
    continues = adapter_in is not None and trained_kind(adapter_in) == "adapter"
    peft_config = lora_config(config.lora_r) if config.lora and not continues else None
    model, extra = method.models(loaded.model, base_ref, adapter_in)
    config_cls, trainer_cls = method.classes()
    args = training_arguments(
        config_cls,
        run_dir=run_dir,
        seed=ctx.seed,
        schedule=method.schedule,
        save_steps=config.save_steps,
        checkpointing=config.gradient_checkpointing,
        processes=processes,
        max_length=max_length,  # every row was checked to fit: nothing is truncated
        **method.arguments,
    )
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=loaded.tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        **extra,
    )


def train(
    method: Method,
    ctx: StageContext,
    *,
    base_ref: str,
    adapter_in: str | None,
    data: list[Row],
    config: StudyConfig,
    run_dir: Path,
    run_id: int | None,
    max_length: int | None = None,
) -> TrainResult:
    """Train with ``method``; resumes from the newest complete checkpoint in ``run_dir``.

    ``max_length`` defaults to the model's context; any row longer than it raises ConfigError
    before anything is trained. A run that already finished with the same plan and data is
    returned as it is. Metrics go to the run ``run_id`` (none when it is None). Raises
    ``Cancelled`` (with a checkpoint kept) when the run is cancelled.
    """
    from transformers import AutoTokenizer

    from teachlab.models import fetch, require_device

    require_device(load_in_4bit=config.load_in_4bit)
    grouped = config.num_processes > 1 or bool(config.accelerate_config)
    if grouped:
        from teachlab.train.group import check_group

        check_group(config)
    run_dir = Path(run_dir)
    folder = fetch(base_ref)
    rows = method.tokenize(AutoTokenizer.from_pretrained(folder), data)
    limit = max_length or context_limit(folder)
    lengths = [method.length(row) for row in rows]
    check_lengths(lengths, limit, method.noun)
    schedule = method.schedule
    plan = training_plan(
        method.kind,
        base_ref,
        adapter_in,
        seed=ctx.seed,
        lr=schedule.lr,
        epochs=schedule.epochs,
        batch=schedule.batch,
        max_steps=schedule.max_steps,
        lora=config.lora,
        lora_r=config.lora_r,
        max_length=limit,
        **method.settings,
        # Only when on, so the plans (and checkpoints) of every earlier run still match.
        **({"load_in_4bit": True} if config.load_in_4bit else {}),
    )
    plan_hash = fingerprint(plan, map(method.hashed, rows))
    # DPO runs the prompt with each of its two completions: two sequences a row.
    per_row = sum(lengths) / len(lengths) * (2 if method.kind == "dpo" else 1)

    def counted(result: TrainResult) -> TrainResult:
        return replace(result, tokens=round(result.global_step * schedule.batch * per_row))

    done = finished_result(run_dir, plan_hash)
    if done is not None:
        ctx.log(method.reused.format(run_dir=run_dir, sha=done.adapter_sha256[:12]))
        return counted(done)
    resume = prepare_checkpoints(run_dir, plan_hash)
    ctx.log(method.started.format(rows=len(rows), longest=max(lengths), limit=limit))
    metrics = DbMetricsCallback(ctx, run_id)
    if grouped:
        from teachlab.train.group import train_in_group

        return counted(
            train_in_group(
                method,
                ctx,
                base_ref=base_ref,
                adapter_in=adapter_in,
                rows=rows,
                config=config,
                run_dir=run_dir,
                max_length=limit,
                plan_hash=plan_hash,
                resume=resume,
                metrics=metrics,
                run_id=run_id,
            )
        )
    trainer = build_trainer(
        method,
        ctx,
        base_ref=base_ref,
        adapter_in=adapter_in,
        rows=rows,
        config=config,
        run_dir=run_dir,
        max_length=limit,
        callbacks=[metrics, CompleteMarker(ctx, run_id)],
    )
    return counted(
        run_training(
            trainer,
            ctx,
            run_dir=run_dir,
            plan_hash=plan_hash,
            resume=resume,
            metrics=metrics,
            run_id=run_id,
            full_model=not config.lora,
        )
    )


def run_training(
    trainer: Trainer,
    ctx: StageContext,
    *,
    run_dir: Path,
    plan_hash: str,
    resume: Path | None,
    metrics: DbMetricsCallback,
    run_id: int | None,
    full_model: bool,
) -> TrainResult:
    """Train (resuming when a complete checkpoint exists), then save and hash the result."""
    from teachlab.models import hash_folder

    resumed_from = checkpoint_step(resume) if resume is not None else None
    clear_metrics_after(ctx, run_id, resumed_from or 0)
    if resume is not None:
        ctx.log(f"Resuming from {resume.name}.")
    # Progress and metrics go through ctx and the database, not stdout.
    trainer.remove_callback(PrinterCallback)
    score_only_labelled_positions_on_cpu()
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    if metrics.cancelled:
        raise Cancelled(
            f"Training cancelled at step {trainer.state.global_step}; a checkpoint is kept."
        )

    out = run_dir / OUTPUT
    accelerator = trainer.accelerator
    if not accelerator.is_main_process:  # one process of a group saves; the others wait
        accelerator.wait_for_everyone()
        return TrainResult(out, "", int(trainer.state.global_step), {}, resumed_from, full_model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{OUTPUT}.", dir=run_dir))
    try:
        model: Any = trainer.accelerator.unwrap_model(trainer.model)
        if full_model:
            model.save_pretrained(tmp, safe_serialization=True)
            trainer.processing_class.save_pretrained(tmp)  # type: ignore[union-attr]
            digest = hash_folder(tmp, "*.safetensors")
        else:
            # Only the trained adapter: a frozen "ref" copy may sit beside it (see dpo.py).
            model.save_pretrained(tmp, selected_adapters=["default"])
            digest = hash_folder(tmp, "adapter_model.safetensors")
        info = {
            "fingerprint": plan_hash,
            "sha256": digest,
            "global_step": int(trainer.state.global_step),
            "metrics": metrics.last,
            "full_model": full_model,
        }
        write_durably(tmp / INFO_FILE, json.dumps(info, indent=2))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{OUTPUT}.old.", dir=run_dir))
            os.replace(out, old / OUTPUT)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # the result supersedes them
    accelerator.wait_for_everyone()
    ctx.log(f"Saved {'model' if full_model else 'adapter'} {digest[:12]} to {out}.")
    return TrainResult(
        out, digest, int(trainer.state.global_step), dict(metrics.last), resumed_from, full_model
    )
