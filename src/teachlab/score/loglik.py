"""Log-likelihoods of candidate continuations (a probe's choices) after a shared prefix.

The fast path encodes the prefix once, then each question once, and each candidate's tokens
once, batching probes; the reference runs one plain forward pass per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from teachlab.decoding import (
    device_of,
    encode_prefix,
    kv_bytes_per_token,
    plan_batches,
    select_rows,
    suffix_batch,
    with_cache,
)


@dataclass
class CandidateScores:
    """Log-likelihoods of one probe's candidate continuations (its choices, or its target)."""

    candidates: list[list[int]]
    logprobs: list[float] = field(default_factory=list)  # sum of log p over each candidate
    greedy_ids: list[list[int]] = field(default_factory=list)  # teacher-forced argmax tokens


def tree_mask_supported(model: Any) -> bool:
    """Whether a custom 4D mask gives exact attention: SDPA and full attention in every layer
    (sliding-window layers keep a truncated cache and build their own masks)."""
    cfg = model.config.get_text_config()
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    layer_types = getattr(cfg, "layer_types", None) or ()
    if any(kind != "full_attention" for kind in layer_types):
        return False
    return not (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True))


@torch.inference_mode()
def loglik_batched(
    model: Any,
    prefix: Sequence[int],
    questions: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    pad_id: int,
    batch_size: int,
    budget_bytes: int,
    tree: bool | None = None,
) -> list[CandidateScores]:
    """Log-likelihood of every candidate continuation of every question after ``prefix``.

    ``tree`` (default: when the model supports it) packs a question and all its candidates
    in one row with a prefix-tree mask, one forward pass per batch; otherwise two stages run:
    questions first, then the candidates as rows over the (prefix + question) cache.
    """
    results = [CandidateScores([list(c) for c in cands]) for cands in candidates]
    base = encode_prefix(model, prefix)
    run = _tree if (tree_mask_supported(model) if tree is None else tree) else _two_stage
    run(model, base, len(prefix), questions, results, pad_id, batch_size, budget_bytes)
    return results


def _gather(
    logprobs: torch.Tensor, flat_rows: list[int], targets: list[int]
) -> tuple[list[float], list[int]]:
    """Log-probs of ``targets`` at ``flat_rows`` of a (positions, vocab) tensor, and argmaxes."""
    rows = torch.tensor(flat_rows, device=logprobs.device)
    picked = logprobs[rows, torch.tensor(targets, device=logprobs.device)]
    return picked.tolist(), logprobs.argmax(-1)[rows].tolist()


@dataclass
class _PackedRow:
    """One probe packed as ``question | trie of its candidates' tokens``."""

    ids: list[int]
    positions: list[int]
    visible: torch.Tensor  # (len, len) bool: which of the row's tokens each token attends to
    scored: list[tuple[int, int, int]]  # (column, target token, candidate) per scored token


def _pack(question: Sequence[int], candidates: list[list[int]], context: int) -> _PackedRow:
    """Candidates' input tokens (all but their last) are laid out as a prefix tree after the
    question: choices that start alike ("05/01/2021", "05/09/2021") share their common tokens.
    A tree token attends to the prefix, the question and its own ancestors only, and sits at
    the position it would have right after the question, so each candidate is scored exactly
    as if it were the only continuation."""
    end = len(question)
    ids, positions = list(question), list(range(context, context + end))
    parents: list[int | None] = []  # per tree token: the column of its parent, None = question
    node: dict[tuple[int, ...], int] = {}
    scored: list[tuple[int, int, int]] = []
    for j, cand in enumerate(candidates):
        scored.append((end - 1, cand[0], j))
        for k in range(1, len(cand)):
            key = tuple(cand[:k])
            if key not in node:
                node[key] = len(ids)
                ids.append(cand[k - 1])
                positions.append(context + end + k - 1)
                parents.append(node[key[:-1]] if k > 1 else None)
            scored.append((node[key], cand[k], j))
    size = len(ids)
    visible = torch.zeros((size, size), dtype=torch.bool)
    visible[:end, :end] = torch.ones((end, end), dtype=torch.bool).tril()
    visible[end:, :end] = True
    for col, parent in enumerate(parents, start=end):
        if parent is not None:
            visible[col, end:] = visible[parent, end:]
        visible[col, col] = True
    return _PackedRow(ids, positions, visible, scored)


