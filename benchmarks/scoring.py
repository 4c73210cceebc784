"""Student scoring throughput: the straightforward reference, TeachLab's fast path,
lm-evaluation-harness and the compute-bound limit, in one process on the same work.

    .venv/bin/python benchmarks/scoring.py [--model REF] [--task REF] [--probes 40]
        [--drafts 8] [--demo answer|rationale] [--quick]

The work: ``--drafts`` one-shot demonstrations (task examples outside the probe set, as question
and answer, or with a short rationale), each scored on the same ``--probes`` multiple-choice
items in loglik mode. The unit is one evaluation = one draft × one probe item (the student's
log-likelihood of every choice of the item after the demonstration). Paths:

(a) ``Scorer.score_reference``: one plain forward pass over the full prompt per choice;
(b) ``Scorer.score``: the demonstration prefix encoded once per draft, probes packed and batched;
(c) lm-evaluation-harness 0.4 with its ``hf`` model (``HFLM`` around the same loaded model), one
    multiple-choice task per draft whose ``description`` is the task description plus the
    demonstration, run by ``simple_evaluate`` on a local JSON file;
(d) the compute-bound limit: FLOPs of the distinct tokens the work needs (the shared description
    once, each draft's demonstration once, each probe's question once per draft, each choice's
    input tokens once as a prefix tree; 2 × non-embedding parameters per token, plus attention
    and the output head where a log-prob is read) divided by the float32 matmul rate measured
    here, at the model's layer shapes, in this run.

The fast path's predictions must equal the reference's; lm-eval's are compared too. The exit
status is 1 when the fast path and the reference disagree.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _setup

TARGETS = {"b/c": 10.0, "b/d": 0.5}
# A task-agnostic short rationale for ``--demo rationale`` (a TeachLab draft carries one).
RATIONALE = (
    "Read the sentence, recall what each of its parts means, and check every option against "
    "it; only one option fits."
)


@dataclass
class Path_:
    label: str
    seconds: float
    evaluations: int
    tokens_per_draft: float | None = None

    @property
    def rate(self) -> float:
        return self.evaluations / self.seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from teachlab.studies import DEMO_TASK

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct", help="the student")
    parser.add_argument("--task", default=DEMO_TASK, help="a multiple-choice task reference")
    parser.add_argument("--probes", type=int, default=40, help="probe items")
    parser.add_argument("--drafts", type=int, default=8, help="demonstrations, one per draft")
    parser.add_argument("--demo", choices=("answer", "rationale"), default="answer")
    parser.add_argument("--reference-drafts", type=int, default=None, help="(a) on the first N")
    parser.add_argument("--batch-size", type=int, default=16, help="fast path and lm-eval rows")
    parser.add_argument("--repeats", type=int, default=3, help="fast-path repeats (median)")
    parser.add_argument("--matmul-rows", type=int, default=512, help="rows of the timed matmuls")
    parser.add_argument("--matmul-trials", type=int, default=5, help="best of this many")
    parser.add_argument("--seed", type=int, default=0, help="which items and demonstrations")
    parser.add_argument("--no-lm-eval", action="store_true", help="skip (c)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 probes, 2 drafts")
    args = parser.parse_args(argv)
    if args.quick:
        args.probes, args.drafts, args.repeats, args.matmul_trials = 8, 2, 1, 2
    return args


def pick_items(task: Any, n_probes: int, n_drafts: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Probe items and demonstrations: disjoint task examples with choices, seeded."""
    from teachlab.score import Demo, Probe

    pool = [i for i, ex in enumerate(task.examples) if ex.choices]
    if len(pool) < n_probes + n_drafts:
        sys.exit(f"{task.source} has {len(pool)} multiple-choice examples; fewer are needed.")
    random.Random(seed).shuffle(pool)
    probes = [
        Probe(i, task.examples[i].input, task.examples[i].target, task.examples[i].choices)
        for i in pool[:n_probes]
    ]
    demos = [
        Demo(task.examples[i].input, task.examples[i].target)
        for i in pool[n_probes : n_probes + n_drafts]
    ]
    return probes, demos


def with_rationales(demos: Sequence[Any]) -> list[Any]:
    from teachlab.score import Demo

    return [Demo(d.question, d.answer, f"{RATIONALE} <ans>{d.answer}</ans>") for d in demos]


def verdict(value: float, target: float) -> str:
    return f"(target >= {target:g}: {'met' if value >= target else 'missed'})"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ---------------------------------------------------------------- (a) and (b)


def run_reference(model: Any, tok: Any, desc: str, probes: Any, demos: Sequence[Any]) -> Any:
    from teachlab.score import Scorer

    scorer = Scorer(model, tok, desc, probes, mode="loglik")
    return [scorer.score_reference([d]) for d in demos]


