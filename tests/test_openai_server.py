"""The openai backend against a real OpenAI-compatible server: llama.cpp's (llama-cpp-python)
serving the bundled SmolLM2 GGUF on a free local port, started and stopped by these tests.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from teachlab.backends import GenRequest, make_backend
from teachlab.backends.openai_compat import OpenAIBackend
from teachlab.errors import ModelError
from tests.conftest import bigbench_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("starlette_context") is None,
        reason="llama-cpp-python[server] is not installed; `make test` installs it "
        "(or `pip install -e '.[server]'`)",
    ),
]

STUDENT = "bundled:smollm2-135m-instruct"
START_TIMEOUT_S = 120.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(log: Path) -> Server:
    """``python -m llama_cpp.server`` on the bundled SmolLM2 GGUF; returns once /v1/models answers."""
    from teachlab.models import BUNDLED

    gguf = BUNDLED["smollm2-135m-instruct"].gguf_path()
    port = free_port()
    # Two threads: the test machine may have only two cores.
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        "--n_threads", "2", "--n_threads_batch", "2", "--verbose", "false",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"llama.cpp's server exited with status {proc.returncode}:\n{server.tail()}"
            )
        try:
            with urllib.request.urlopen(server.url + "/models", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise AssertionError(
        f"llama.cpp's server did not answer within {START_TIMEOUT_S:.0f} s:\n{server.tail()}"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("llama-server") / "server.log")
    yield running
    running.stop()


@functools.cache
def _tokenizer() -> Any:
    from teachlab.prompts import load_tokenizer

    return load_tokenizer(STUDENT)  # from the shared de-quantised cache (conftest)


@pytest.fixture
def chat() -> Any:
    """Renders a user message with SmolLM2's own chat template, as the draft stage does."""
    from teachlab.prompts import render_chat

    return lambda text: render_chat(_tokenizer(), [{"role": "user", "content": text}])


def backend_for(server: Server, **opts: Any) -> OpenAIBackend:
    backend = make_backend("openai", STUDENT, base_url=server.url, **opts)
    assert isinstance(backend, OpenAIBackend)
    return backend


