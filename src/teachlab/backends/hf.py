"""The transformers backend: batched sampling with left padding on CPU or the first GPU.

Decoding runs through ``teachlab.decoding`` (a plain loop over the model's forward pass, not
``generate``); this module plans the batches, seeds them, and says what each row's prefix is.

Reproducibility: torch's RNG is re-seeded before each batch from the batch's first request
(key and seed), so the same requests in the same order give the same completions. A request's
output can change when the batch around it changes (a resumed stage batches what is left).
A batch whose prompts are all the same (question drafting) encodes the prompt once and shares
its KV cache across the batch.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from teachlab.backends.base import GenRequest, cut_at_stop
from teachlab.prompts import prompt_token_ids

if TYPE_CHECKING:
    from teachlab.models import LoadedModel

DEFAULT_BATCH_SIZE = 8
CHOICE_BUDGET_BYTES = 256 << 20  # KV cache memory for scoring a question's options


def batch_seed(request: GenRequest) -> int:
    """A 63-bit seed from a request's key and seed (distinct keys get distinct streams)."""
    digest = hashlib.sha256(f"{request.key}\x00{request.seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def request_batches(requests: Sequence[GenRequest], batch_size: int) -> list[list[GenRequest]]:
    """Group by (temperature, max_new_tokens, stop) in first-seen order, then chunk in order."""
    from teachlab.decoding import plan_batches

    keys = [(r.temperature, r.max_new_tokens, r.stop) for r in requests]
    # Lengths matter only to longest-first order and a memory budget; the backend uses neither.
    batches = plan_batches([0] * len(requests), batch_size, groups=keys, longest_first=False)
    return [[requests[i] for i in batch] for batch in batches]


STOP_WINDOW = 24  # tokens decoded to look for a stop string; longer than any we use


def _stopped(tokenizer: Any, new_ids: Sequence[int], stops: tuple[str, ...]) -> bool:
    """Whether a row's new text contains a stop string.

    transformers' own ``stop_strings`` pre-computes tables over the whole vocabulary on every
    ``generate`` call (about 20 s for Gemma's 262k tokens on 2 cores); decoding the last few new
    tokens of a row per step costs well under a millisecond.
    """
    if not stops:
        return False
    text = tokenizer.decode(new_ids[-STOP_WINDOW:], skip_special_tokens=True)
    return any(stop in text for stop in stops)


def _use_tall_skinny_head(model: Any) -> None:
    """Compute the output head of a CPU model as ``W @ x.T`` for a few rows.

    ``linear(x, W)`` with 2–16 rows of x against Gemma's (262144, 640) head runs at half the
    memory bandwidth on this class of CPU (MKL: 117 ms for 8 rows, against 57 ms for
    ``mm(W, x.T)``), and the head is most of a decoding step. Prefill with ``logits_to_keep=1``
    and decoding have one row per sequence; one row (a matrix-vector product either way),
    training (gradients on) and long inputs keep ``linear``.
    """
    import torch
    import torch.nn.functional as F

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return
    if head.weight.device.type != "cpu" or getattr(head, "_teachlab_tall_skinny", False):
        return

    def forward(hidden: Any) -> Any:
        rows = hidden.numel() // hidden.shape[-1]
        if torch.is_grad_enabled() or not 2 <= rows <= 64:
            return F.linear(hidden, head.weight)
        flat = hidden.reshape(rows, hidden.shape[-1])
        return torch.mm(head.weight, flat.t()).t().reshape(*hidden.shape[:-1], -1)

    head.forward = forward
    head._teachlab_tall_skinny = True


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
        from teachlab.decoding import eos_ids

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
        self._prefix: tuple[tuple[int, ...], Any] | None = None  # (prefix ids, bs=1 KV cache)
        # Tokens run through the model: prompts (a shared prefix counted once) and new ones.
        self.tokens = {"prompt": 0, "generated": 0}
        self.eos_ids = eos_ids(self.model, self.tokenizer)
        pad_id = self.tokenizer.pad_token_id
        self.pad_id: int = self.tokenizer.eos_token_id if pad_id is None else pad_id
        _use_tall_skinny_head(self.model)

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        for batch in request_batches(requests, self.batch_size):
            yield from zip(batch, self._generate_batch(batch), strict=True)

    def _generate_batch(self, batch: list[GenRequest]) -> list[str]:
        import torch

        from teachlab.decoding import decode_batch

        first = batch[0]
        encoded = [prompt_token_ids(self.tokenizer, r.prompt) for r in batch]
        torch.manual_seed(batch_seed(first))
        with torch.inference_mode():
            context, cache = self._prefix_cache(encoded)
            self.tokens["prompt"] += sum(len(ids) - context for ids in encoded)
            new_ids = decode_batch(
                self.model,
                cache,
                context,
                [ids[context:] for ids in encoded],
                pad_id=self.pad_id,
                eos_ids=self.eos_ids,
                max_new_tokens=first.max_new_tokens,
                stopped=lambda ids: _stopped(self.tokenizer, ids, first.stop),
                temperature=first.temperature,
            )
        self.tokens["generated"] += sum(len(ids) for ids in new_ids)
        return [
            cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), first.stop)
            for ids in new_ids
        ]

    def _prefix_cache(self, encoded: list[list[int]]) -> tuple[int, Any]:
        """The prefix every row of the batch shares (its length) and its KV cache, batch of one.

        When every row has the same prompt, the prefix is all but its last token: computed once
        (and kept for later batches of the same prompt), so decoding runs only the last prompt
        token per row instead of the whole prompt (the prompt is most of the work: ~300 tokens
        against 160 new ones). Otherwise (or for a single row) the prefix is empty and each row
        is its whole prompt, left-padded.
        """
        from teachlab.decoding import encode_prefix

        if len(encoded) == 1 or any(ids != encoded[0] for ids in encoded):
            return 0, encode_prefix(self.model, [])
        key = tuple(encoded[0][:-1])
        if self._prefix is None or self._prefix[0] != key:
            self._prefix = (key, encode_prefix(self.model, key))
            self.tokens["prompt"] += len(key)
        return len(key), self._prefix[1]

    def choose(self, prompt: str, options: Sequence[str], closing: str = "") -> list[float]:
        """The summed log-probability of each option (then ``closing``) as the continuation of
        ``prompt``: how likely the model is to write that answer there. Answer forcing picks
        the likeliest of a question's options this way instead of sampling free text."""
        from teachlab.score.loglik import loglik_batched

        ids = prompt_token_ids(self.tokenizer, prompt)
        candidates = [
            list(self.tokenizer(o + closing, add_special_tokens=False)["input_ids"])
            for o in options
        ]
        # The last prompt token is the "question" whose logits score each option's first token.
        [scores] = loglik_batched(
            self.model,
            ids[:-1],
            [ids[-1:]],
            [candidates],
            pad_id=self.pad_id,
            batch_size=self.batch_size,
            budget_bytes=CHOICE_BUDGET_BYTES,
        )
        return list(scores.logprobs)

    def close(self) -> None:
        self.model = None
        self._prefix = None
        self.loaded = None  # type: ignore[assignment]
        gc.collect()