def run_fast(model: Any, tok: Any, desc: str, probes: Any, demos: Sequence[Any], bs: int) -> Any:
    from teachlab.score import Scorer

    scorer = Scorer(model, tok, desc, probes, mode="loglik", batch_size=bs)
    return [scorer.score([d]) for d in demos]


def compare(fast: Sequence[Sequence[Any]], ref: Sequence[Sequence[Any]]) -> tuple[int, int, float]:
    """(items with the same prediction, items compared, max |Δ log p(gold)|)."""
    same, total, delta = 0, 0, 0.0
    for f_draft, r_draft in zip(fast, ref, strict=False):
        for f, r in zip(f_draft, r_draft, strict=True):
            total += 1
            same += (f.predicted, f.correct) == (r.predicted, r.correct)
            delta = max(delta, abs(f.gold_logprob - r.gold_logprob))
    return same, total, delta


# ---------------------------------------------------------------- (c) lm-evaluation-harness


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def write_tasks(folder: Path, desc: str, probes: Sequence[Any], demos: Sequence[Any]) -> list[str]:
    """One YAML task per draft over one JSON file of the probe items: TeachLab's prompt text,
    ``description`` = task description + demonstration, ``" {choice}"`` continuations."""
    import yaml

    from teachlab.score.prompt import demo_segment, description_segment

    folder.mkdir(parents=True)
    data = folder / "probes.jsonl"
    rows = [
        {"input": p.input.strip(), "choices": [c.strip() for c in p.choices]}
        | {"gold": p.choices.index(p.target)}
        for p in probes
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = folder / "tasks"
    tasks.mkdir()
    names = []
    for k, demo in enumerate(demos):
        name = f"teachlab_bench_{k}"
        text = description_segment(desc) + demo_segment(demo)
        config = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            # lm-eval renders the description as a Jinja template; raw keeps it verbatim.
            "description": "{% raw %}" + text + "{% endraw %}",
            "doc_to_text": "Question: {{input}}\nAnswer:",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names.append(name)
    return names


def run_lm_eval(
    model: Any, tok: Any, names: list[str], task_dir: Path, batch_size: int
) -> tuple[Any, Any]:
    """``simple_evaluate`` on the tasks with an HFLM around the loaded model, counting the
    tokens it runs through the model (padding included) and the time its loglikelihood calls
    take."""
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    class CountedHFLM(HFLM):
        tokens = 0
        seconds = 0.0

        def _model_call(self, inps: Any, attn_mask: Any = None, labels: Any = None) -> Any:
            self.tokens += int(inps.numel())
            return super()._model_call(inps, attn_mask, labels)

        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            start = time.perf_counter()
            try:
                return super().loglikelihood(requests, disable_tqdm=True)
            finally:
                self.seconds += time.perf_counter() - start

    lm = CountedHFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    results = simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=True,
        cache_requests=False,
    )
    return lm, results


def lm_eval_checks(
    lm: Any, results: Any, names: list[str], scorer: Any, demos: Sequence[Any], ref: Any
) -> dict[str, Any]:
    """Compare lm-eval's prompts (strings and token ids) and predictions with TeachLab's."""
    from teachlab.score import render

    n_req = same_text = same_ids = extra_tokens = agree = items = 0
    delta = 0.0
    for k, (name, demo) in enumerate(zip(names, demos, strict=True)):
        for sample in results["samples"][name]:
            pos = int(sample["doc_id"])
            probe = scorer.probes[pos]
            for (context, continuation), choice in zip(
                sample["arguments"], probe.choices, strict=True
            ):
                n_req += 1
                expected = render(scorer.description, [demo], probe, "loglik", choice)
                same_text += context + continuation == expected
                ctx_ids, cont_ids = lm._encode_pair(context, continuation)
                ours = scorer.prompt_ids([demo], probe, choice)
                same_ids += ctx_ids + cont_ids == ours
                extra_tokens += len(ctx_ids) + len(cont_ids) - len(ours)
            if k < len(ref):
                items += 1
                outcome = ref[k][pos]
                agree += bool(sample["acc"]) == outcome.correct
                gold = probe.choices.index(probe.target)
                loglik = float(sample["filtered_resps"][gold][0])
                delta = max(delta, abs(loglik - outcome.gold_logprob))
    return {
        "requests": n_req,
        "same_text": same_text,
        "same_ids": same_ids,
        "extra_tokens": extra_tokens / max(1, n_req),
        "agree": agree,
        "items": items,
        "delta": delta,
    }


# ---------------------------------------------------------------- (d) compute bound


