"""The openai backend against a real OpenAI-compatible server: llama.cpp's (llama-cpp-python)
serving the bundled SmolLM2 GGUF on a free local port, started and stopped by these tests.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import resource
import signal
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

    def check_alive(self, when: str) -> None:
        """Fails, naming how the server died and showing its log, if its process has exited."""
        if self.proc.poll() is not None:
            pytest.fail(
                f"llama.cpp's server ({self.url}) died {when}: {exit_status(self.proc.returncode)}."
                f"{CRASH_HINT if self.proc.returncode < 0 else ''}\n"
                f"The end of its log ({self.log}):\n{self.crash_tail() or '(empty)'}",
                pytrace=False,
            )

    def crash_tail(self, chars: int = 3000) -> str:
        """The log's end, from faulthandler's "Fatal Python error" on if it wrote one."""
        text = self.log.read_text(errors="replace")
        fatal = text.rfind("Fatal Python error:")
        start = len(text) - chars if fatal < 0 else min(fatal, len(text) - chars)
        return text[max(0, start) :]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


CRASH_HINT = (
    " If llama.cpp crashed, check that llama-cpp-python is `make server`'s portable build"
    " (a build tuned with -march=native crashed on an AVX-512 CPU)."
)


def exit_status(code: int) -> str:
    """``exited with status 1``, or ``was killed by SIGSEGV (Segmentation fault), exit status -11``."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    description = signal.strsignal(-code)
    about = f" ({description})" if description and description != name else ""
    return f"was killed by {name}{about}, exit status {code}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(log: Path, command: list[str] | None = None) -> Server:
    """``python -m llama_cpp.server`` on the bundled SmolLM2 GGUF; returns once /v1/models answers.

    ``command`` replaces the server's command line, for tests of a server that dies starting.
    """
    port = free_port()
    if command is None:
        from teachlab.models import BUNDLED

        gguf = BUNDLED["smollm2-135m-instruct"].gguf_path()
        # Two threads: the test machine may have only two cores. faulthandler writes a Python
        # traceback to the log if llama.cpp crashes (the server itself logs nothing then).
        command = [
            sys.executable, "-X", "faulthandler", "-m", "llama_cpp.server", "--model", str(gguf),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
            "--n_threads", "2", "--n_threads_batch", "2", "--verbose", "false",
        ]  # fmt: skip
    # llama.cpp's OpenMP threads spin between tokens by default; on a busy two-core machine they
    # take the CPU from the server's own Python and a completion takes 5-10 times longer.
    env = {"OMP_WAIT_POLICY": "passive", **os.environ}
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_alive("while starting")
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


@pytest.fixture(autouse=True)
def server_still_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test of the shared server fails with how it died, not with "Connection refused".

    Checked before each test that uses it (an earlier test may have crashed it) and after (this
    one may have: its own failure is then a connection error, and this says why).
    """
    if "server" not in request.fixturenames:
        yield
        return
    running: Server = request.getfixturevalue("server")
    running.check_alive("before this test")
    yield
    running.check_alive("during this test")


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
    from teachlab.rounds import current_round
    from teachlab.stages import STAGES
    from teachlab.studies import create_study

    # The pipeline builds its backend from the study alone; the server comes from the env.
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    config = {"n_questions": 2, "n_rationales": 1, "n_probe": 8, "n_test": 12}
    study = create_study(
        "served", "bigbench:sports_understanding", teacher=STUDENT, backend="openai", config=config
    )
    rnd = current_round(study.id)  # type: ignore[arg-type]
    run = runs.create_run(study.id, "draft", round_id=rnd.id, seed=0)  # type: ignore[arg-type]
    final = execute(run.id, STAGES)  # type: ignore[arg-type]
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
    again = execute(runs.create_run(study.id, "draft", round_id=rnd.id, seed=0).id, STAGES)  # type: ignore[arg-type]
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


def test_a_server_that_crashes_while_starting_is_reported_with_its_signal_and_log(
    tmp_path: Path,
) -> None:
    crash = (
        "import resource, signal; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
        "print('llama_model_loader: loaded', flush=True); signal.raise_signal(signal.SIGSEGV)"
    )
    with pytest.raises(pytest.fail.Exception) as info:
        start_server(tmp_path / "crash.log", [sys.executable, "-c", crash])
    message = str(info.value)
    assert "died while starting: was killed by SIGSEGV (Segmentation fault)" in message
    assert "exit status -11" in message and "llama_model_loader: loaded" in message
    assert "Connection refused" not in message


def test_a_crashed_server_fails_the_next_test_with_its_signal_not_a_connection_error(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))  # no core file from the server
    try:
        crashed = start_server(tmp_path / "crashed.log")
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    try:
        crashed.check_alive("before this test")  # alive: nothing to report
        os.kill(crashed.proc.pid, signal.SIGSEGV)  # as llama.cpp's own crash does
        crashed.proc.wait(10)
        with pytest.raises(pytest.fail.Exception) as info:
            crashed.check_alive("before this test")
    finally:
        crashed.stop()
    message = str(info.value)
    assert message.startswith(f"llama.cpp's server ({crashed.url}) died before this test: ")
    assert "was killed by SIGSEGV (Segmentation fault), exit status -11" in message
    assert "make server" in message
    # faulthandler's report, from the server's log
    assert "Fatal Python error: Segmentation fault" in message


def test_an_aligned_teacher_is_refused_before_any_prompt_since_llama_cpp_loads_no_adapters(
    server: Server, tmp_path: Path
) -> None:
    """llama.cpp's server has no runtime LoRA endpoint: round 1's teacher cannot run there, and
    the stage says so (and what to use instead) before it sends a single prompt."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"lora weights")
    with pytest.raises(ModelError, match="cannot load LoRA adapters at run time") as refused:
        backend_for(server, adapter=str(folder))
    assert "transformers or vllm backend" in str(refused.value)
