"""A study's configuration: one dataclass whose field help drives the form, the CLI and docs.

Defaults are tiny so a whole round runs on a 2-core CPU; the paper's values are in each
field's help. ``validate()`` raises ConfigError with what, why and how to fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any

from teachlab.errors import ConfigError

# The reasoning strategies a rationale can be drafted with (their prompts: teachlab.prompts).
STRATEGY_NAMES = ("expert", "rules", "plain", "eliminate")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
SEED_MAX = 2**32 - 1  # numpy, torch and transformers take seeds from 0 to 2**32 - 1
SCORERS = ("loglik", "generate")
PAIR_RULES = ("arte", "margin", "baseline", "ranked")
BACKENDS = ("transformers", "openai", "vllm")
PROBE_SELECTIONS = ("random", "irt")


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class StudyConfig:
    # sizes
    n_questions: int = _f(8, "Questions to draft per round (paper: 250 per task).", min=1, max=5000)
    n_rationales: int = _f(2, "Rationales per question, one per strategy (paper: 4).", min=1, max=8)
    n_seed: int = _f(3, "Seed questions shown to the teacher (paper: 3).", min=1, max=8)
    n_probe: int = _f(16, "Probe items the student is scored on (paper: 40).", min=2, max=500)
    n_test: int = _f(40, "Held-out test items for evaluation.", min=2, max=5000)
    n_tailored: int = _f(
        8, "Tailored examples regenerated for distillation (paper: 6,750).", min=1, max=100000
    )
    questions_per_call: int = _f(
        5, "Questions asked for per teacher call (paper: 5).", min=1, max=10
    )
    # generation
    question_temperature: float = _f(
        0.7,
        "Sampling temperature for questions (paper: 1.0; 0.7 parses better on tiny teachers).",
        min=0.0,
        max=2.0,
    )
    rationale_temperature: float = _f(
        0.7, "Sampling temperature for draft rationales.", min=0.0, max=2.0
    )
    max_new_tokens: int = _f(160, "Most tokens the teacher may write per call.", min=16, max=4096)
    prefill: bool = _f(True, "Prefill the teacher's turn with the start of the expected format.")
    scaffold: bool = _f(
        False,
        "Draft one question per call, field by field: TeachLab writes the tags (and the "
        "'Options:' cue where each question has its own options), the teacher fills in the "
        "input, the options and the target, each ended at its closing tag. For tiny teachers "
        "that lose the format; questions_per_call is then 1.",
    )
    force_answer: bool = _f(
        True,
        "When a rationale ends without <ans>…</ans>, append 'So the answer is <ans>' and let "
        "the teacher finish it (flagged 'forced-answer'): with the question's options, the one "
        "it finds likeliest there (transformers backend; also flagged 'answer-chosen'), else "
        "greedily.",
    )
    strategies: tuple[str, ...] = _f(
        ("expert", "rules", "plain", "eliminate"),
        "Reasoning strategies for rationales (names of the strategy prompts).",
    )
    # scoring
    scorer: str = _f(
        "loglik",
        "How the student scores a draft: loglik (fast) or generate (ARTE's).",
        choices=SCORERS,
    )
    probe_selection: str = _f(
        "random",
        "Probe items: random, or the most discriminative by IRT 2PL.",
        choices=PROBE_SELECTIONS,
    )
    # pairs
    pair_rule: str = _f("arte", "How pairs are built from scores.", choices=PAIR_RULES)
    pair_metric: str = _f(
        "accuracy",
        "Score pairs are built on: probe accuracy (ARTE), or the mean log-prob margin of the gold "
        "answer (informative where a tiny student's accuracy ties).",
        choices=("accuracy", "margin"),
    )
    label_balanced: bool = _f(
        False, "Only pair drafts with the same answer label (no 'always answer X')."
    )
    quantile: float = _f(
        0.25, "ARTE: chosen from the top and rejected from the bottom quantile.", min=0.05, max=0.5
    )
    min_margin: float = _f(0.3, "margin rule: the least score gap for a pair.", min=0.0, max=1.0)
    max_pairs_per_prompt: int = _f(
        8, "margin/ranked rules: at most this many pairs per prompt.", min=1, max=100
    )
    use_unreviewed: bool = _f(
        True,
        "Train on automatic pairs no one has reviewed yet (approved and human pairs always count).",
    )
    # alignment (DPO)
    dpo_lr: float = _f(
        5e-5, "DPO learning rate (paper: 1e-7 full fine-tuning; LoRA needs more).", min=0.0, max=1.0
    )
    dpo_beta: float = _f(0.1, "DPO beta.", min=0.0, max=10.0)
    dpo_epochs: float = _f(1.0, "DPO epochs (paper: 1).", min=0.01, max=20)
    dpo_batch_size: int = _f(4, "DPO batch size (paper: 16).", min=1, max=256)
    dpo_max_steps: int = _f(
        4, "Stop DPO after this many steps (0 = whole epochs).", min=0, max=100000
    )
    # distillation (SFT)
    sft_lr: float = _f(
        2e-4, "SFT learning rate (paper: 2e-5 full fine-tuning; LoRA needs more).", min=0.0, max=1.0
    )
    sft_epochs: float = _f(1.0, "SFT epochs (paper: 1).", min=0.01, max=20)
    sft_batch_size: int = _f(4, "SFT batch size.", min=1, max=256)
    sft_max_steps: int = _f(
        4, "Stop SFT after this many steps (0 = whole epochs).", min=0, max=100000
    )
    lora: bool = _f(True, "Train a LoRA adapter (peft); off = full fine-tuning.")
    lora_r: int = _f(8, "LoRA rank.", min=1, max=256)
    save_steps: int = _f(2, "Checkpoint every this many training steps.", min=1, max=100000)
    num_processes: int = _f(
        1,
        "Train (align, distil) in this many processes through accelerate launch (DDP; one per "
        "GPU, or gloo on CPU); the batch sizes must be multiples of it.",
        min=1,
        max=64,
    )
    accelerate_config: str = _f(
        "",
        "An accelerate config file (FSDP, DeepSpeed ZeRO, several GPUs) for align and distil; "
        "its num_processes wins over the setting. Empty: none.",
    )
    gradient_checkpointing: bool = _f(
        False, "Recompute activations in the backward pass: less GPU memory, slower steps."
    )
    load_in_4bit: bool = _f(
        False,
        "QLoRA: hold the frozen base model in 4 bits while training LoRA adapters (needs a CUDA "
        "GPU and the bitsandbytes package; with lora on only).",
    )
    # evaluation
    eval_shots: int = _f(3, "Few-shot demonstrations in the few-shot evaluation.", min=0, max=8)
    bootstrap: int = _f(1000, "Bootstrap resamples for confidence intervals.", min=100, max=100000)
    lm_eval_tasks: tuple[str, ...] = _f(
        (),
        "lm-evaluation-harness tasks the evaluate stage also runs on the student before and "
        "after distillation, separated by commas: registered names (e.g. arc_easy; offline only "
        "when its dataset is cached) or paths to task YAML files (absolute paths are safest). "
        "Each result is stored as an evaluation in mode lm-eval:<task>. Needs the eval extra "
        "(pip install -e '.[eval]'). Empty: none.",
    )

    def validate(self) -> StudyConfig:
        for f in fields(self):
            meta = f.metadata
            value = coerce(f, getattr(self, f.name))
            setattr(self, f.name, value)
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(
                    f"{f.name}={value!r} is not valid; choose one of {', '.join(meta['choices'])}."
                )
            if "min" in meta and not meta["min"] <= value <= meta["max"]:
                raise ConfigError(
                    f"{f.name}={value!r} is out of range; use a value from {meta['min']} to "
                    f"{meta['max']} ({meta['help']})"
                )
        if not self.strategies:
            raise ConfigError("strategies is empty; name at least one reasoning strategy.")
        unknown = [name for name in self.strategies if name not in STRATEGY_NAMES]
        if unknown:
            raise ConfigError(
                f"strategies: {', '.join(map(repr, unknown))} is not a reasoning strategy; "
                f"choose from {', '.join(STRATEGY_NAMES)}."
            )
        if len(set(self.strategies)) < len(self.strategies):
            raise ConfigError("strategies names a strategy twice; name each one once.")
        for name in ("dpo_batch_size", "sft_batch_size"):
            if getattr(self, name) % self.num_processes:
                raise ConfigError(
                    f"{name}={getattr(self, name)} does not split over num_processes="
                    f"{self.num_processes}; use a multiple of {self.num_processes}."
                )
        if self.load_in_4bit and not self.lora:
            raise ConfigError(
                "load_in_4bit trains LoRA adapters on a 4-bit base (QLoRA); turn lora on, or "
                "load_in_4bit off for full fine-tuning."
            )
        if self.n_rationales > len(self.strategies):
            raise ConfigError(
                f"n_rationales={self.n_rationales} but only {len(self.strategies)} strategies; "
                "add strategies or lower n_rationales (one rationale per strategy)."
            )
        return self

    @property
    def score_meaning(self) -> str:
        """What a draft's score (and a pair's chosen/rejected rating) is in this study."""
        if self.pair_metric == "margin":
            return "the mean log-prob margin of the gold answer over the others, on the probes"
        return "the student's accuracy on the probes with the draft as its demonstration"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["strategies"] = list(self.strategies)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> StudyConfig:
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(
                f"Study settings must be a mapping of setting names to values, not "
                f"{type(data).__name__} {data!r:.60}; for example {{'n_questions': 16}}."
            )
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(repr(k) if not isinstance(k, str) else k for k in set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown study setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}."
            )
        try:
            config = cls(**data)
        except TypeError as exc:
            raise ConfigError(f"Bad study settings: {exc}") from exc
        return config.validate()

    @classmethod
    def parse(cls, key: str, text: str) -> Any:
        """One setting typed from text (``--set key=value``), with the field's own checks."""
        by_name = {f.name: f for f in fields(cls)}
        if key not in by_name:
            raise ConfigError(
                f"Unknown study setting {key!r}; known: {', '.join(sorted(by_name))}."
            )
        return coerce(by_name[key], text)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


