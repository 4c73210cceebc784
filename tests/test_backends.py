"""Generation backends: the factory, the OpenAI-compatible client against a real local HTTP
server (retries, timeouts, unreachable servers), and the transformers backend on the teacher.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from teachlab.backends import GenRequest, cut_at_stop, make_backend
from teachlab.backends.hf import batch_seed, request_batches
from teachlab.backends.openai_compat import OpenAIBackend
from teachlab.errors import ConfigError, ModelError
from tests.conftest import bigbench_available

STUDENT = "bundled:smollm2-135m-instruct"

# ---------------------------------------------------------------- pure helpers


def _req(key: str, t: float = 0.7, n: int = 8, seed: int = 0, prompt: str = "p") -> GenRequest:
    return GenRequest(key=key, prompt=prompt, temperature=t, max_new_tokens=n, seed=seed)


def test_batches_group_by_sampling_settings_and_keep_request_order() -> None:
    requests = [_req("a"), _req("b", t=0.0), _req("c"), _req("d"), _req("e", n=4), _req("f")]
    batches = request_batches(requests, batch_size=2)
    assert [[r.key for r in b] for b in batches] == [["a", "c"], ["d", "f"], ["b"], ["e"]]


def test_batch_seed_depends_on_key_and_seed() -> None:
    assert batch_seed(_req("a", seed=1)) == batch_seed(_req("a", seed=1))
    assert len({batch_seed(_req(k, seed=s)) for k in "ab" for s in (1, 2)}) == 4


def test_cut_at_stop_uses_the_earliest_stop_string() -> None:
    assert cut_at_stop("abc\nUser: x</Q>", ("</Q>", "\nUser:")) == "abc"
    assert cut_at_stop("abc", ("zz",)) == "abc"
    assert cut_at_stop("abc", ()) == "abc"


def test_factory_errors_are_actionable() -> None:
    with pytest.raises(ConfigError, match="Unknown backend 'tgi'"):
        make_backend("tgi", "m")
    # A folder that holds no adapter is named before any server is asked.
    with pytest.raises(ModelError, match="neither a LoRA adapter"):
        make_backend("openai", "m", adapter="/nonexistent/adapter")


def test_vllm_missing_says_how_to_install_it() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError) as info:
            make_backend("vllm", "bundled:gemma-3-270m")
        assert str(info.value) == (
            "vLLM is not installed; install the gpu extra (`pip install teachlab[gpu]`) on a "
            "CUDA machine, or use the transformers backend"
        )
    else:
        pytest.skip("vLLM is installed here; the missing-vLLM message cannot be shown")


def test_vllm_backend_generates() -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (GPU extra); nothing to test")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    backend = make_backend("vllm", "bundled:gemma-3-270m", max_model_len=1024)
    try:
        requests = [
            _req(f"k{i}", t=0.0, n=8, prompt="User: Name a sport.\nAssistant:") for i in range(2)
        ]
        out = dict((r.key, text) for r, text in backend.generate(requests))
        assert set(out) == {"k0", "k1"} and out["k0"] == out["k1"]
    finally:
        backend.close()


# ---------------------------------------------------------------- OpenAI-compatible server


class FakeServer(ThreadingHTTPServer):
    """GET /v1/models and POST /v1/completions. ``mode``: ok | flaky (two 500s, then ok) |
    slow (sleeps 3 s) | bad (400). With ``lora`` on it also speaks vLLM's runtime LoRA endpoint
    (POST /v1/load_lora_adapter: 200, or 400 for a name already loaded) and answers only for
    the models it serves; with it off that endpoint is missing (404), as on llama.cpp's
    servers. ``reply`` (prompt → text) replaces the echo."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = "ok"
        self.failures = 0
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.lora = False
        self.adapters: dict[str, str] = {}  # served name -> path
        self.reply: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args: Any) -> None:  # keep test output clean
        return None

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            model = {"id": "tiny", "object": "model", "created": 0, "owned_by": "test"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        if self.path == "/v1/load_lora_adapter":
            self._load_lora(body)
            return
        if server.lora and body["model"] not in {"tiny", *server.adapters}:
            message = f"The model `{body['model']}` does not exist."
            self._send(404, {"error": {"message": message, "type": "NotFoundError"}})
            return
        with server.lock:
            server.bodies.append(body)
            fail = server.mode == "flaky" and server.failures < 2
            server.failures += fail
        if fail:
            self._send(500, {"error": {"message": "boom", "type": "server_error"}})
            return
        if server.mode == "bad":
            self._send(400, {"error": {"message": "prompt too long", "type": "invalid_request"}})
            return
        if server.mode == "slow":
            time.sleep(3)
        text = (
            server.reply(body["prompt"])
            if server.reply
            else f"{body['prompt'][::-1]}|seed={body.get('seed')}|t={body['temperature']}\nUser: x"
        )
        self._send(
            200,
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"text": text, "index": 0, "finish_reason": "stop", "logprobs": None}],
            },
        )

    def _load_lora(self, body: dict[str, Any]) -> None:
        server = self.server
        if not server.lora:
            self._send(404, {"detail": "Not Found"})
            return
        name = body["lora_name"]
        with server.lock:
            known = name in server.adapters
            server.adapters[name] = body["lora_path"]
        if known:
            message = f"The lora adapter '{name}' has already been loaded."
            self._send(400, {"error": {"message": message, "type": "InvalidUserInput"}})
        else:
            self._send(200, {"message": f"Success: LoRA adapter '{name}' added successfully."})


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _backend(server: FakeServer, **opts: Any) -> OpenAIBackend:
    return make_backend("openai", "bundled:gemma-3-270m", base_url=server.url, **opts)  # type: ignore[return-value]


