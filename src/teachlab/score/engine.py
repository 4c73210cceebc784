"""Shared-prefix key/value caches, batching, and greedy generation (fast and reference).

Layout of a batch row: ``[prefix | padding | prompt]``. Padding sits between the cached prefix
and the prompt, masked out, with explicit position ids, so every row's last prompt token is at
the same index and one prefix cache serves every row.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of key/value cache one token takes in one batch row (for memory budgeting)."""
    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * heads * head_dim * itemsize


def select_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A new cache holding ``rows`` of ``cache`` (repeats allowed); ``cache`` is untouched.

    The layers' ``batch_select_indices`` re-bind their tensors rather than writing in place,
    so shallow copies of the layers are enough.
    """
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in new.layers:
        layer.batch_select_indices(rows)
    return new


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """The forward keyword argument that hands ``cache`` to ``model``.

    transformers 5 renamed ``past_key_values`` to ``cache`` (the old name is deprecated and
    due to go); the name is read off the model's own forward, so either release works.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cls: Any = type(base)
    return {_cache_keyword(cls): cache}


@functools.cache
def _cache_keyword(cls: Any) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def encode_prefix(model: Any, prefix: Sequence[int]) -> Any:
    """The key/value cache of the shared prefix (batch of one); an empty cache if no prefix."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    if prefix:
        ids = torch.tensor([list(prefix)], device=device_of(model))
        model(input_ids=ids, **with_cache(model, cache), use_cache=True, logits_to_keep=1)
    return cache


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    context: int,
    budget_bytes: int,
    kv_bytes: int,
    extra: int = 0,
) -> list[list[int]]:
    """Length-bucketed batches of positions: longest first, so each batch pads little, and no
    more rows than fit the cache budget at ``context + longest + extra`` tokens per row."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    while order:
        tokens = context + lengths[order[0]] + extra
        rows = max(1, min(batch_size, budget_bytes // max(1, tokens * kv_bytes)))
        batches.append(order[:rows])
        order = order[rows:]
    return batches


def suffix_batch(
    seqs: Sequence[Sequence[int]], context: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, attention mask (context included) and position ids of suffixes padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    # Real tokens continue right after the context; padded slots get any valid position.
    positions = (context + mask.cumsum(-1) - 1).clamp(min=0)
    attention = torch.cat([torch.ones((len(seqs), context), dtype=torch.long), mask], dim=1)
    return ids.to(device), attention.to(device), positions.to(device)


@torch.inference_mode()
def generate_batched(
    model: Any,
    prefix: Sequence[int],
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_ids: Collection[int],
    max_new_tokens: int,
    stopped: Callable[[Sequence[int]], bool],
    batch_size: int,
    budget_bytes: int,
) -> list[list[int]]:
    """Greedy continuations of every prompt after the shared ``prefix`` (new tokens only).

    A row stops at an end-of-sequence token (not kept) or once ``stopped(its new tokens)``;
    finished rows leave the batch so the rest runs on fewer rows.
    """
    device = device_of(model)
    kv_bytes = kv_bytes_per_token(model)
    base = encode_prefix(model, prefix)
    context = len(prefix)
    outputs: list[list[int]] = [[] for _ in prompts]
    lengths = [len(p) for p in prompts]
    for batch in plan_batches(lengths, batch_size, context, budget_bytes, kv_bytes, max_new_tokens):
        rows = torch.zeros(len(batch), dtype=torch.long, device=device)
        cache = select_rows(base, rows)
        ids, attention, positions = suffix_batch(
            [prompts[i] for i in batch], context, pad_id, device
        )
        active = list(batch)  # probe position of each live row
        for step in range(max_new_tokens):
            out = model(
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
                **with_cache(model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
            best = out.logits[:, -1, :].argmax(-1)
            keep = []
            for row, (i, token) in enumerate(zip(active, best.tolist(), strict=True)):
                if token in eos_ids:
                    continue
                outputs[i].append(token)
                if not stopped(outputs[i]):
                    keep.append(row)
            if not keep or step + 1 == max_new_tokens:
                break
            if len(keep) < len(active):
                kept = torch.tensor(keep, device=device)
                cache.batch_select_indices(kept)
                attention, positions, best = attention[kept], positions[kept], best[kept]
                active = [active[row] for row in keep]
            ids = best[:, None]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1
    return outputs


@torch.inference_mode()
def generate_reference(
    model: Any,
    tokenizer: Any,
    ids: Sequence[int],
    *,
    pad_id: int,
    eos_ids: Collection[int],
    max_new_tokens: int,
    stop_strings: Sequence[str],
) -> list[int]:
    """Plain ``model.generate`` on the full prompt, greedy; returns the new tokens."""
    inputs = torch.tensor([list(ids)], device=device_of(model))
    out = model.generate(
        input_ids=inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=max_new_tokens,
        # Pure greedy argmax whatever the model's generation_config says, as in the fast path.
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
        stop_strings=list(stop_strings),
        tokenizer=tokenizer,
    )
    return out[0, len(ids) :].tolist()