def complete(backend: OpenAIBackend, *requests: GenRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for request, text in backend.generate(requests):
        assert request.key not in out, f"{request.key} came back twice"
        out[request.key] = text
    return out


def req(key: str, prompt: str, n: int = 48, t: float = 0.0, seed: int = 0, **kw: Any) -> GenRequest:
    return GenRequest(key=key, prompt=prompt, temperature=t, max_new_tokens=n, seed=seed, **kw)


def raw_completion(server: Server, **body: Any) -> str:
    """One completion straight from the server's HTTP API, without the backend."""
    data = json.dumps({"max_tokens": 32, "top_p": 1.0, **body}).encode()
    request = urllib.request.Request(
        server.url + "/completions", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return str(json.loads(response.read())["choices"][0]["text"])


# ---------------------------------------------------------------- completions


def test_the_probe_picks_the_served_model_and_switches_llama_cpp_sampling_off(
    server: Server,
) -> None:
    backend = backend_for(server)
    try:
        assert backend.model.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
        assert backend.name == f"openai:{backend.model}@{server.url}"
        assert backend.extra_body == {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
    finally:
        backend.close()


def test_greedy_completions_respect_max_tokens_and_stop_strings(server: Server, chat: Any) -> None:
    prompt = chat("List ten fruits, one per line.")
    backend = backend_for(server)
    try:
        out = complete(backend, req("long", prompt, n=48), req("short", prompt, n=6))
        long, short = out["long"], out["short"]
        assert long.strip() and short.strip()
        # Greedy: the 6-token completion is the start of the 48-token one.
        assert len(short) < len(long) and long.startswith(short)
        assert "\n" in long[1:]
        stop = "\n"
        first = long.index(stop, 1)
        stopped = complete(backend, req("stop", prompt, n=48, stop=(stop,)))["stop"]
        assert stopped == long[:first] and stop not in stopped[1:]
    finally:
        backend.close()


def test_temperature_zero_is_greedy_and_repeats_exactly(server: Server) -> None:
    # llama.cpp's default repeat penalty pulls this prompt away from its greedy continuation.
    prompt = "<|im_start|>user\nCount: 1, 1, 1, 1<|im_end|>\n<|im_start|>assistant\n1, 1, 1, 1, 1,"
    greedy = raw_completion(
        server, prompt=prompt, temperature=0, top_k=0, min_p=0, repeat_penalty=1
    )
    penalised = raw_completion(server, prompt=prompt, temperature=0)
    assert greedy != penalised, "the prompt no longer shows the server's sampling defaults"
    backend = backend_for(server)
    try:
        first = complete(backend, req("a", prompt, n=32))["a"]
        second = complete(backend, req("a", prompt, n=32))["a"]
    finally:
        backend.close()
    assert first == second == greedy


def from_a_cold_prompt(backend: OpenAIBackend, request: GenRequest) -> str:
    """``request``'s completion with the whole prompt evaluated afresh.

    llama.cpp reuses the longest prefix it already holds and re-evaluates only the rest; its
    logits are not bit-for-bit the same for different batch shapes (llama.cpp says so of its
    prompt cache), so at temperature 1 a repeat whose prompt is fully cached can sample other
    tokens than the first request did. A prompt that shares no first token with ours makes the
    server evaluate ours from scratch, the same way each time.
    """
    complete(backend, req("cold", "Zebras graze.", n=1))
    return complete(backend, request)[request.key]


def test_seeded_sampling_is_reproducible_and_seeds_matter(server: Server, chat: Any) -> None:
    prompt = chat("Write one sentence about the sea.")
    assert not prompt.startswith("Z")
    backend = backend_for(server)
    try:
        again = [from_a_cold_prompt(backend, req("k", prompt, n=24, t=1.0, seed=11)) for _ in "ab"]
        seeded = {
            seed: from_a_cold_prompt(backend, req(f"s{seed}", prompt, n=24, t=1.0, seed=seed))
            for seed in range(4)
        }
    finally:
        backend.close()
    assert again[0] == again[1] and again[0].strip()
    assert len(set(seeded.values())) >= 2


def test_concurrent_requests_each_come_back_once_with_their_own_completion(
    server: Server, chat: Any
) -> None:
    topics = ["cats", "rain", "trains", "bread", "chess", "rivers", "glass", "owls", "snow"]
    requests = [
        req(f"k{i}", chat(f"One short fact about {t}."), n=20) for i, t in enumerate(topics)
    ]
    one_by_one = backend_for(server, concurrency=1)
    many = backend_for(server, concurrency=len(requests))
    try:
        alone = {r.key: complete(one_by_one, r)[r.key] for r in requests}
        together = complete(many, *requests)
    finally:
        one_by_one.close()
        many.close()
    # The backend yields in completion order; what matters is that no text lands on another key.
    assert set(together) == {r.key for r in requests}
    assert together == alone
    assert len(set(alone.values())) == len(requests)


# ---------------------------------------------------------------- the drafting stage


@pytest.mark.skipif(
    not bigbench_available("sports_understanding"), reason="run `teachlab data fetch` first"
)
def test_the_draft_stage_stores_drafts_through_the_openai_backend(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from teachlab.db import Draft, read_session
    from teachlab.jobs import runs
    from teachlab.jobs.executor import execute
    from teachlab.studies import create_study, current_round

    # The pipeline builds its backend from the study alone; the server comes from the env.
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    config = {"n_questions": 2, "n_rationales": 1, "n_probe": 8, "n_test": 12}
    study = create_study(
        "served", "bigbench:sports_understanding", teacher=STUDENT, backend="openai", config=config
    )
    rnd = current_round(study.id)  # type: ignore[arg-type]
    run = runs.create_run(study.id, "draft", round_id=rnd.id, seed=0)  # type: ignore[arg-type]
    final = execute(run.id)  # type: ignore[arg-type]
    assert final.status == "succeeded", final.error
    with read_session() as session:
        drafts = session.exec(select(Draft).where(Draft.round_id == rnd.id)).all()
    questions = [d for d in drafts if d.kind == "question"]
    rationales = [d for d in drafts if d.kind == "rationale"]
    ok = [d for d in questions if d.status == "ok"]
    assert ok and final.result["questions"]["total_ok"] == len(ok)
    assert len(rationales) == len(ok)  # one strategy each
    for d in drafts:
        assert d.sampling["backend"] == f"openai:{server_model(server)}@{server.url}"
        assert d.prompt.startswith("<|im_start|>") and d.prompt.endswith(d.prefill)
    assert all(d.input and d.target in ("plausible", "implausible") for d in ok)
    assert any(r.raw_output.strip() for r in rationales)

    # Resuming finds every key stored and asks the server for nothing more.
    again = execute(runs.create_run(study.id, "draft", round_id=rnd.id, seed=0).id)  # type: ignore[arg-type]
    assert again.status == "succeeded", again.error
    assert again.result["questions"]["calls"] == 0
    assert again.result["rationales"]["skipped"] == len(rationales)


def server_model(server: Server) -> str:
    with urllib.request.urlopen(server.url + "/models", timeout=10) as response:
        return str(json.loads(response.read())["data"][0]["id"])


# ---------------------------------------------------------------- a server that dies


def test_a_server_killed_mid_run_gives_a_clear_error_after_bounded_retries(
    tmp_path: Path, chat: Any
) -> None:
    doomed = start_server(tmp_path / "doomed.log")
    try:
        backend = backend_for(doomed, concurrency=2, max_retries=1, retries=1, backoff=0.2)
        prompt = chat("Tell a long story about a lighthouse keeper.")
        requests = [req(f"k{i}", prompt, n=96, t=1.0, seed=i) for i in range(16)]
        results = backend.generate(requests)
        started = time.monotonic()
        got = [next(results)]
        doomed.proc.kill()
        doomed.proc.wait(10)
        with pytest.raises(ModelError, match=r"failed request k\d+ 2 times") as info:
            got.extend(results)
        elapsed = time.monotonic() - started
        backend.close()
    finally:
        doomed.stop()
    assert len(got) < len(requests)
    assert doomed.url in str(info.value) and "resume the stage" in str(info.value)
    assert elapsed < 30, f"the backend took {elapsed:.0f} s to give up"