def test_completions_from_a_real_http_server(server: FakeServer) -> None:
    backend = _backend(server, concurrency=4)
    assert backend.model == "tiny"  # the server's only model stands in for the local ref
    requests = [
        GenRequest(f"k{i}", f"prompt {i}", 0.5, 16, seed=100 + i, stop=("\nUser:",))
        for i in range(8)
    ]
    out = {r.key: text for r, text in backend.generate(requests)}
    backend.close()
    assert out == {f"k{i}": f"{i} tpmorp|seed={100 + i}|t=0.5" for i in range(8)}
    assert len(server.bodies) == 8
    body = server.bodies[0]
    assert body["model"] == "tiny" and body["max_tokens"] == 16 and body["stop"] == ["\nUser:"]


def test_server_errors_are_retried_with_backoff(server: FakeServer) -> None:
    server.mode = "flaky"
    backend = _backend(server, max_retries=0, retries=2, backoff=0.01)
    [(_, text)] = list(backend.generate([_req("k", prompt="abc")]))
    assert text.startswith("cba|") and len(server.bodies) == 3


def test_retries_are_bounded(server: FakeServer) -> None:
    server.mode = "flaky"
    backend = _backend(server, max_retries=0, retries=1, backoff=0.01)
    with pytest.raises(ModelError, match="failed request k 2 times"):
        list(backend.generate([_req("k")]))
    assert len(server.bodies) == 2


def test_client_errors_are_not_retried(server: FakeServer) -> None:
    server.mode = "bad"
    backend = _backend(server, max_retries=0, retries=3, backoff=0.01)
    with pytest.raises(ModelError, match="refused request k"):
        list(backend.generate([_req("k")]))
    assert len(server.bodies) == 1


def test_a_slow_server_times_out(server: FakeServer) -> None:
    server.mode = "slow"
    backend = _backend(server, timeout=0.3, max_retries=0, retries=0)
    started = time.monotonic()
    with pytest.raises(ModelError, match="APITimeoutError"):
        list(backend.generate([_req("k")]))
    assert time.monotonic() - started < 2.5


def test_an_unreachable_server_fails_before_any_work() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(ModelError, match=f"No OpenAI-compatible server answered at {url}"):
            make_backend("openai", "m", base_url=url)


