"""The short measured pass that calibrates an estimate to this machine: the bundled student and
teacher's achieved FLOP/s for prefill, decoding and a training step, and the machine's name."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teachlab.errors import ModelError
from teachlab.experiments.lengths import forward_flops, model_info, trained_flops

# What the calibration pass runs: the bundled models in their roles.
CALIBRATION_MODELS = {
    "student": "bundled:smollm2-135m-instruct",
    "teacher": "bundled:gemma-3-270m",
}
CAL_PREFILL = (2, 128)  # rows x tokens of one forward pass
CAL_DECODE = (8, 64, 8)  # rows (the backend's batch), shared prompt tokens, new tokens per row
CAL_TRAIN = (2, 64)  # rows x tokens of one forward + backward pass
CAL_TRIALS = 2  # best of: a busy 2-core machine slows single trials by 2x and more


@dataclass(frozen=True)
class Calibration:
    """What the short measured pass found for one bundled model on this machine."""

    role: str
    ref: str
    params: float
    prefill_tokens_per_s: float
    prefill_flops: float  # achieved FLOP/s
    decode_rows: int
    decode_tokens_per_s: float
    decode_flops: float
    train_tokens_per_s: float
    train_flops: float
    seconds: float  # the pass itself, loading included
    load: float | None = None  # the 1-minute load average as the pass began
    load_seconds: float = 0.0  # loading the model (from its cached safetensors)

    def rate(self, kind: str) -> float:
        """Achieved FLOP/s for a kind of work: prefill, decode or train."""
        rates = {
            "prefill": self.prefill_flops,
            "decode": self.decode_flops,
            "train": self.train_flops,
        }
        return rates[kind]


# ---------------------------------------------------------------- calibration


def calibrate_here(roles: Sequence[str] = ("student", "teacher")) -> list[Calibration]:
    """A short measured pass on the bundled models: forward tokens/s (prefill, scoring), decode
    tokens/s at the backend's batch, one training step; FLOP/s achieved in each."""
    return [_calibrate(role, CALIBRATION_MODELS[role]) for role in roles]


def _calibrate(role: str, ref: str) -> Calibration:
    import torch

    from teachlab import decoding
    from teachlab.backends.hf import HFBackend

    start, load = time.perf_counter(), _load()
    try:
        backend = HFBackend(ref)  # the backend's own model set-up (its decoding head)
        loaded = time.perf_counter() - start
    except ModelError as exc:
        raise ModelError(
            f"Calibration needs the bundled {role} {ref}: {exc} Or estimate without "
            "calibration (calibrate=False)."
        ) from exc
    model, info = backend.model, model_info(ref, role, None)
    high = min(int(model.get_input_embeddings().weight.shape[0]), 30000)
    gen = torch.Generator().manual_seed(0)
    rows, length = CAL_PREFILL
    d_rows, d_prompt, d_new = CAL_DECODE
    t_rows, t_len = CAL_TRAIN
    batch = torch.randint(100, high, (rows, length), generator=gen)
    prompt = torch.randint(100, high, (d_prompt,), generator=gen).tolist()
    suffixes = [[int(t)] for t in torch.randint(100, high, (d_rows,), generator=gen)]
    train_batch = torch.randint(100, high, (t_rows, t_len), generator=gen)
    try:
        with torch.inference_mode():
            model(input_ids=batch[:, :16])  # warm-up: first-call allocations
            prefill = _best(lambda: model(input_ids=batch))
            cache = decoding.encode_prefix(model, prompt)
            decoded = _best(
                lambda: decoding.decode_batch(
                    model,
                    cache,
                    d_prompt,
                    suffixes,
                    pad_id=backend.pad_id,
                    eos_ids=frozenset(),  # every row decodes all d_new tokens
                    max_new_tokens=d_new,
                    stopped=lambda new: False,
                )
            )
        model.train()

        def step() -> None:
            model(input_ids=train_batch, labels=train_batch).loss.backward()
            model.zero_grad(set_to_none=True)

        trained = _best(step)
    finally:
        model.eval()
        backend.close()
    return Calibration(
        role=role,
        ref=ref,
        params=info.params,
        prefill_tokens_per_s=rows * length / prefill,
        prefill_flops=rows * forward_flops(info, length) / prefill,
        decode_rows=d_rows,
        decode_tokens_per_s=d_rows * d_new / decoded,
        decode_flops=d_rows * forward_flops(info, d_new, d_prompt) / decoded,
        train_tokens_per_s=t_rows * t_len / trained,
        train_flops=t_rows * trained_flops(info, t_len, lora=False) / trained,
        seconds=time.perf_counter() - start,
        load=load,
        load_seconds=loaded,
    )


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _best(fn: Any) -> float:
    """The fastest of CAL_TRIALS timed calls (others' jobs only ever slow a trial down)."""
    best = math.inf
    for _ in range(CAL_TRIALS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def describe_machine() -> str:
    """CPU model, cores, memory and the current load: what "here" means in an estimate."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        memory = "RAM unknown"
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = "load unknown"
    return f"{cpu}; {os.cpu_count()} cores; {memory}; {load}"