def model_shapes(model: Any) -> tuple[int, int, int, int]:
    """(non-embedding parameters, output-head parameters, layers, attention width)."""
    params = {id(p): p.numel() for p in model.parameters()}
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = sum(params.values()) - embed.numel() - (0 if head is embed else head.numel())
    cfg = model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return body, head.numel(), cfg.num_hidden_layers, cfg.num_attention_heads * head_dim


def shared_tokens(scorer: Any) -> int:
    return len(scorer.builder.special_ids) + len(scorer.builder.description_ids)


def distinct_work(scorer: Any, demos: Sequence[Any]) -> tuple[int, int, int]:
    """(tokens, attended (query, key) pairs, positions whose logits are read) of the least
    computation the work needs: the shared description once; per draft its demonstration,
    each question, and each probe's choices as a prefix tree of their input tokens (a choice's
    last token is only read, never fed); every token attends to its causal context."""
    builder = scorer.builder
    shared = shared_tokens(scorer)
    tokens, pairs, logit_rows = shared, shared * (shared + 1) // 2, 0
    for demo in demos:
        prefix = len(builder.prefix_ids([demo]))
        tokens += prefix - shared
        pairs += sum(p + 1 for p in range(shared, prefix))
        for question, cands in zip(scorer.question_ids, scorer.candidate_ids, strict=True):
            nodes = {tuple(c[:k]) for c in cands for k in range(1, len(c))}
            tokens += len(question) + len(nodes)
            pairs += sum(prefix + j + 1 for j in range(len(question)))
            pairs += sum(prefix + len(question) + len(node) for node in nodes)
            logit_rows += 1 + len(nodes)
    return tokens, pairs, logit_rows


def matmul_rate(model: Any, rows: int, trials: int) -> float:
    """FLOP/s of float32 ``linear`` at the shapes of one decoder layer's projections (each shape
    weighted by its FLOPs, as the model runs them), best of ``trials`` per shape."""
    import torch
    import torch.nn.functional as F

    layer = model.get_decoder().layers[0]
    shapes = [
        (m.in_features, m.out_features) for m in layer.modules() if isinstance(m, torch.nn.Linear)
    ]
    flops, seconds = 0.0, 0.0
    with torch.inference_mode():
        for fin, fout in shapes:
            x, w = torch.randn(rows, fin), torch.randn(fout, fin)
            per_call = 2.0 * rows * fin * fout
            reps = max(3, int(1e10 / per_call))  # ~50 ms per trial at 200 GFLOP/s
            F.linear(x, w)
            best = math.inf
            for _ in range(trials):
                start = time.perf_counter()
                for _ in range(reps):
                    F.linear(x, w)
                best = min(best, (time.perf_counter() - start) / reps)
            flops += per_call
            seconds += best
    return flops / seconds


# ---------------------------------------------------------------- report


