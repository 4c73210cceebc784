"""What an estimate knows of models and tasks: parameter counts and attention shapes read off
the weights, and the tasks' mean token lengths from the stages' own prompt templates."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from teachlab.config import StudyConfig
from teachlab.errors import ConfigError, DataError, ModelError

CHARS_PER_TOKEN = 4.0  # counting without any tokenizer at hand
SAMPLE = 8  # task examples tokenised per task for the mean lengths
FALLBACK_TOKENIZER = "bundled:gemma-3-270m"  # a 262k vocabulary, near Llama 3's and Gemma's


@dataclass(frozen=True)
class ModelInfo:
    """A model as the estimate sees it: parameters, attention shape, where they came from."""

    ref: str
    params: float
    layers: int = 0  # 0: shape not readable here, attention term omitted
    attn_width: int = 0  # query heads x head dimension
    source: str = ""
    tokenizer: str = ""  # whose tokenizer counted this model's tokens


@dataclass(frozen=True)
class TaskShape:
    """Mean token lengths of one task's prompts and texts, per model role."""

    task: str
    available: int | None  # distinct inputs in the task data (None: data not here)
    source: str  # "task data" or "defaults"
    # teacher side
    question_prompt: float  # the question-drafting prompt (seeds, request, prefill)
    question_block: float  # one tagged question as the teacher writes it
    rationale_prompt: float  # a strategy prompt with one question
    plain_prompt: float  # the erased prompt (rationale pairs, tailored rationales)
    # scaffolded question calls: the passes after the input (target; options when each question
    # has its own), each row reading its own prompt again (0 without the scaffold)
    scaffold_passes: float
    # student side
    special: float  # tokens before any text (BOS)
    description: float
    question: float  # "Question: ...\nAnswer:" (loglik)
    question_cot: float  # the same with "Let's think step by step." (generate, cot, SFT)
    choices: float  # all of an item's choice continuations (the target for free-form items)
    answer: float  # " target"
    shot: float  # one question + answer demonstration
    demo_head: float  # a draft demonstration without its rationale


# ---------------------------------------------------------------- models and tokens


def model_info(ref: str, role: str, size: float | None) -> ModelInfo:
    """Parameters and attention shape from the model's folder here (its safetensors headers
    and config.json, no weights loaded), else its ``[sizes]`` count, else a ConfigError."""
    folder = _local_folder(ref)
    if folder is not None:
        params, source = _weights_params(folder), "safetensors headers"
        shape = _shape(folder)
        if params is None and shape.get("params"):
            params, source = shape["params"], "config.json (gated-MLP decoder formula)"
        if params:
            return ModelInfo(ref, float(params), shape["layers"], shape["width"], source)
    if size:
        return ModelInfo(ref, float(size), source="[sizes] in the experiment config")
    raise ConfigError(
        f"The {role} {ref!r} cannot be read here (not bundled, not a local folder, not in the "
        f"Hugging Face cache); give its parameter count under [sizes] in the experiment config, "
        f"e.g. {role}_params = 7.0e9."
    )


def _local_folder(ref: str) -> Path | None:
    """The model's folder on this machine, without any download: the bundled cache (made here
    from the installed GGUF when missing), a local path, or the Hugging Face cache."""
    from teachlab.models import fetch, parse_ref

    try:
        parsed = parse_ref(ref)
    except ModelError:
        return None
    if parsed.kind in ("bundled", "path"):
        try:
            return fetch(ref)
        except ModelError:
            return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(parsed.name, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and kin): the caller falls back
        return None


