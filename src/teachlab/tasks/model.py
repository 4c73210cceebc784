"""The task data model: a task is a named, immutable tuple of examples.

Every source (BIG-bench, uploaded JSONL/CSV, a Hugging Face dataset) is turned into these.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import cached_property


def parse_number(text: str) -> float | None:
    """The finite number ``text`` spells (``"1,024"`` and ``" -3.5 "`` included), else None."""
    try:
        value = float(text.strip().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Example:
    """One question and its answer; ``choices`` is empty for free-form tasks.

    For multiple choice, ``target`` is one of ``choices``.
    """

    input: str
    target: str
    choices: tuple[str, ...] = ()

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)


@dataclass(frozen=True)
class Task:
    """A named set of examples from one source (``bigbench:x``, ``file:...``, ``upload:x``...)."""

    name: str
    description: str
    examples: tuple[Example, ...]
    source: str
    prefix: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def is_multiple_choice(self) -> bool:
        """True when every example offers choices."""
        return bool(self.examples) and all(e.choices for e in self.examples)

    @property
    def chance_rate(self) -> float | None:
        """Mean of 1/len(choices) over the multiple-choice examples; None for free-form tasks."""
        mc = [e for e in self.examples if e.choices]
        if not mc:
            return None
        return sum(1 / len(e.choices) for e in mc) / len(mc)

    @cached_property
    def is_numeric(self) -> bool:
        """True for a free-form task whose every target is a number (answers are then checked
        as numbers)."""
        return (
            bool(self.examples)
            and not any(e.choices for e in self.examples)
            and all(parse_number(e.target) is not None for e in self.examples)
        )

    def target_is_valid(self, target: str, choices: tuple[str, ...] | list[str] = ()) -> bool:
        """Whether ``target`` is an acceptable answer form for this task (not whether it is right).

        Multiple choice: it must be one of ``choices``. Numeric tasks: it must parse as a number.
        Other free-form tasks: it must be non-blank.
        """
        if choices:
            return target in choices
        if self.is_numeric:
            return parse_number(target) is not None
        return bool(target.strip())

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["examples"] = [
            {"input": e.input, "target": e.target, "choices": list(e.choices)}
            for e in self.examples
        ]
        return data

    def fingerprint(self) -> str:
        """sha256 of a canonical JSON form of the task (name, description, source, prefix,
        examples in order); equal tasks have equal fingerprints."""
        canonical = json.dumps(
            self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
