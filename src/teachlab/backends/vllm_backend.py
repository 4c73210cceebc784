"""The vLLM backend (GPU): prefix caching for the shared question prompt, LoRA for the aligned
teacher. vLLM is imported only when this backend is built (``pip install teachlab[gpu]``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from teachlab.backends.base import GenRequest, cut_at_stop
from teachlab.errors import ModelError

VLLM_MISSING = (
    "vLLM is not installed; install the gpu extra (`pip install teachlab[gpu]`) on a CUDA "
    "machine, or use the transformers backend"
)
CHUNK = 64  # requests per llm.generate call, so results stream back in pieces


class VLLMBackend:
    """Generate with ``vllm.LLM``; each request's seed goes into its own SamplingParams, so a
    completion does not depend on which other requests share its batch."""

    def __init__(
        self,
        model_ref: str,
        adapter: str | Path | None = None,
        *,
        max_lora_rank: int = 64,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = 4096,
        **llm_kwargs: Any,
    ) -> None:
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise ModelError(VLLM_MISSING) from exc
        from teachlab.models import fetch, trained_hash, trained_kind

        folder = fetch(model_ref)
        # A fully fine-tuned teacher is served whole; a LoRA adapter goes on each request.
        kind = trained_kind(adapter) if adapter is not None else None
        self.llm = LLM(
            model=str(adapter if kind == "model" else folder),
            tokenizer=str(folder),
            enable_prefix_caching=True,
            enable_lora=kind == "adapter",
            max_lora_rank=max_lora_rank,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            **llm_kwargs,
        )
        self.tokenizer: Any = self.llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            from teachlab.models import PLAIN_CHAT_TEMPLATE

            self.tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        self.lora = None
        self.adapter_hash: str | None = None
        if adapter is not None:
            self.adapter_hash = trained_hash(adapter)
        if kind == "adapter":
            self.lora = LoRARequest("teacher", 1, str(adapter))
        self.name = f"vllm:{model_ref}"

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        from vllm import SamplingParams

        from teachlab.prompts import prompt_token_ids

        for start in range(0, len(requests), CHUNK):
            chunk = requests[start : start + CHUNK]
            # Token ids, not text: vLLM would add a BOS to a prompt whose template has one.
            prompts = [
                {"prompt_token_ids": prompt_token_ids(self.tokenizer, r.prompt)} for r in chunk
            ]
            params = [
                SamplingParams(
                    temperature=r.temperature,
                    top_p=1.0,
                    max_tokens=r.max_new_tokens,
                    seed=r.seed,
                    stop=list(r.stop) or None,
                )
                for r in chunk
            ]
            outputs = self.llm.generate(
                prompts,  # type: ignore[arg-type]
                params,
                lora_request=self.lora,
                use_tqdm=False,
            )
            for request, output in zip(chunk, outputs, strict=True):
                yield request, cut_at_stop(output.outputs[0].text, request.stop)

    def close(self) -> None:
        self.llm = None  # type: ignore[assignment]
        import gc

        gc.collect()