def _kind(f: Field[Any]) -> type:
    """A setting's type, read off its default (every setting has one)."""
    if f.default is not MISSING:
        return type(f.default)
    factory: Any = f.default_factory
    return type(factory())


def coerce(f: Field[Any], value: Any) -> Any:
    """``value`` as the setting's type, from its own type or from text; ConfigError naming the
    setting otherwise (no silent guesses: "maybe" is not a boolean, "expert" is one strategy)."""
    kind, name = _kind(f), f.name
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ConfigError(
            f"{name}={value!r} is not true or false; use true/false (or yes/no, on/off, 1/0)."
        )
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,18}\s*", value):
            return int(value)
        raise ConfigError(f"{name}={value!r} is not a whole number; give one like {f.default!r}.")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} is not a number; give one like {f.default!r}.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name}={value!r} is not a number; give one like {f.default!r}."
            ) from None
        if not math.isfinite(number):
            raise ConfigError(
                f"{name}={value!r} is not a finite number; give one like {f.default!r}."
            )
        return number
    if kind is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(
                f"{name}={value!r}: give names separated by commas, e.g. expert,rules."
            )
        return tuple(i.strip() for i in items if i.strip())
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} is not text; give one of the named choices.")
        return value.strip()
    return value


def check_seed(seed: Any) -> int:
    """A study seed: a whole number from 0 to 2**32 - 1 (what numpy, torch and transformers take)."""
    if isinstance(seed, str) and re.fullmatch(r"\s*\d{1,10}\s*", seed):
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"Seed {seed!r} is not valid; use a whole number from 0 to {SEED_MAX}.")
    return seed
