"""The transformers backend: batched sampling with left padding on CPU or the first GPU.

Reproducibility: torch's RNG is re-seeded before each batch from the batch's first request
(key and seed), so the same requests in the same order give the same completions. A request's
output can change when the batch around it changes (a resumed stage batches what is left).
A batch whose prompts are all the same (question drafting) encodes the prompt once and shares
its KV cache across the batch.
"""

from __future__ import annotations

import copy
import gc
import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from teachlab.backends.base import GenRequest, cut_at_stop

if TYPE_CHECKING:
    from teachlab.models import LoadedModel

DEFAULT_BATCH_SIZE = 8


def batch_seed(request: GenRequest) -> int:
    """A 63-bit seed from a request's key and seed (distinct keys get distinct streams)."""
    digest = hashlib.sha256(f"{request.key}\x00{request.seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def prompt_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a stored prompt, adding BOS only when the chat template did not.

    Base-model templates (gemma's plain one) emit no BOS and the model needs one; templates
    that start with BOS must not get a second. Trainers should tokenize prompts the same way.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and prompt.startswith(bos))
    return list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])


def plan_batches(requests: Sequence[GenRequest], batch_size: int) -> list[list[GenRequest]]:
    """Group by (temperature, max_new_tokens, stop) in first-seen order, then chunk in order."""
    groups: dict[tuple[float, int, tuple[str, ...]], list[GenRequest]] = {}
    for request in requests:
        key = (request.temperature, request.max_new_tokens, request.stop)
        groups.setdefault(key, []).append(request)
    return [
        group[i : i + batch_size]
        for group in groups.values()
        for i in range(0, len(group), batch_size)
    ]


class _StopOnText:
    """Stop a row once its new text contains a stop string.

    transformers' own ``stop_strings`` pre-computes tables over the whole vocabulary on every
    ``generate`` call (about 20 s for Gemma's 262k tokens on 2 cores); decoding the last few new
    tokens of each row per step costs well under a millisecond.
    """

    WINDOW = 24  # tokens; longer than any stop string we use

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_width: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, prompt_width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.WINDOW) :]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFBackend:
    """Generate with a transformers model loaded by ``teachlab.models.load``."""

    def __init__(
        self,
        model_ref: str,
        adapter: str | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        loaded: LoadedModel | None = None,
    ) -> None:
        if loaded is None:
            from teachlab.models import load

            loaded = load(model_ref, adapter)
        self.loaded = loaded
        self.model: Any = loaded.model
        self.tokenizer: Any = loaded.tokenizer
        self.batch_size = max(1, int(batch_size))
        self.name = f"transformers:{model_ref}"
        self.adapter_hash = loaded.adapter_sha256
        self.weights_sha256 = loaded.weights_sha256
        self._prefix: tuple[tuple[int, ...], Any] | None = None  # (prompt ids, bs=1 KV cache)

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        for batch in plan_batches(requests, self.batch_size):
            yield from zip(batch, self._generate_batch(batch), strict=True)

    def _generate_batch(self, batch: list[GenRequest]) -> list[str]:
        import torch

        tok = self.tokenizer
        encoded = [prompt_token_ids(tok, r.prompt) for r in batch]
        width = max(len(ids) for ids in encoded)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        # Left padding: every row's last prompt token sits at the same position, so new tokens
        # are appended in lock-step.
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        device = next(self.model.parameters()).device
        first = batch[0]
        sampling: dict[str, Any] = {"do_sample": first.temperature > 0}
        if first.temperature > 0:
            # Pure temperature sampling (no top-k/top-p), the OpenAI API's meaning of temperature.
            sampling.update(temperature=first.temperature, top_k=0, top_p=1.0)
        if first.stop:
            # Rows that hit a stop string finish early (padded); the batch ends when all have.
            sampling["stopping_criteria"] = [_StopOnText(tok, first.stop, width)]
        if len(batch) > 1 and all(ids == encoded[0] for ids in encoded):
            sampling["past_key_values"] = self._shared_cache(encoded[0], len(batch), device)
        torch.manual_seed(batch_seed(first))
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=first.max_new_tokens,
                pad_token_id=pad_id,
                **sampling,
            )
        new_tokens = output[:, width:].tolist()
        return [
            cut_at_stop(tok.decode(row, skip_special_tokens=True), first.stop) for row in new_tokens
        ]

    def _shared_cache(self, ids: list[int], batch_size: int, device: Any) -> Any:
        """The KV cache of all but the last prompt token, computed once, repeated per row.

        generate() then runs only the last prompt token per row instead of the whole prompt
        (the prompt is most of the work: ~300 tokens against 160 new ones).
        """
        import torch
        from transformers import DynamicCache

        key = tuple(ids)
        if self._prefix is None or self._prefix[0] != key:
            cache = DynamicCache(config=self.model.config)
            with torch.inference_mode():
                self.model(
                    input_ids=torch.tensor([ids[:-1]], device=device),
                    past_key_values=cache,
                    use_cache=True,
                )
            self._prefix = (key, cache)
        shared = copy.deepcopy(self._prefix[1])
        shared.batch_repeat_interleave(batch_size)
        return shared

    def close(self) -> None:
        self.model = None
        self._prefix = None
        self.loaded = None  # type: ignore[assignment]
        gc.collect()
