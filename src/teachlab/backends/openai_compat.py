"""Any OpenAI-compatible server (vLLM's, llama.cpp's, hosted APIs) through the ``openai`` client.

Prompts are already chat-templated text, so we call the completions endpoint, several requests
at once from a thread pool, retrying connection errors, timeouts, 429 and 5xx with back-off.
For llama.cpp's servers (`llama-server`, `python -m llama_cpp.server`) the server's own sampling
defaults are switched off, so temperature 0 is greedy and the stored sampling is what ran.

A round's LoRA adapter (the aligned teacher) is loaded into the server through vLLM's runtime
LoRA endpoint (``POST /v1/load_lora_adapter``; `vllm serve BASE --enable-lora` with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) and addressed by a name made from its hash. A server
that cannot load adapters (llama.cpp's) is refused before any prompt is sent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from teachlab.backends.base import GenRequest, cut_at_stop
from teachlab.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000/v1"
PROBE_TIMEOUT_S = 10.0
# llama.cpp samples with top_k=40 and min_p=0.05 unless told otherwise, and llama-cpp-python's
# server adds repeat_penalty=1.1, so even temperature 0 is not greedy there. Only llama.cpp
# servers get these fields: hosted APIs refuse fields they do not know.
LLAMA_CPP_NEUTRAL: dict[str, Any] = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
LLAMA_CPP_OWNERS = ("llamacpp", "me")  # /models `owned_by` of llama-server, llama-cpp-python


def trained_adapter_hash(folder: Path) -> str:
    """The hash of the LoRA adapter in ``folder``; a fully fine-tuned model is refused (a running
    server cannot take one on), as is a folder that holds neither."""
    from teachlab.models import trained_hash, trained_kind

    if trained_kind(folder) == "model":
        raise ModelError(
            f"The teacher in {folder} was fully fine-tuned (lora off): a running server cannot "
            f"load it as an adapter. Serve that folder itself (`vllm serve {folder}`) at "
            "OPENAI_BASE_URL, or use the transformers or vllm backend."
        )
    return trained_hash(folder)


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError | openai.APITimeoutError | openai.RateLimitError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


class OpenAIBackend:
    """Completions from a server at ``base_url`` (default ``OPENAI_BASE_URL``).

    ``retries`` are ours, on top of the client's own ``max_retries``: after the client gives
    up we wait ``backoff * 2**attempt`` seconds and try again, at most ``retries`` times.
    The server is probed (``GET /models``) at construction, so a wrong URL fails before work.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        served_model: str | None = None,
        adapter: str | Path | None = None,
        concurrency: int = 4,
        timeout: float = 120.0,
        max_retries: int = 2,
        retries: int = 2,
        backoff: float = 1.0,
    ) -> None:
        import openai

        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_URL
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # local servers need none
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries
        )
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.extra_body: dict[str, Any] = {}  # set by the probe for llama.cpp servers
        self.api_key = key
        self.adapter_hash = trained_adapter_hash(Path(adapter)) if adapter is not None else None
        self.model = self._probe(served_model or model)
        if adapter is not None:
            self.model = self._load_adapter(Path(adapter), self.adapter_hash)  # type: ignore[arg-type]
        self.name = f"openai:{self.model}@{self.base_url}"
        # Tokens as the server reports them (its usage block; zero when it sends none).
        self.tokens = {"prompt": 0, "generated": 0}
        self._count = threading.Lock()

    def _probe(self, model: str) -> str:
        """Check the server answers; pick its only model when ours is not among its names."""
        import openai

        try:
            listed = self.client.with_options(
                timeout=min(PROBE_TIMEOUT_S, self.client.timeout or PROBE_TIMEOUT_S),  # type: ignore[arg-type,type-var]
                max_retries=0,
            ).models.list()
            ids = [m.id for m in listed.data]
            owners = {getattr(m, "owned_by", None) for m in listed.data}
        except openai.AuthenticationError as exc:
            raise ModelError(
                f"The OpenAI-compatible server at {self.base_url} rejected the API key "
                f"({exc.status_code}); set OPENAI_API_KEY to a valid key."
            ) from exc
        except openai.NotFoundError:
            return model  # a server without /models; the first completion will tell
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            raise ModelError(
                f"No OpenAI-compatible server answered at {self.base_url} ({type(exc).__name__}); "
                "start one (e.g. `vllm serve MODEL` or llama.cpp's `llama-server -m FILE`) or "
                "set OPENAI_BASE_URL (and OPENAI_API_KEY) to a server that is up, or use the "
                "transformers backend."
            ) from exc
        if owners & set(LLAMA_CPP_OWNERS):
            self.extra_body = dict(LLAMA_CPP_NEUTRAL)
        if model not in ids and len(ids) == 1:
            log.info("server %s serves only %r; using it for %r", self.base_url, ids[0], model)
            return ids[0]
        return model

    def _load_adapter(self, folder: Path, digest: str) -> str:
        """Load the LoRA adapter in ``folder`` into the server; the name it is served under."""
        import httpx

        name = f"teachlab-{digest[:16]}"
        try:
            response = httpx.post(
                f"{self.base_url.rstrip('/')}/load_lora_adapter",
                json={"lora_name": name, "lora_path": str(folder.resolve())},
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=PROBE_TIMEOUT_S * 6,
            )
        except httpx.HTTPError as exc:
            raise ModelError(
                f"The server at {self.base_url} did not answer the request to load adapter "
                f"{folder} ({type(exc).__name__}); check that it is up, then resume the stage."
            ) from exc
        already = response.status_code == 400 and "already" in response.text.lower()
        if response.status_code in (404, 405):
            raise ModelError(
                f"The server at {self.base_url} cannot load LoRA adapters at run time (it has no "
                "/v1/load_lora_adapter; llama.cpp's servers have none), so it cannot run the "
                f"aligned teacher in {folder}. Serve it with vLLM (`VLLM_ALLOW_RUNTIME_LORA_"
                "UPDATING=True vllm serve BASE --enable-lora`), serve the merged model, or use "
                "the transformers or vllm backend."
            )
        if response.status_code >= 400 and not already:
            raise ModelError(
                f"The server at {self.base_url} refused to load adapter {folder} "
                f"({response.status_code}: {response.text[:300]}); the server must see that "
                "folder at the same path (shared storage) and allow its rank (--max-lora-rank)."
            )
        log.info("adapter %s loaded into %s as %r", folder, self.base_url, name)
        return name

    def _complete(self, request: GenRequest) -> str:
        import openai

        attempt = 0
        while True:
            try:
                response = self.client.completions.create(
                    model=self.model,
                    prompt=request.prompt,
                    temperature=request.temperature,
                    max_tokens=request.max_new_tokens,
                    seed=request.seed,
                    top_p=1.0,
                    stop=list(request.stop) or None,
                    extra_body=self.extra_body or None,
                )
                usage = getattr(response, "usage", None)
                if usage is not None:
                    with self._count:
                        self.tokens["prompt"] += int(getattr(usage, "prompt_tokens", 0) or 0)
                        self.tokens["generated"] += int(getattr(usage, "completion_tokens", 0) or 0)
                # Servers strip the stop string already; cutting again is a no-op then.
                return cut_at_stop(response.choices[0].text or "", request.stop)
            except openai.APIError as exc:
                if not _retryable(exc):
                    raise ModelError(
                        f"The server at {self.base_url} refused request {request.key} "
                        f"({type(exc).__name__}: {exc}); check the model name and the prompt "
                        "length against the server's limits."
                    ) from exc
                if attempt >= self.retries:
                    raise ModelError(
                        f"The server at {self.base_url} failed request {request.key} "
                        f"{attempt + 1} times ({type(exc).__name__}: {exc}); check that it "
                        "is up and not overloaded, then resume the stage."
                    ) from exc
                delay = self.backoff * 2**attempt
                log.warning("%s: %s, retrying in %.1fs", request.key, type(exc).__name__, delay)
                time.sleep(delay)
                attempt += 1

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai")
        try:
            futures: dict[Future[str], GenRequest] = {
                pool.submit(self._complete, r): r for r in requests
            }
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            # A consumer that stops early (cancel, error) leaves queued requests unsent.
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.name!r})"
