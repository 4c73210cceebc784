"""Machinery shared by the training methods: exact tokenisation, metrics into the database,
complete-marked checkpoints with resume, the run's fingerprint and trl settings (``routine.py``
runs them in order: the one training routine).

Resume policy: a run folder holds ``checkpoints/checkpoint-N`` (HF Trainer layout) and, once
finished, ``adapter/``. A checkpoint counts only once its ``.complete`` marker exists (written
after the save). Metrics of steps after the resumed checkpoint are deleted before training
resumes, so every (run, name, step) is written once and describes the trajectory kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from teachlab.errors import ConfigError, DataError, JobError
from teachlab.jobs.context import Cancelled, StageContext
from teachlab.prompts import prompt_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

COMPLETE_MARKER = ".complete"
CHECKPOINTS = "checkpoints"
OUTPUT = "adapter"
PLAN_FILE = "teachlab-plan.json"
INFO_FILE = "teachlab-train.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MAX_MICRO_BATCH = 8  # larger batches are reached by gradient accumulation (bounded memory)


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    adapter_sha256: str  # sha256 of adapter_model.safetensors (LoRA) or of *.safetensors (full)
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)  # last value of each logged metric
    resumed_from: int | None = None  # checkpoint step this call resumed from
    full_model: bool = False
    tokens: int = 0  # tokens trained on: steps × batch × mean sequence length (both DPO sides)


# --- tokenisation ---------------------------------------------------------------------------


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of the exact text, nothing added (completions; no chat template applied)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """A stored prompt's ids exactly as generation encodes them, through the same function.

    The text is already chat-templated (prefill included); generation adds the tokenizer's BOS
    only when the text lacks it (Gemma's plain template has none). Any other encoding would
    train DPO on a prompt the teacher never saw.
    """
    return prompt_token_ids(tokenizer, prompt)


def completion_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A completion's ids, ending with EOS so the model also learns where to stop."""
    ids = encode(tokenizer, text)
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return ids


def require_fields(rows: list[dict[str, Any]], names: tuple[str, ...], what: str) -> None:
    if not rows:
        raise DataError(f"No {what} to train on; build or approve some first.")
    for i, row in enumerate(rows):
        missing = [n for n in names if not isinstance(row.get(n), str)]
        if missing:
            raise DataError(
                f"{what.capitalize()} #{i} lacks text field(s) {', '.join(missing)}; each needs "
                f"{', '.join(names)} as strings."
            )


def context_limit(model_folder: Path) -> int:
    """The longest sequence the model was built for (the default training length limit)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_folder).get_text_config()
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def check_lengths(lengths: list[int], max_length: int, what: str) -> None:
    """Refuse data that would be truncated: silent truncation corrupts prompts (SPEC pitfalls)."""
    over = [(n, i) for i, n in enumerate(lengths) if n > max_length]
    if over:
        longest, index = max(over)
        raise ConfigError(
            f"{len(over)} of {len(lengths)} {what} exceed the {max_length}-token training limit "
            f"(the longest, #{index}, has {longest} tokens) and would be truncated; raise max_length "
            "(within the model's context) or shorten the prompts."
        )


# --- callbacks ------------------------------------------------------------------------------


class DbMetricsCallback(TrainerCallback):
    """Writes every numeric log value as a Metric row, reports progress, honours cancellation.

    Cancellation is graceful: when ``ctx.check_cancelled()`` raises ``Cancelled`` at a step end,
    the trainer is told to save a checkpoint of that step and stop; ``run_training`` then raises
    ``Cancelled`` again, so the step's metrics and checkpoint are kept for a later resume.
    A database busy past its timeout never stops training: rows wait for the next write.
    """

    def __init__(self, ctx: StageContext, run_id: int | None) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.cancelled = False
        self.last: dict[str, float] = {}
        self._written: set[tuple[str, int]] = set()
        self._pending: list[tuple[int, str, float]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        try:
            self.ctx.check_cancelled()
        except Cancelled:
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> Any:
        step = int(state.global_step)
        values: dict[str, float] = {}
        for name, value in (logs or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                self.ctx.log(f"step {step}: {name} is {value}; not stored (SQLite has no NaN)")
                continue
            values[name] = float(value)
        self.last.update(values)
        # The end-of-training summary repeats names (epoch) at the last step: keep the first.
        for name, value in values.items():
            if (name, step) not in self._written:
                self._written.add((name, step))
                self._pending.append((step, name, value))
        if state.is_world_process_zero:
            self.flush()
        if "loss" in values:
            total = int(state.max_steps)
            self.ctx.progress(step, total, f"step {step}/{total} loss {values['loss']:.4f}")
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            self.flush()
        return control

    def flush(self) -> None:
        """Write the pending rows in one short transaction; keep them if the database is busy."""
        if self.run_id is None or not self._pending:
            return
        from sqlalchemy.exc import OperationalError

        from teachlab.db import Metric

        try:
            with self.ctx.write() as session:  # only while the run is still ours
                for step, name, value in self._pending:
                    session.add(Metric(run_id=self.run_id, step=step, name=name, value=value))
        except OperationalError as exc:
            self.ctx.log(f"Metrics not written yet ({exc.orig}); retrying at the next step.")
            return
        self._pending.clear()


class CompleteMarker(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has finished writing it (on_save fires after)."""

    def __init__(self, ctx: StageContext, run_id: int | None = None) -> None:
        self.ctx = ctx
        self.run_id = run_id

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return control
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return control
        write_durably(folder / COMPLETE_MARKER, str(state.global_step))
        if self.run_id is not None:
            # The marker on disk is the truth; Run.checkpoint only shows it in the UI.
            from sqlalchemy.exc import OperationalError

            from teachlab.db import Run

            try:
                with self.ctx.write() as session:
                    run = session.get(Run, self.run_id)
                    if run is not None:
                        run.checkpoint = str(folder)
            except OperationalError as exc:
                self.ctx.log(f"Run.checkpoint not updated ({exc.orig}); {folder} is complete.")
        return control


def write_durably(path: Path, text: str) -> None:
    """Write a small file and fsync it: a marker or record must outlive a crash right after."""
    with path.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# --- checkpoints ----------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int | None:
    """N for a ``checkpoint-N`` folder, None for anything else."""
    prefix, _, number = path.name.partition("-")
    if prefix != "checkpoint" or not number.isdigit() or not path.is_dir():
        return None
    return int(number)


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` with a ``.complete`` marker; partial folders are ignored."""
    if not folder.is_dir():
        return None
    complete = [
        (step, path)
        for path in folder.iterdir()
        if (step := checkpoint_step(path)) is not None and (path / COMPLETE_MARKER).is_file()
    ]
    return max(complete)[1] if complete else None


def remove_incomplete_checkpoints(folder: Path) -> list[Path]:
    """Delete checkpoint folders a kill left half-written, so a new save never mixes with them."""
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if checkpoint_step(path) is not None and not (path / COMPLETE_MARKER).is_file():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def training_plan(kind: str, base_ref: str, adapter_in: str | None, **settings: Any) -> dict:
    """What a run is, for its fingerprint: model, incoming adapter (by hash) and settings."""
    from teachlab.models import trained_hash

    adapter_hash = trained_hash(adapter_in) if adapter_in else None
    return {"kind": kind, "base": base_ref, "adapter_in": adapter_hash, **settings}


def fingerprint(plan: dict[str, Any], data: Iterable[Any]) -> str:
    """sha256 of what a run trains on: a checkpoint only resumes the very same plan and data."""
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode())
    for row in data:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()


def prepare_checkpoints(run_dir: Path, plan_hash: str) -> Path | None:
    """Set up ``<run_dir>/checkpoints`` and return the checkpoint to resume from, if any."""
    folder = run_dir / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    plan_file = folder / PLAN_FILE
    latest = latest_complete_checkpoint(folder)
    stale = (
        plan_file.is_file() and json.loads(plan_file.read_text()).get("fingerprint") != plan_hash
    )
    if stale and latest is not None:
        raise JobError(
            f"The checkpoints in {folder} were made with other data or settings, so this run "
            "cannot resume them; start a new run, or delete that folder to start this one over."
        )
    remove_incomplete_checkpoints(folder)
    write_durably(plan_file, json.dumps({"fingerprint": plan_hash}))
    return latest


def clear_metrics_after(ctx: StageContext, run_id: int | None, step: int) -> None:
    """Delete a run's metrics past ``step``: those steps are about to be trained again."""
    if run_id is None:
        return
    from sqlmodel import col, delete

    from teachlab.db import Metric

    with ctx.write() as session:
        session.exec(delete(Metric).where(col(Metric.run_id) == run_id, col(Metric.step) > step))


def finished_result(run_dir: Path, plan_hash: str) -> TrainResult | None:
    """The stored result of a run that already finished with the same plan (idempotent stage)."""
    from teachlab.models import hash_folder

    out = run_dir / OUTPUT
    info_path = out / INFO_FILE
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    if info.get("fingerprint") != plan_hash:
        return None
    pattern = "*.safetensors" if info.get("full_model") else "adapter_model.safetensors"
    try:
        if hash_folder(out, pattern) != info.get("sha256"):
            return None
    except Exception:  # a damaged folder is simply trained again
        return None
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    return TrainResult(
        out, info["sha256"], info["global_step"], info["metrics"], None, info["full_model"]
    )


# --- trainer setup --------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A method's optimisation settings, read from the study config once per run."""

    lr: float
    epochs: float
    batch: int  # the effective batch (see ``micro_batch``)
    max_steps: int  # 0: as many as the epochs take
    warmup: float  # a float below 1 is a fraction of the total steps
    scheduler: str  # a transformers scheduler name: "cosine", "linear"


def micro_batch(batch_size: int, processes: int = 1) -> tuple[int, int]:
    """(per-device batch, accumulation steps) whose product, times ``processes``, is exactly
    ``batch_size``: the global batch is the same however many processes train."""
    if batch_size % processes:
        raise ConfigError(
            f"A batch of {batch_size} does not split over {processes} processes; use a batch "
            f"size that is a multiple of {processes}, or another num_processes."
        )
    share = batch_size // processes
    per_device = max(d for d in range(1, min(share, MAX_MICRO_BATCH) + 1) if share % d == 0)
    return per_device, share // per_device


def training_arguments(
    config_cls: type,
    *,
    run_dir: Path,
    seed: int,
    schedule: Schedule,
    save_steps: int,
    ordered: bool = False,
    checkpointing: bool = False,
    processes: int = 1,
    **extra: Any,
) -> Any:
    """A trl config (DPOConfig/SFTConfig) with TeachLab's reproducible, resumable defaults.

    Precision follows the device: bf16 on a GPU that has it, fp16 mixed precision on one that
    has not, fp32 on CPU. ``checkpointing`` recomputes activations (less memory, slower steps).
    """
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    per_device, accumulation = micro_batch(schedule.batch, processes)
    return config_cls(
        output_dir=str(run_dir / CHECKPOINTS),
        seed=seed,
        data_seed=seed,
        learning_rate=schedule.lr,
        num_train_epochs=schedule.epochs,
        max_steps=schedule.max_steps if schedule.max_steps > 0 else -1,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        warmup_steps=schedule.warmup,  # a float below 1 is a fraction of the total steps
        lr_scheduler_type=schedule.scheduler,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        # Two kept: rotation runs before the newest gets its marker, so the previous complete
        # checkpoint must survive it.
        save_total_limit=2,
        save_only_model=False,  # optimizer, scheduler and RNG states are needed to resume
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        bf16=bf16,
        fp16=cuda and not bf16,
        train_sampling_strategy="sequential" if ordered else "random",
        **{_checkpointing_field(config_cls): checkpointing},
        **extra,
    )


def _checkpointing_field(config_cls: type) -> str:
    # transformers 5.x renamed gradient_checkpointing (trl defaults it to True) and warns on it.
    names = {f.name for f in dataclasses.fields(config_cls)}
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )


def merged(model: Any) -> Any:
    """``model`` with its LoRA adapter folded into the weights (as it is, when it has none)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def lora_config(rank: int) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )


# --- running --------------------------------------------------------------------------------


def score_only_labelled_positions_on_cpu() -> bool:
    """Make trl's fused LM head skip unlabelled positions on the CPU too; True once it does.

    trl (1.16) computes DPO and SFT log-probs in vocabulary chunks. On Triton devices it scores
    only the positions that carry a label; elsewhere it scores every position, prompt and
    padding included, so that tile shapes stay fixed for compilers (Neuron). Eager CPU torch
    has nothing to recompile, and the wasted work is most of the step: with Gemma 3's
    262,144-token vocabulary and ARTE's long prompts the align stage took twice as long.
    Losses and gradients are unchanged (``tests/test_train.py`` compares both paths). The
    choice is one module-level function in trl; where a trl release no longer has it, training
    runs as trl ships it. trl's own choice stays reachable as ``_teachlab_shipped``.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    choose = getattr(trl_utils, "_use_triton", None)
    if choose is None:
        return False
    if hasattr(choose, "_teachlab_shipped"):  # switched already
        return True

    def use_compact(device: Any) -> bool:
        return device.type == "cpu" or bool(choose(device))

    use_compact._teachlab_shipped = choose  # type: ignore[attr-defined]
    trl_utils._use_triton = use_compact
    return True