def _weights_params(folder: Path) -> int | None:
    """Parameters from the safetensors headers (tied weights are stored, and counted, once)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total or None


def _shape(folder: Path) -> dict[str, Any]:
    """Layers, attention width and a parameter count from config.json (zeros where absent)."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"layers": 0, "width": 0, "params": None}
    cfg = cfg.get("text_config", cfg)
    hidden = int(cfg.get("hidden_size") or 0)
    heads = int(cfg.get("num_attention_heads") or 0)
    layers = int(cfg.get("num_hidden_layers") or 0)
    head_dim = int(cfg.get("head_dim") or (hidden // heads if heads else 0))
    kv = int(cfg.get("num_key_value_heads") or heads)
    inter = int(cfg.get("intermediate_size") or 0)
    vocab = int(cfg.get("vocab_size") or 0)
    params = None
    if hidden and layers and heads and inter and vocab:
        attention = hidden * head_dim * (2 * heads + 2 * kv)
        per_layer = attention + 3 * hidden * inter + 2 * hidden
        embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", True) else 2)
        params = layers * per_layer + embeddings + hidden
    return {"layers": layers, "width": heads * head_dim, "params": params}


class TokenCounter:
    """Counts tokens with a model's tokenizer, or at CHARS_PER_TOKEN characters without one."""

    def __init__(self, tokenizer: Any | None, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name

    def text(self, text: str) -> int:
        if self.tokenizer is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def prompt(self, messages: Sequence[Mapping[str, str]], prefill: str = "") -> int:
        """A chat prompt as the teacher is given it (template, generation cue, prefill)."""
        from teachlab.prompts import prompt_token_ids, render_chat

        if self.tokenizer is None:
            return self.text("\n\n".join(m["content"] for m in messages) + prefill) + 4
        return len(prompt_token_ids(self.tokenizer, render_chat(self.tokenizer, messages, prefill)))

    def special(self) -> int:
        """Tokens a tokenizer puts before any text (BOS for Gemma, none for SmolLM)."""
        if self.tokenizer is None:
            return 1
        with_special = self.tokenizer("x")["input_ids"]
        return max(
            0, len(with_special) - len(self.tokenizer("x", add_special_tokens=False)["input_ids"])
        )


def token_counter(ref: str) -> TokenCounter:
    """The model's own tokenizer where it is here; else the bundled teacher's (a large modern
    vocabulary, close to the big models' counts); else characters / CHARS_PER_TOKEN."""
    for candidate in (ref, FALLBACK_TOKENIZER):
        folder = _local_folder(candidate)
        if folder is None or not any(
            (folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")
        ):
            continue
        try:
            tokenizer = _load_tokenizer(str(folder))
        except (OSError, ValueError):
            continue
        name = candidate if candidate == ref else f"{candidate} (stand-in for {ref})"
        return TokenCounter(tokenizer, name)
    return TokenCounter(None, f"{CHARS_PER_TOKEN:g} characters a token (no tokenizer here)")


@lru_cache(maxsize=4)
def _load_tokenizer(folder: str) -> Any:
    """A tokenizer, with the plain chat template where it has none (cached: the bundled
    teacher's 262k vocabulary takes a second or two to load)."""
    from transformers import AutoTokenizer

    from teachlab.models import PLAIN_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


DEFAULT_SHAPE = {  # stated lengths where a task's data is not here (BIG-bench-like items)
    "question_prompt": 520.0,
    "question_block": 115.0,
    "rationale_prompt": 190.0,
    "plain_prompt": 140.0,
    "scaffold_passes": 1.0,
    "special": 1.0,
    "description": 30.0,
    "question": 100.0,
    "question_cot": 107.0,
    "choices": 12.0,
    "answer": 3.0,
    "shot": 105.0,
    "demo_head": 110.0,
}


def task_shape(
    ref: str, config: StudyConfig, teacher: TokenCounter, student: TokenCounter
) -> TaskShape:
    """Mean token lengths of one task's prompts, from up to SAMPLE of its examples rendered as
    the stages render them; DEFAULT_SHAPE where the task's data is not here."""
    from teachlab import prompts
    from teachlab.drafting import options_appended, shared_labels
    from teachlab.score.prompt import (
        Demo,
        choice_segment,
        demo_segment,
        description_segment,
        probe_segment,
    )
    from teachlab.tasks import make_splits, resolve_task

    try:
        task = resolve_task(ref)
    except DataError:
        shape = {
            **DEFAULT_SHAPE,
            "scaffold_passes": DEFAULT_SHAPE["scaffold_passes"] * config.scaffold,
        }
        return TaskShape(task=ref, available=None, source="defaults", **shape)
    splits = make_splits(task, config.n_seed, config.n_probe, config.n_test, seed=0)
    seeds = [task.examples[i] for i in splits.seed]
    sample = [task.examples[i] for i in (*splits.probe, *splits.test)[:SAMPLE]] or seeds
    per_call = 1 if config.scaffold else config.questions_per_call
    shown = [
        {"input": prompts.question_text(e.input, e.choices), "target": e.target} for e in seeds
    ]
    prefill = prompts.question_prefill(len(seeds)) if config.prefill or config.scaffold else ""
    question_prompt = teacher.prompt(
        prompts.question_messages(task.name, task.description, shown, per_call), prefill
    )
    texts = [prompts.question_text(e.input, e.choices) for e in sample]
    strategies = config.strategies[: config.n_rationales]

    def mean(values: Iterable[float]) -> float:
        items = list(values)
        return sum(items) / len(items)

    return TaskShape(
        task=ref,
        available=len({e.input for e in task.examples}),
        source="task data",
        question_prompt=float(question_prompt),
        question_block=mean(
            teacher.text(prompts.question_block(len(seeds) + 1, t, e.target))
            for t, e in zip(texts, sample, strict=True)
        ),
        rationale_prompt=mean(
            teacher.prompt(prompts.rationale_messages(s, task.name, task.description, t))
            for t in texts
            for s in strategies
        ),
        plain_prompt=mean(teacher.prompt(prompts.plain_messages(t)) for t in texts),
        scaffold_passes=float(
            config.scaffold
            and 1 + (options_appended(task, splits.seed) and not shared_labels(task))
        ),
        special=float(student.special()),
        description=float(student.text(description_segment(task.description))),
        question=mean(student.text(probe_segment(e.input, "loglik")) for e in sample),
        question_cot=mean(student.text(probe_segment(e.input, "generate")) for e in sample),
        choices=mean(
            sum(student.text(choice_segment(c)) for c in (e.choices or (e.target,))) for e in sample
        ),
        answer=mean(student.text(choice_segment(e.target)) for e in sample),
        shot=mean(student.text(demo_segment(Demo(e.input, e.target))) for e in sample),
        demo_head=mean(student.text(demo_segment(Demo(e.input, e.target, ""))) for e in sample),
    )


# ---------------------------------------------------------------- FLOPs of a model


def attention_flops(m: ModelInfo, new: float, context: float) -> float:
    """Forward FLOPs of attention for ``new`` tokens after ``context`` cached ones: each token's
    scores and weighted sum over its causal context, 4 x layers x width per (query, key)."""
    pairs = new * context + new * (new + 1) / 2
    return 4.0 * m.layers * m.attn_width * pairs


def forward_flops(m: ModelInfo, new: float, context: float = 0.0) -> float:
    return 2.0 * m.params * new + attention_flops(m, new, context)


def trained_flops(m: ModelInfo, length: float, lora: bool) -> float:
    """Forward + backward of one sequence: 6 P a token for full fine-tuning (weight and input
    gradients), 4 P with LoRA (frozen weights need input gradients only); attention x 3."""
    per_token = (4.0 if lora else 6.0) * m.params
    return per_token * length + 3.0 * attention_flops(m, length, 0.0)
