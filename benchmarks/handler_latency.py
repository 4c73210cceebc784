"""Latency of the Review and Runs handlers as a user feels it (HTTP through gradio_client), on an
idle machine and while a CPU-heavy training-like job writes metrics in another process.

    .venv/bin/python benchmarks/handler_latency.py [--n 200] [--questions 40]

The app runs in its own process on a temporary storage folder seeded with a realistic study
(tests/seeding.py: three rounds, a few hundred drafts and pairs); the client calls each handler
``n`` times per condition, round-robin so load swings hit every handler alike, and prints the
median and p95 latency per handler and condition against the target (p95 < 300 ms with a job).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

TARGET_P95_MS = 300.0
JOB_THREADS = 2  # a CPU training run takes every core this machine has
METRIC_EVERY_S = 0.5


def serve(port: int) -> None:
    """The app as ``launch`` builds it (queue, concurrency), without the worker."""
    from pages import CSS, build_app

    app = build_app()
    app.queue(default_concurrency_limit=8)
    app.launch(server_port=port, prevent_thread_lock=True, quiet=True, css=CSS)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def job(run_id: int, nice: int) -> None:
    """A stand-in training run: matmuls on every core, a metric row and progress every 0.5 s,
    written through the same write sessions a real align/distil run uses."""
    import torch

    if nice:
        os.nice(nice)

    from teachlab.db import Metric, write_session
    from teachlab.jobs import runs

    torch.set_num_threads(JOB_THREADS)
    a, b = torch.randn(768, 768), torch.randn(768, 768)
    step, last = 0, time.monotonic()
    held = runs.Lease(run_id, runs.get_run(run_id).lease)  # as the executor holds it
    while True:
        for _ in range(4):
            a = torch.tanh(a @ b)
        if time.monotonic() - last >= METRIC_EVERY_S:
            step += 1
            last = time.monotonic()
            loss = 0.7 * 0.995**step + 0.01 * float(a[0, 0])
            with write_session() as s:
                s.add(Metric(run_id=run_id, step=step, name="loss", value=loss))
                s.add(Metric(run_id=run_id, step=step, name="rewards/margins", value=step / 200))
            runs.set_progress(held, step, 10_000, f"step {step}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with code {proc.returncode} before it was up")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the app did not answer on {url} within {timeout:.0f} s")


def _handlers(client: Any, seeded: Any, rng: random.Random) -> dict[str, Callable[[], Any]]:
    """One callable per measured endpoint, each with inputs a user would send."""
    from teachlab import review

    rid = seeded.current
    pair_ids = [p.id for p in review.queue(rid, order="id")]
    filters = (rid, "proposed", "all", "margin")

    def queue() -> Any:
        status, order = rng.choice([("proposed", "margin"), ("all", "margin"), ("all", "rank")])
        return client.predict(rid, status, "all", order, api_name="/review_queue")

    def open_pair() -> Any:
        return client.predict(*filters, rng.choice(pair_ids), api_name="/review_open")

    def approve() -> Any:
        out = client.predict(*filters, "", api_name="/review_approve")
        assert "approved" in out[-1], out[-1]
        return out

    def undo() -> Any:  # puts the pair back, so the queue never runs dry
        out = client.predict(*filters, api_name="/review_undo")
        assert "Undid" in out[-1], out[-1]
        return out

    def next_pair() -> Any:
        return client.predict(*filters, api_name="/review_next")

    def noop() -> Any:  # the framework's own cost: a handler that only returns its input
        return client.predict(seeded.study, api_name="/select_study")

    def runs_show() -> Any:
        return client.predict("round", 0, api_name="/runs_show")

    def runs_poll() -> Any:
        return client.predict(True, "round", 0, api_name="/runs_poll")

    return {
        "noop": noop,
        "review_queue": queue,
        "review_open": open_pair,
        "review_approve": approve,
        "review_undo": undo,
        "review_next": next_pair,
        "runs_show": runs_show,
        "runs_poll": runs_poll,
    }


def measure(handlers: dict[str, Callable[[], Any]], n: int, warmup: int = 5) -> dict[str, list]:
    for _ in range(warmup):
        for call in handlers.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in handlers}
    for _ in range(n):
        for name, call in handlers.items():  # approve, undo, next: a review step and its undo
            start = time.perf_counter()
            call()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="calls per handler and condition")
    parser.add_argument("--questions", type=int, default=40, help="questions per round")
    parser.add_argument("--rationales", type=int, default=6, help="rationales per question")
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="also measure with the job at this niceness (0: skip); the worker runs jobs at 0",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--job", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.job:
        return job(args.job, args.nice)

    storage = Path(tempfile.mkdtemp(prefix="teachlab-bench-")) / "storage"
    storage.mkdir()
    os.environ.update(
        TEACHLAB_STORAGE=str(storage),
        TEACHLAB_MODEL_CACHE=str(ROOT / "storage" / "models"),
        TEACHLAB_DATA_CACHE=str(ROOT / "storage" / "data"),
        TEACHLAB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    os.environ.pop("TEACHLAB_AUTH", None)
    from gradio_client import Client
    from sqlmodel import func, select

    from teachlab.db import Draft, Pair, init_db, read_session
    from teachlab.jobs import runs
    from tests.seeding import running_run, seed_study

    init_db()
    start = time.perf_counter()
    seeded = seed_study(
        "bench", n_questions=args.questions, n_rationales=args.rationales, rule="ranked"
    )
    with read_session() as s:
        n_drafts = s.exec(select(func.count()).select_from(Draft)).one()
        n_pairs = s.exec(select(func.count()).select_from(Pair)).one()
    current = len(seeded.pairs[seeded.current])
    print(
        f"seeded in {time.perf_counter() - start:.0f} s: {n_drafts} drafts, {n_pairs} pairs "
        f"({current} in the current round, the one reviewed)",
        flush=True,
    )

    port = _free_port()
    me = [sys.executable, str(Path(__file__).resolve())]
    server = subprocess.Popen([*me, "--serve", str(port)], env=os.environ.copy())
    procs = [server]
    rows: list[tuple[str, str, list[float]]] = []
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_up(url, server)
        client = Client(url, verbose=False, analytics_enabled=False)
        client.predict(seeded.study, api_name="/select_study")  # the session's current study
        client.predict(seeded.current, "proposed", "all", "margin", api_name="/review_queue")
        handlers = _handlers(client, seeded, random.Random(0))
        conditions = [("idle", None), ("job running", 0)]
        if args.nice:
            conditions.append((f"job, nice {args.nice}", args.nice))
        job_run: tuple[int, subprocess.Popen[bytes]] | None = None
        for condition, nice in conditions:
            if job_run is not None:  # one job at a time, as the worker runs them
                _stop(job_run[1])
                runs.finish(runs.Lease(job_run[0], runs.get_run(job_run[0]).lease), "succeeded")
            if nice is not None:
                run_id = running_run(seeded.study, seeded.current, "align", total=10_000)
                cmd = [*me, "--job", str(run_id), "--nice", str(nice)]
                job_run = (run_id, subprocess.Popen(cmd, env=os.environ.copy()))
                procs.append(job_run[1])
                time.sleep(3)  # the job is up and writing before we measure
            load = os.getloadavg()[0]
            print(f"measuring: {condition} (load average {load:.1f})", flush=True)
            t0 = time.perf_counter()
            for name, values in measure(handlers, args.n).items():
                rows.append((name, condition, values))
            print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        for proc in reversed(procs):
            _stop(proc)

    cores = os.cpu_count()
    print(f"\nhandler latency over HTTP (gradio_client.predict), {cores} cores, target: p95 <")
    print(f"{TARGET_P95_MS:.0f} ms with a job running (job: {JOB_THREADS}-thread matmuls +")
    print(f"metrics every {METRIC_EVERY_S} s)\n")
    print(f"{'handler':<16}{'condition':<16}{'n':>5}{'median ms':>11}{'p95 ms':>9}  target")
    for name, condition, values in rows:
        p95 = _p95(values)
        verdict = "-" if condition == "idle" else "met" if p95 < TARGET_P95_MS else "MISSED"
        print(
            f"{name:<16}{condition:<16}{len(values):>5}{statistics.median(values):>11.0f}"
            f"{p95:>9.0f}  {verdict}"
        )


if __name__ == "__main__":
    main()