def test_base_url_comes_from_the_environment(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    backend = make_backend("openai", "tiny")
    assert backend.name == f"openai:tiny@{server.url}"


# ---------------------------------------------------------------- a round's adapter on a server


def adapter_folder(root: Path, weights: bytes = b"lora weights") -> Path:
    """A folder as the align stage leaves it (the loopback server reads only its path)."""
    folder = root / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def test_the_aligned_teacher_is_loaded_into_the_server_and_asked_for_by_name(
    server: FakeServer, tmp_path: Path
) -> None:
    from teachlab.models import trained_hash

    server.lora = True
    folder = adapter_folder(tmp_path)
    backend = _backend(server, adapter=str(folder))
    digest = trained_hash(folder)
    assert backend.adapter_hash == digest and backend.model == f"teachlab-{digest[:16]}"
    assert server.adapters == {backend.model: str(folder.resolve())}
    assert backend.name == f"openai:{backend.model}@{server.url}"
    [(_, text)] = list(backend.generate([_req("a", prompt="hello")]))
    assert text.startswith("olleh") and server.bodies[-1]["model"] == backend.model
    # The next stage loads it again: the server's "already loaded" is not an error.
    assert _backend(server, adapter=str(folder)).model == backend.model


def test_a_server_that_cannot_load_adapters_is_refused_before_any_prompt(
    server: FakeServer, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="cannot load LoRA adapters at run time"):
        _backend(server, adapter=str(adapter_folder(tmp_path)))
    assert server.bodies == []


def test_a_fully_fine_tuned_teacher_is_refused_with_how_to_serve_it(
    server: FakeServer, tmp_path: Path
) -> None:
    server.lora = True
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "config.json").write_text("{}")
    (whole / "model.safetensors").write_bytes(b"every weight")
    with pytest.raises(ModelError, match=r"fully fine-tuned \(lora off\).*vllm serve"):
        _backend(server, adapter=str(whole))
    assert server.adapters == {} and server.bodies == []


def sports_reply(prompt: str) -> str:
    """What a teacher on the server writes: a question where the prompt opens one, else a
    rationale that ends in an answer."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:6]
    if prompt.endswith("<input>"):
        return f"Player {digest} scored a penalty kick.</input><target>plausible</target>"
    return (
        f" Player {digest} plays football, where penalty kicks are scored, so <ans>plausible</ans>"
    )


@pytest.mark.skipif(
    not bigbench_available("sports_understanding"), reason="run `teachlab data fetch` first"
)
def test_round_one_drafts_and_regenerates_with_the_aligned_teacher_on_the_server(
    server: FakeServer, tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1 after alignment, on the openai backend: the round's adapter is loaded into the
    server and every draft and tailored example is written by it, and recorded as such."""
    from sqlmodel import select

    from teachlab.db import Draft, Round, read_session, write_session
    from teachlab.jobs import runs
    from teachlab.jobs.executor import execute
    from teachlab.models import trained_hash
    from teachlab.rounds import current_round
    from teachlab.stages import STAGES
    from teachlab.studies import create_study

    server.lora, server.reply = True, sports_reply
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    config = {"n_questions": 2, "n_rationales": 1, "n_probe": 8, "n_test": 12, "n_tailored": 2}
    study = create_study(
        "served", "bigbench:sports_understanding", teacher=STUDENT, backend="openai", config=config
    )
    aligned = adapter_folder(tmp_path)
    with write_session() as session:  # round 0 closed, its aligned teacher carried to round 1
        first = current_round(study.id)  # type: ignore[arg-type]
        first.status = "done"
        session.add(first)
        session.add(
            Round(
                study_id=study.id,  # type: ignore[arg-type]
                index=1,
                teacher=STUDENT,
                student=study.student,
                teacher_adapter=str(aligned),
            )
        )
    rnd = current_round(study.id)  # type: ignore[arg-type]
    assert rnd.index == 1
    for kind in ("draft", "regenerate"):
        run = runs.create_run(study.id, kind, round_id=rnd.id, seed=0)  # type: ignore[arg-type]
        final = execute(run.id, STAGES)  # type: ignore[arg-type]
        assert final.status == "succeeded", final.error
    served = f"teachlab-{trained_hash(aligned)[:16]}"
    assert set(server.adapters) == {served}
    assert server.bodies and {b["model"] for b in server.bodies} == {served}
    with read_session() as session:
        drafts = session.exec(select(Draft).where(Draft.round_id == rnd.id)).all()
    assert {d.phase for d in drafts} == {"draft", "tailored"}
    assert {d.adapter_hash for d in drafts} == {trained_hash(aligned)}
    assert {d.sampling["backend"] for d in drafts} == {f"openai:{served}@{server.url}"}
    assert any(d.status == "ok" and d.kind == "question" and d.phase == "tailored" for d in drafts)


# ---------------------------------------------------------------- transformers (real teacher)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The bundled teacher, loaded once for the module from the shared model cache."""
    import os
    from pathlib import Path

    import torch

    from teachlab.models import load
    from teachlab.settings import Settings

    torch.set_num_threads(2)
    models = os.environ.get(
        "TEACHLAB_TEST_MODEL_CACHE", Path(__file__).resolve().parents[1] / "storage" / "models"
    )
    settings = Settings(
        storage=tmp_path_factory.mktemp("teacher"), model_cache=Path(models), offline=True
    )
    return load("bundled:gemma-3-270m", settings=settings)


