"""The generation interface every teacher backend implements (transformers, OpenAI, vLLM).

A backend takes already chat-templated prompts and yields completions as they finish.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GenRequest:
    """One completion to produce. ``key`` is the caller's idempotency key, echoed back.

    ``stop``: strings that end the completion; as in the OpenAI API, the completion returned
    stops before the first of them (the stop string itself is not included).
    """

    key: str
    prompt: str
    temperature: float
    max_new_tokens: int
    seed: int
    stop: tuple[str, ...] = ()


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of any stop string (OpenAI semantics)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


@runtime_checkable
class ChoosingBackend(Protocol):
    """A backend that can also rank given continuations by log-probability (transformers)."""

    def choose(self, prompt: str, options: Sequence[str], closing: str = "") -> list[float]:
        """Each option's summed log-probability (followed by ``closing``) after ``prompt``."""
        ...


@runtime_checkable
class GenerationBackend(Protocol):
    name: str

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        """Yield ``(request, completion)`` as each completes (order may differ from input)."""
        ...

    def close(self) -> None: ...
