"""The transformers backend: batched sampling with left padding on CPU or the first GPU.

Decoding is a plain loop over the model's forward pass rather than ``generate``: a row that
finishes (end of sequence, a stop string) leaves the batch so the rest runs on fewer rows,
sampling draws one uniform per row, and no generation-config default (top-k, repetition
penalty…) changes what a temperature means.

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
CHOICE_BUDGET_BYTES = 256 << 20  # KV cache memory for scoring a question's options


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


STOP_WINDOW = 24  # tokens decoded to look for a stop string; longer than any we use
_BLOCK = 512  # vocabulary entries per block in two-level sampling


def _stopped(tokenizer: Any, new_ids: list[int], stops: tuple[str, ...]) -> bool:
    """Whether a row's new text contains a stop string.

    transformers' own ``stop_strings`` pre-computes tables over the whole vocabulary on every
    ``generate`` call (about 20 s for Gemma's 262k tokens on 2 cores); decoding the last few new
    tokens of a row per step costs well under a millisecond.
    """
    if not stops:
        return False
    text = tokenizer.decode(new_ids[-STOP_WINDOW:], skip_special_tokens=True)
    return any(stop in text for stop in stops)


def sample_tokens(logits: Any, temperature: float) -> Any:
    """One token per row: the argmax at T=0, else a draw from softmax(logits / T), pure
    temperature sampling (no top-k/top-p: the OpenAI API's meaning of temperature).

    Two-level inverse CDF, one uniform per level: a block of the vocabulary by the blocks'
    masses, then a token by its mass within the block. The draw is exact, and it costs about a
    millisecond for 8 rows of Gemma's 262k-token vocabulary on 2 cores, where
    ``torch.multinomial`` (one exponential per entry) takes 40 ms, a fifth of a decoding step.
    """
    import torch
    import torch.nn.functional as F

    if temperature <= 0:
        return logits.argmax(-1)
    rows, vocab = logits.shape
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    n_blocks = -(-vocab // _BLOCK)
    probs = F.pad(probs, (0, n_blocks * _BLOCK - vocab))  # zero mass: never drawn
    blocks = probs.view(rows, n_blocks, _BLOCK)
    u = torch.rand((rows, 2), dtype=torch.float64, device=logits.device)
    # right=True: the first cumulative mass above u, so an empty block or token is never drawn.
    masses = blocks.sum(-1, dtype=torch.float64).cumsum(-1)
    block = torch.searchsorted(masses, u[:, :1] * masses[:, -1:], right=True)
    block = block.clamp_(max=n_blocks - 1)[:, 0]
    inside = blocks[torch.arange(rows, device=logits.device), block].double().cumsum(-1)
    token = torch.searchsorted(inside, u[:, 1:] * inside[:, -1:], right=True)
    return block * _BLOCK + token.clamp_(max=_BLOCK - 1)[:, 0]


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


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
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        _use_tall_skinny_head(self.model)

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        for batch in plan_batches(requests, self.batch_size):
            yield from zip(batch, self._generate_batch(batch), strict=True)

    def _generate_batch(self, batch: list[GenRequest]) -> list[str]:
        import torch

        first = batch[0]
        encoded = [prompt_token_ids(self.tokenizer, r.prompt) for r in batch]
        torch.manual_seed(batch_seed(first))
        with torch.inference_mode():
            new_ids = self._decode(encoded, first)
        return [
            cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), first.stop)
            for ids in new_ids
        ]

    def _decode(self, encoded: list[list[int]], first: GenRequest) -> list[list[int]]:
        """New token ids per row (end of sequence not kept); a row that ends or writes a stop
        string leaves the batch, so the others run on fewer rows."""
        import torch
        from transformers import DynamicCache

        from teachlab.score.engine import with_cache

        rows, width = len(encoded), max(len(ids) for ids in encoded)
        device = next(self.model.parameters()).device
        if rows > 1 and all(ids == encoded[0] for ids in encoded):
            cache = self._shared_cache(encoded[0], rows, device)
            ids = torch.tensor([[encoded[0][-1]]] * rows)
            attention = torch.ones((rows, width), dtype=torch.long)
            positions = torch.full((rows, 1), width - 1)
        else:
            # Left padding: every row's last prompt token sits at the same index, so new tokens
            # are appended in lock-step; positions count each row's real tokens only.
            cache = DynamicCache(config=self.model.config)
            pad_id = self.tokenizer.pad_token_id
            pad_id = self.tokenizer.eos_token_id if pad_id is None else pad_id
            ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded])
            attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
        ids, attention, positions = ids.to(device), attention.to(device), positions.to(device)
        new: list[list[int]] = [[] for _ in encoded]
        active = list(range(rows))  # the request of each live row
        for step in range(first.max_new_tokens):
            logits = self.model(
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
                **with_cache(self.model, cache),
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            tokens = sample_tokens(logits, first.temperature)
            keep = []
            for row, (i, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
                if token in self.eos_ids:
                    continue
                new[i].append(token)
                if not _stopped(self.tokenizer, new[i], first.stop):
                    keep.append(row)
            if not keep or step + 1 == first.max_new_tokens:
                break
            if len(keep) < len(active):
                kept = torch.tensor(keep, device=device)
                cache.batch_select_indices(kept)
                attention, positions, tokens = attention[kept], positions[kept], tokens[kept]
                active = [active[row] for row in keep]
            ids = tokens[:, None]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1
        return new

    def _shared_cache(self, ids: list[int], batch_size: int, device: Any) -> Any:
        """The KV cache of all but the last prompt token, computed once, repeated per row.

        Decoding then runs only the last prompt token per row instead of the whole prompt
        (the prompt is most of the work: ~300 tokens against 160 new ones).
        """
        import torch
        from transformers import DynamicCache

        from teachlab.score.engine import with_cache

        key = tuple(ids)
        if self._prefix is None or self._prefix[0] != key:
            cache = DynamicCache(config=self.model.config)
            with torch.inference_mode():
                self.model(
                    input_ids=torch.tensor([ids[:-1]], device=device),
                    **with_cache(self.model, cache),
                    use_cache=True,
                )
            self._prefix = (key, cache)
        shared = copy.deepcopy(self._prefix[1])
        shared.batch_repeat_interleave(batch_size)
        return shared

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
        pad_id = self.tokenizer.pad_token_id
        pad_id = self.tokenizer.eos_token_id if pad_id is None else pad_id
        # The last prompt token is the "question" whose logits score each option's first token.
        [scores] = loglik_batched(
            self.model,
            ids[:-1],
            [ids[-1:]],
            [candidates],
            pad_id=pad_id,
            batch_size=self.batch_size,
            budget_bytes=CHOICE_BUDGET_BYTES,
        )
        return list(scores.logprobs)

    def close(self) -> None:
        self.model = None
        self._prefix = None
        self.loaded = None  # type: ignore[assignment]
        gc.collect()