def main(argv: Sequence[str] | None = None) -> int:
    scratch = _setup.prepare()
    args = parse_args(argv)
    from teachlab import models
    from teachlab.score import Scorer, accuracy
    from teachlab.tasks import resolve_task

    task = resolve_task(args.task)
    probes, demos = pick_items(task, args.probes, args.drafts, args.seed)
    if args.demo == "rationale":
        demos = with_rationales(demos)
    loaded = models.load(args.model)
    model, tok, desc = loaded.model, loaded.tokenizer, task.description
    n_eval = len(probes) * len(demos)
    ref_demos = demos[: args.reference_drafts or len(demos)]

    scorer = Scorer(model, tok, desc, probes, mode="loglik", batch_size=args.batch_size)
    scorer.score([demos[0]])  # warm-up, untimed
    rates = [matmul_rate(model, args.matmul_rows, args.matmul_trials)]

    fast_runs = [
        timed(lambda: run_fast(model, tok, desc, probes, demos, args.batch_size))
        for _ in range(max(1, args.repeats))
    ]
    fast_s, fast = statistics.median(s for s, _ in fast_runs), fast_runs[-1][1]
    ref_s, ref = timed(lambda: run_reference(model, tok, desc, probes, ref_demos))

    # Measured again after the timed paths: the best of both is the bound's rate.
    rates.append(matmul_rate(model, args.matmul_rows, args.matmul_trials))
    rate = max(rates)
    body, head, layers, width = model_shapes(model)
    tokens, pairs, logit_rows = distinct_work(scorer, demos)
    bound_flops = 2.0 * body * tokens + 4.0 * layers * width * pairs + 2.0 * head * logit_rows
    ref_tokens = sum(
        len(scorer.prompt_ids([d], p, c)) for d in ref_demos for p in probes for c in p.choices
    ) / len(ref_demos)
    # The fast path feeds each draft's whole prefix (description included) and packed rows.
    fast_tokens = (tokens + (len(demos) - 1) * shared_tokens(scorer)) / len(demos)

    paths = {
        "a": Path_(
            "(a) reference: one forward per choice", ref_s, len(probes) * len(ref_demos), ref_tokens
        ),
        "b": Path_("(b) TeachLab fast path (Scorer.score)", fast_s, n_eval, fast_tokens),
    }
    lm_checks = None
    if args.no_lm_eval:
        print("(c) skipped: --no-lm-eval")
    elif not lm_eval_available():
        print("(c) skipped: lm_eval is not installed (pip install -e '.[bench]')")
    else:
        names = write_tasks(scratch / "lm-eval", desc, probes, demos)
        lm_s, (lm, results) = timed(
            lambda: run_lm_eval(model, tok, names, scratch / "lm-eval" / "tasks", args.batch_size)
        )
        paths["c"] = Path_(
            "(c) lm-eval-harness hf, simple_evaluate", lm_s, n_eval, lm.tokens / len(demos)
        )
        paths["model"] = Path_(
            "    of which HFLM.loglikelihood calls", lm.seconds, n_eval, lm.tokens / len(demos)
        )
        lm_checks = lm_eval_checks(lm, results, names, scorer, demos, ref)
    paths["d"] = Path_(
        "(d) compute bound (distinct tokens)", bound_flops / rate, n_eval, tokens / len(demos)
    )

    fast_acc = [accuracy(o) for o in fast]
    ref_acc = [accuracy(o) for o in ref]
    same, compared, delta = compare(fast, ref)
    exact = same == compared and fast_acc[: len(ref_acc)] == ref_acc

    demo_kind = "question + answer" if args.demo == "answer" else "question + short rationale"
    print()
    print(f"Scoring throughput: {args.model} on {args.task}, loglik mode, 1-shot ({demo_kind})")
    print(
        f"{len(probes)} probe items x {len(demos)} drafts = {n_eval} evaluations "
        "(evaluation = draft x probe item)"
    )
    print(f"machine: {_setup.machine()}")
    print(
        f"matmul rate: {rate / 1e9:.1f} GFLOP/s (float32 linear at the model's layer shapes, "
        f"{args.matmul_rows} rows, best of {args.matmul_trials} before and after the paths: "
        f"{', '.join(f'{r / 1e9:.1f}' for r in rates)})"
    )
    print(
        f"compute bound: {tokens} distinct tokens, {bound_flops / 1e9:.1f} GFLOP "
        f"({body / 1e6:.1f}M non-embedding parameters, head {head / 1e6:.1f}M on "
        f"{logit_rows} read positions, attention included)"
    )
    print()
    print(f"{'path':<42} {'evals/s':>9} {'seconds':>9} {'tokens/draft':>13} {'vs (b)':>8}")
    for path in paths.values():
        tokens_col = f"{path.tokens_per_draft:.0f}" if path.tokens_per_draft else "-"
        print(
            f"{path.label:<42} {path.rate:>9.2f} {path.seconds:>9.2f} {tokens_col:>13} "
            f"{path.rate / paths['b'].rate:>7.2f}x"
        )
    print()
    print(
        f"fast path = reference: {'yes' if exact else 'NO'} ({same} of {compared} predictions, "
        f"accuracy per draft {[round(a, 3) for a in fast_acc[: len(ref_acc)]]} vs "
        f"{[round(a, 3) for a in ref_acc]}, max |d log p(gold)| {delta:.1e})"
    )
    print(f"fast path repeats (s): {[round(s, 2) for s, _ in fast_runs]}, median used")
    if lm_checks:
        c = lm_checks
        print(
            f"lm-eval prompts: {c['same_text']} of {c['requests']} requests have TeachLab's text; "
            f"{c['same_ids']} its token ids (lm-eval tokenises the whole text, TeachLab segment "
            f"by segment; lm-eval's are {c['extra_tokens']:+.1f} tokens per request)"
        )
        print(
            f"lm-eval predictions agree with the reference on {c['agree']} of {c['items']} items "
            f"(max |d log p(gold)| {c['delta']:.2f}, from the different token ids)"
        )
        print(
            f"b/c counting lm-eval's model calls only: {paths['b'].rate / paths['model'].rate:.2f}"
        )
    print()
    b = paths["b"].rate
    print(f"b/a = {b / paths['a'].rate:.2f}")
    if "c" in paths:
        print(f"b/c = {b / paths['c'].rate:.2f}  {verdict(b / paths['c'].rate, TARGETS['b/c'])}")
    else:
        print("b/c = n/a (lm-eval not run)")
    print(f"b/d = {b / paths['d'].rate:.2f}  {verdict(b / paths['d'].rate, TARGETS['b/d'])}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