def _tree(
    model: Any,
    base: Any,
    context: int,
    questions: Sequence[Sequence[int]],
    results: list[CandidateScores],
    pad_id: int,
    batch_size: int,
    budget_bytes: int,
) -> None:
    """One row per probe (see ``_pack``), one forward pass per batch of rows."""
    device = device_of(model)
    packed = [_pack(q, r.candidates, context) for q, r in zip(questions, results, strict=True)]
    lengths = [len(p.ids) for p in packed]
    kv_bytes = kv_bytes_per_token(model)
    batches = plan_batches(
        lengths, batch_size, budget_bytes=budget_bytes, context=context, kv_bytes=kv_bytes
    )
    for batch in batches:
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        # Padded queries see themselves only, so no attention row is empty (NaN-free).
        visible = torch.eye(width, dtype=torch.bool).repeat(len(batch), 1, 1)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, i in enumerate(batch):
            p = packed[i]
            n = len(p.ids)
            ids[row, :n] = torch.tensor(p.ids)
            positions[row, :n] = torch.tensor(p.positions)
            visible[row, :n, :n] = p.visible
            keep[row, [col for col, _, _ in p.scored]] = True
        mask = torch.cat([torch.ones((len(batch), width, context), dtype=torch.bool), visible], 2)
        rows = torch.zeros(len(batch), dtype=torch.long, device=device)
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask[:, None].to(device),
            position_ids=positions.to(device),
            **with_cache(model, select_rows(base, rows)),
            use_cache=True,
            # Logits only where a token is scored, flattened in row-major order.
            logits_to_keep=keep.to(device),
        )
        flat = torch.full((len(batch), width), -1, dtype=torch.long)
        flat[keep] = torch.arange(int(keep.sum()))
        entries = [
            (row, i, col, t, j) for row, i in enumerate(batch) for col, t, j in packed[i].scored
        ]
        logprobs = out.logits.float().log_softmax(-1)
        values, best = _gather(
            logprobs, [int(flat[r, c]) for r, _, c, _, _ in entries], [t for *_, t, _ in entries]
        )
        for (_, i, _, _, j), value, token in zip(entries, values, best, strict=True):
            result = results[i]
            if j == len(result.logprobs):  # the candidate's first token opens its entry
                result.logprobs.append(value)
                result.greedy_ids.append([token])
            else:
                result.logprobs[j] += value
                result.greedy_ids[j].append(token)


def _two_stage(
    model: Any,
    base: Any,
    context: int,
    questions: Sequence[Sequence[int]],
    results: list[CandidateScores],
    pad_id: int,
    batch_size: int,
    budget_bytes: int,
) -> None:
    """Stage 1 runs each batch of questions once over the prefix cache; its last logits score
    every candidate's first token. Stage 2 runs only candidates longer than one token, as rows
    over the (prefix + question) cache. Works with any attention implementation and cache."""
    device = device_of(model)
    kv_bytes = kv_bytes_per_token(model)
    longest = max(len(c) for r in results for c in r.candidates)
    lengths = [len(q) for q in questions]
    batches = plan_batches(
        lengths, batch_size, budget_bytes=budget_bytes, context=context, kv_bytes=kv_bytes
    )
    for batch in batches:
        rows = torch.zeros(len(batch), dtype=torch.long, device=device)
        cache = select_rows(base, rows)
        ids, attention, positions = suffix_batch(
            [questions[i] for i in batch], context, pad_id, device
        )
        out = model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            **with_cache(model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        first = out.logits[:, -1, :].float().log_softmax(-1)
        pairs = [(row, c[0]) for row, i in enumerate(batch) for c in results[i].candidates]
        values, best = _gather(first, [r for r, _ in pairs], [t for _, t in pairs])
        k = 0
        for i in batch:
            for _ in results[i].candidates:
                results[i].logprobs.append(values[k])
                results[i].greedy_ids.append([best[k]])
                k += 1
        long_rows = [
            (row, i, j)
            for row, i in enumerate(batch)
            for j, c in enumerate(results[i].candidates)
            if len(c) > 1
        ]
        per_chunk = max(1, budget_bytes // ((attention.shape[1] + longest) * kv_bytes))
        question_len = attention[:, context:].sum(-1)
        for start in range(0, len(long_rows), per_chunk):
            chunk = long_rows[start : start + per_chunk]
            _continuations(model, cache, attention, question_len, context, chunk, results, pad_id)


def _continuations(
    model: Any,
    cache: Any,
    attention: torch.Tensor,
    question_len: torch.Tensor,
    context: int,
    chunk: Sequence[tuple[int, int, int]],
    results: list[CandidateScores],
    pad_id: int,
) -> None:
    device = attention.device
    rows = torch.tensor([r for r, _, _ in chunk], device=device)
    conts = [results[i].candidates[j] for _, i, j in chunk]
    width = max(len(c) for c in conts) - 1
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    keep = torch.zeros((len(chunk), width), dtype=torch.bool)
    for n, cont in enumerate(conts):
        ids[n, : len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
        keep[n, : len(cont) - 1] = True
    keep = keep.to(device)
    positions = context + question_len[rows][:, None] + torch.arange(width, device=device)[None]
    out = model(
        input_ids=ids.to(device),
        attention_mask=torch.cat([attention[rows], keep.long()], dim=1),
        position_ids=positions,
        **with_cache(model, select_rows(cache, rows)),
        use_cache=True,
        logits_to_keep=keep,
    )
    logprobs = out.logits.float().log_softmax(-1)
    targets = [t for c in conts for t in c[1:]]
    values, best = _gather(logprobs, list(range(len(targets))), targets)
    k = 0
    for (_, i, j), cont in zip(chunk, conts, strict=True):
        n = len(cont) - 1
        results[i].logprobs[j] += sum(values[k : k + n])
        results[i].greedy_ids[j].extend(best[k : k + n])
        k += n


@torch.inference_mode()
def loglik_reference(
    model: Any, full_ids: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]
) -> CandidateScores:
    """One plain forward pass per candidate over its full prompt; no cache, no batching."""
    device = device_of(model)
    result = CandidateScores([list(c) for c in candidates])
    for ids, cand in zip(full_ids, candidates, strict=True):
        logits = model(input_ids=torch.tensor([list(ids)], device=device)).logits[0].float()
        start = len(ids) - len(cand)
        logprobs = logits[start - 1 : len(ids) - 1].log_softmax(-1)
        target = torch.tensor(list(cand), device=device)
        result.logprobs.append(logprobs.gather(1, target[:, None]).sum().item())
        result.greedy_ids.append(logprobs.argmax(-1).tolist())
    return result
