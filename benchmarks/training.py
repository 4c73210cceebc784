"""DPO steps on the CPU: trl's every-position LM head (baseline) vs labelled positions only.

The align stage trains the bundled teacher (Gemma 3 270M, 262,144-token vocabulary) on pairs
whose prompts are long and whose completions are short (the demo study's question prompts
run to a few hundred tokens, the questions a few dozen). trl 1.16 scores every position on the CPU; TeachLab makes
it score only the positions that carry a label (``score_only_labelled_positions_on_cpu``).
Both paths train the same LoRA from the same seed on the same pairs, one after the other in
a process of its own; the script prints seconds per step, peak memory and the losses of each.

    python benchmarks/training.py            # 3 steps of 2 pairs on the demo task
    python benchmarks/training.py --steps 2 --batch 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import machine, prepare

PATHS = ("trl-every-position", "labelled-positions")


@dataclass
class Result:
    label: str
    seconds: list[float]
    losses: list[float]
    peak_gib: float
    task: str = ""
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0

    @property
    def per_step(self) -> float:
        timed = self.seconds[1:] or self.seconds  # the first step also warms up
        return sum(timed) / len(timed)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="bundled:gemma-3-270m")
    parser.add_argument("--task", default=None, help="task reference (default: the demo's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="pairs per step (the demo's: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=PATHS, help=argparse.SUPPRESS)  # one path, as JSON
    return parser.parse_args(argv)


def pair_rows(task: Any, tokenizer: Any, n_pairs: int, seed: int) -> list[dict[str, Any]]:
    """Pairs as the demo round makes them: the question prompt over 3 seed examples (prefill
    included), two other task questions as chosen and rejected."""
    import random

    from teachlab import prompts
    from teachlab.train.dpo import tokenize_pairs

    rng = random.Random(seed)
    examples = [e for e in task.examples if e.target]
    rows = []
    for _ in range(n_pairs):
        picked = rng.sample(examples, 5)
        inputs = [prompts.question_text(e.input, e.choices) for e in picked]
        seeds = [{"input": x, "target": e.target} for x, e in zip(inputs, picked[:3], strict=False)]
        prefill = prompts.question_prefill(len(seeds))
        messages = prompts.question_messages(task.name, task.description, seeds, 1)
        chosen, rejected = (
            prompts.question_completion(x, e.target, len(seeds), prefill)
            for x, e in zip(inputs[3:], picked[3:], strict=True)
        )
        rows.append(
            {
                "prompt": prompts.render_chat(tokenizer, messages, prefill),
                "chosen": chosen,
                "rejected": rejected,
            }
        )
    return tokenize_pairs(tokenizer, rows)


def train(
    label: str, rows: list[dict[str, Any]], args: argparse.Namespace, scratch: Path
) -> Result:
    from transformers import TrainerCallback

    from teachlab.config import StudyConfig
    from teachlab.jobs.context import LocalContext
    from teachlab.train.dpo import build_dpo_trainer

    class Clock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.losses: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

        def on_log(
            self, _args: Any, _state: Any, _control: Any, logs: Any = None, **k: Any
        ) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    config = StudyConfig(dpo_max_steps=args.steps, dpo_batch_size=args.batch, save_steps=10_000)
    clock = Clock()
    trainer = build_dpo_trainer(
        LocalContext(seed=args.seed),
        base_ref=args.teacher,
        adapter_in=None,
        rows=rows,
        config=config,
        run_dir=scratch / label,
        max_length=max(len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in rows) + 64,
        callbacks=[clock],
        ordered=True,
    )
    trainer.train()  # logs every step; save_steps above the step count: no checkpoints
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return Result(label, clock.seconds, clock.losses, peak)


def run_one(args: argparse.Namespace) -> Result:
    """Train on one path in this process (``--only``)."""
    scratch = prepare()
    from transformers import AutoTokenizer

    from teachlab.models import fetch
    from teachlab.studies import DEMO_TASK
    from teachlab.tasks import resolve_task
    from teachlab.train.common import score_only_labelled_positions_on_cpu

    task = resolve_task(args.task or DEMO_TASK)
    tokenizer = AutoTokenizer.from_pretrained(fetch(args.teacher))
    rows = pair_rows(task, tokenizer, args.steps * args.batch, args.seed)
    if args.only == "labelled-positions" and not score_only_labelled_positions_on_cpu():
        raise SystemExit("this trl has no LM-head path switch; nothing to compare")
    result = train(args.only, rows, args, scratch)
    result.prompt_tokens = sum(len(r["prompt_ids"]) for r in rows) / len(rows)
    result.completion_tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    result.completion_tokens /= 2 * len(rows)
    result.task = task.name
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only:
        print(json.dumps(asdict(run_one(args))))
        return 0
    prepare()
    print(f"machine: {machine()}")
    results = []
    for path in PATHS:  # the baseline first, each in a fresh process: peak RSS is its own
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                *(argv if argv is not None else sys.argv[1:]),
                "--only",
                path,
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            sys.stderr.write(out.stderr[-4000:])
            return out.returncode
        results.append(Result(**json.loads(out.stdout.strip().splitlines()[-1])))
    baseline, fast = results
    print(
        f"DPO, LoRA on {args.teacher}, task {baseline.task}: {args.steps} steps of {args.batch} "
        f"pairs; prompts {baseline.prompt_tokens:.0f} tokens, completions "
        f"{baseline.completion_tokens:.0f} tokens (means)"
    )
    print(f"{'path':<20} {'s/step':>7} {'peak RSS':>9}  {'steps (s)':<22} losses")
    for r in results:
        steps = " ".join(f"{s:.1f}" for s in r.seconds)
        losses = " ".join(f"{v:.4f}" for v in r.losses)
        print(f"{r.label:<20} {r.per_step:>7.1f} {r.peak_gib:>7.2f} G  {steps:<22} {losses}")
    same = len(baseline.losses) == len(fast.losses) and all(
        abs(a - b) <= 1e-3 * max(1.0, abs(a))
        for a, b in zip(baseline.losses, fast.losses, strict=True)
    )
    print(
        f"labelled positions only vs trl's every-position baseline: "
        f"{baseline.per_step / fast.per_step:.2f}x faster per step (steps after the first), "
        f"peak RSS {fast.peak_gib - baseline.peak_gib:+.2f} GiB; "
        f"losses {'equal' if same else 'DIFFER'} to 1e-3"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