PROMPT = "User: Name three sports.\nAssistant:"


@pytest.mark.slow
def test_same_requests_and_seeds_give_the_same_completions(teacher: Any) -> None:
    backend = make_backend("transformers", teacher.ref, loaded=teacher)
    requests = [
        _req("q:0", t=1.0, n=12, seed=5, prompt=PROMPT),
        _req("q:1", t=1.0, n=12, seed=6, prompt=PROMPT + " Tennis"),
    ]
    first = [text for _, text in backend.generate(requests)]
    second = [text for _, text in backend.generate(requests)]
    assert first == second
    other = [
        text
        for _, text in backend.generate(
            [_req("q:0", t=1.0, n=12, seed=99, prompt=PROMPT), requests[1]]
        )
    ]
    assert other != first


@pytest.mark.slow
def test_shared_prompt_batch_matches_single_stream_greedy(teacher: Any) -> None:
    batched = make_backend("transformers", teacher.ref, loaded=teacher, batch_size=3)
    single = make_backend("transformers", teacher.ref, loaded=teacher, batch_size=1)
    requests = [_req(f"k{i}", t=0.0, n=10, prompt=PROMPT) for i in range(3)]
    together = [text for _, text in batched.generate(requests)]
    alone = [text for _, text in single.generate(requests)]
    assert together == alone and together[0].strip()


@pytest.mark.slow
def test_left_padded_batch_matches_single_stream_greedy_and_stops(teacher: Any) -> None:
    backend = make_backend("transformers", teacher.ref, loaded=teacher, batch_size=2)
    short = GenRequest("a", PROMPT, 0.0, 10, 0, stop=("\n",))
    long = GenRequest(
        "b", "User: Write a haiku about the sea, please.\nAssistant:", 0.0, 10, 0, stop=("\n",)
    )
    together = dict((r.key, t) for r, t in backend.generate([short, long]))
    alone = {r.key: t for req in (short, long) for r, t in backend.generate([req])}
    assert together == alone
    assert all("\n" not in t for t in together.values())


@pytest.mark.slow
def test_choose_ranks_options_by_their_log_probability(teacher: Any) -> None:
    from teachlab.backends.base import ChoosingBackend
    from teachlab.prompts import prompt_token_ids
    from teachlab.score.loglik import loglik_reference

    backend = make_backend("transformers", teacher.ref, loaded=teacher)
    assert isinstance(backend, ChoosingBackend)
    prompt = "User: What is the capital of France?\nAssistant: The answer is <ans>"
    options = ["a banana", "Paris", "the Moon"]
    scores = backend.choose(prompt, options, "</ans>")  # type: ignore[attr-defined]
    assert max(range(3), key=scores.__getitem__) == 1
    # The same numbers as one plain forward pass per option over the whole text.
    tok = teacher.tokenizer
    ids = prompt_token_ids(tok, prompt)
    cands = [tok(o + "</ans>", add_special_tokens=False)["input_ids"] for o in options]
    ref = loglik_reference(teacher.model, [ids + c for c in cands], cands)
    assert scores == pytest.approx(ref.logprobs, abs=1e-3)


# ---------------------------------------------------------------- sampling


def test_sampling_draws_from_the_softmax_at_the_temperature() -> None:
    import torch

    from teachlab.decoding import sample_tokens

    torch.manual_seed(0)
    vocab = 1300  # blocks of 512: two full ones and a padded last one
    logits = torch.full((vocab,), float("-inf"))
    values = {0: 2.0, 511: 1.0, 512: 0.0, 1299: 1.5}  # tokens at the blocks' edges
    for token, value in values.items():
        logits[token] = value
    expected = torch.softmax(torch.tensor(list(values.values())) / 0.7, 0).tolist()
    draws = torch.cat([sample_tokens(logits.expand(4000, vocab), 0.7) for _ in range(5)])
    counts = [int((draws == token).sum()) for token in values]
    assert sum(counts) == len(draws)  # a token of zero probability is never drawn
    for count, p in zip(counts, expected, strict=True):
        assert count / len(draws) == pytest.approx(p, abs=0.01)


def test_sampling_at_temperature_zero_is_the_argmax() -> None:
    import torch

    from teachlab.decoding import sample_tokens

    logits = torch.randn(6, 70000)
    assert torch.equal(sample_tokens(logits, 0.0), logits.argmax(-1))
