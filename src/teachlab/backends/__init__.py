"""Teacher generation backends behind one interface: transformers (default), OpenAI-compatible
servers, and vLLM. ``make_backend`` builds one from a study's backend name.
"""

from __future__ import annotations

from typing import Any

from teachlab.backends.base import GenerationBackend, GenRequest, cut_at_stop
from teachlab.config import BACKENDS
from teachlab.errors import ConfigError

__all__ = ["BACKENDS", "GenRequest", "GenerationBackend", "cut_at_stop", "make_backend"]


def make_backend(
    kind: str, model_ref: str, adapter: str | None = None, **opts: Any
) -> GenerationBackend:
    """A backend for ``model_ref`` plus the folder a training stage saved (``adapter``): a LoRA
    adapter, or a fully fine-tuned model that the transformers and vllm backends load whole.

    ``opts`` go to the backend: ``batch_size`` (transformers); ``base_url``, ``api_key``,
    ``served_model``, ``concurrency``, ``timeout``, ``max_retries``, ``retries`` (openai);
    vLLM ``LLM`` keyword arguments (vllm).
    """
    if kind == "transformers":
        from teachlab.backends.hf import HFBackend

        return HFBackend(model_ref, adapter, **opts)
    if kind == "openai":
        from teachlab.backends.openai_compat import OpenAIBackend

        # The server loads the adapter (vLLM's runtime LoRA endpoint), or it is refused.
        return OpenAIBackend(model_ref, adapter=adapter, **opts)
    if kind == "vllm":
        from teachlab.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model_ref, adapter, **opts)
    raise ConfigError(f"Unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}.")
