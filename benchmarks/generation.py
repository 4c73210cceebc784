"""Teacher generation throughput: the transformers backend's batched path against single-stream
generation, same requests and sampling settings, in one process.

    .venv/bin/python benchmarks/generation.py [--model REF] [--workload rationales|questions|both]
        [--requests 8] [--batch-size 8] [--max-new-tokens 160] [--quick]

Workloads are the draft stage's two kinds of teacher calls on the demo task: ``rationales``
(one prompt per question and strategy, all different, stopped at a fake user turn) and
``questions`` (the same question-drafting prompt for every call, prefilled, stopped after the
last block). Single-stream runs the backend with ``batch_size=1``; batched with
``--batch-size``. Tokens are the completions' tokens (re-encoded, after the stop string is cut),
so work spent on rows that already finished does not count. A forward hook counts the model's
calls, the rows they carry and the time they take, to show where the batched path loses time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import _setup

TARGET = 4.0


@dataclass
class Calls:
    """What the model ran: prefill calls (several tokens per row) and decoding steps."""

    prefill_s: float = 0.0
    prefill_tokens: int = 0
    steps: int = 0
    step_rows: int = 0
    step_s: list[float] = field(default_factory=list)
    _start: float = 0.0
    _shape: tuple[int, int] = (0, 0)

    def before(self, module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._shape = tuple(ids.shape) if ids is not None else (0, 0)  # type: ignore[assignment]
        self._start = time.perf_counter()

    def after(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        elapsed = time.perf_counter() - self._start
        rows, width = self._shape
        if width == 1:
            self.steps += 1
            self.step_rows += rows
            self.step_s.append(elapsed)
        else:
            self.prefill_s += elapsed
            self.prefill_tokens += rows * width


@dataclass
class Result:
    label: str
    seconds: float
    tokens: int
    calls: Calls

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from teachlab.studies import DEMO_TASK

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:gemma-3-270m", help="the teacher")
    parser.add_argument("--task", default=DEMO_TASK, help="the task the prompts are about")
    parser.add_argument("--workload", choices=("rationales", "questions", "both"), default="both")
    parser.add_argument("--requests", type=int, default=8, help="teacher calls per workload")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batched call")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 calls, 16 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.batch_size, args.max_new_tokens = 2, 2, 16
    return args


def requests_for(workload: str, task: Any, tok: Any, args: argparse.Namespace) -> list[Any]:
    """The draft stage's teacher calls on ``task`` (see ``teachlab.stages.draft``)."""
    from teachlab import prompts
    from teachlab.backends import GenRequest

    examples = task.examples
    if workload == "questions":
        seeds = [
            {"input": prompts.question_text(e.input, e.choices), "target": e.target}
            for e in examples[:3]
        ]
        messages = prompts.question_messages(task.name, task.description, seeds, 5)
        prompt = prompts.render_chat(tok, messages, prompts.question_prefill(len(seeds)))
        stop = prompts.question_stops(len(seeds), 5)
        prompts_ = [prompt] * args.requests
    else:
        strategies = ("expert", "rules", "plain", "eliminate")
        prompts_ = [
            prompts.render_chat(
                tok,
                prompts.rationale_messages(
                    strategies[i % len(strategies)],
                    task.name,
                    task.description,
                    prompts.question_text(examples[10 + i].input, examples[10 + i].choices),
                ),
                prompts.RATIONALE_PREFILL,
            )
            for i in range(args.requests)
        ]
        stop = (prompts.TURN_STOP,)
    return [
        GenRequest(f"{workload}:{i}", p, args.temperature, args.max_new_tokens, args.seed + i, stop)
        for i, p in enumerate(prompts_)
    ]


def run(loaded: Any, requests: list[Any], batch_size: int, label: str) -> Result:
    from teachlab.backends.hf import HFBackend

    backend = HFBackend(loaded.ref, loaded=loaded, batch_size=batch_size)
    calls = Calls()
    hooks = [
        loaded.model.register_forward_pre_hook(calls.before, with_kwargs=True),
        loaded.model.register_forward_hook(calls.after, with_kwargs=True),
    ]
    try:
        start = time.perf_counter()
        texts = [text for _, text in backend.generate(requests)]
        seconds = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    tok = loaded.tokenizer
    tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return Result(label, seconds, tokens, calls)


def report(workload: str, single: Result, batched: Result, batch_size: int) -> float:
    print(
        f"{'mode':<24} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'prefill s':>10} "
        f"{'steps':>6} {'rows/step':>10} {'ms/step':>8} {'useful':>7}"
    )
    for r in (single, batched):
        c = r.calls
        rows = c.step_rows / c.steps if c.steps else 0.0
        ms = 1000 * statistics.median(c.step_s) if c.step_s else 0.0
        # Each step writes one token per row; the share of row-steps that became kept tokens.
        useful = r.tokens / c.step_rows if c.step_rows else 0.0
        print(
            f"{r.label:<24} {r.seconds:>8.1f} {r.tokens:>7} {r.rate:>7.2f} {c.prefill_s:>10.1f} "
            f"{c.steps:>6} {rows:>10.2f} {ms:>8.1f} {useful:>6.0%}"
        )
    s, b = single.calls, batched.calls
    per_step = (
        (b.step_rows / sum(b.step_s)) / (s.step_rows / sum(s.step_s))
        if s.step_s and b.step_s
        else 0
    )
    ratio = batched.rate / single.rate
    print(
        f"{workload}: rows decoded per second, batched/single = {per_step:.2f}; "
        f"kept tokens per second, batched/single = {ratio:.2f}"
    )
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    _setup.prepare()
    args = parse_args(argv)
    from teachlab import models
    from teachlab.tasks import resolve_task

    task = resolve_task(args.task)
    loaded = models.load(args.model)
    workloads = ("rationales", "questions") if args.workload == "both" else (args.workload,)
    print(f"Teacher generation: {args.model}, task {args.task}")
    print(
        f"{args.requests} calls per workload, T={args.temperature}, "
        f"max_new_tokens={args.max_new_tokens}, batched = {args.batch_size} rows per call"
    )
    print(f"machine: {_setup.machine()}")
    # Warm-up, untimed: the first generate call pays one-off set-up costs.
    run(loaded, requests_for(workloads[0], task, loaded.tokenizer, args)[:1], 1, "warm-up")
    ratios = {}
    for workload in workloads:
        requests = requests_for(workload, task, loaded.tokenizer, args)
        print()
        single = run(loaded, requests, 1, "single-stream")
        batched = run(loaded, requests, args.batch_size, f"batched ({args.batch_size} rows)")
        ratios[workload] = report(workload, single, batched, args.batch_size)
    print()
    for workload, ratio in ratios.items():
        print(
            f"batched/single-stream tokens per second, {workload} = {ratio:.2f}  "
            f"(target >= {TARGET:g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
