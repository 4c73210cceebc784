"""The benchmark scripts: the compute-bound arithmetic by hand, and (slow, the bundled models)
smoke runs of ``benchmarks/scoring.py``, ``generation.py`` (``--quick``) and ``training.py``."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NUMBER = r"(\d+(?:\.\d+)?)"


def _scoring_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their sibling _setup
    return importlib.import_module("scoring")


class _Builder:
    def __init__(self) -> None:
        self.special_ids: list[int] = []
        self.description_ids = [1, 2]

    def prefix_ids(self, demos: list[Any]) -> list[int]:
        return [1, 2] + [3, 4, 5] * len(demos)


def test_distinct_work_counts_each_token_once(monkeypatch: pytest.MonkeyPatch) -> None:
    scoring = _scoring_module(monkeypatch)
    scorer = SimpleNamespace(
        builder=_Builder(),
        question_ids=[[20, 21]],
        # " 7" is read only; " 8 9 10" and " 8 9 11" share their input tokens 8, 9.
        candidate_ids=[[[7], [8, 9, 10], [8, 9, 11]]],
    )
    tokens, pairs, logit_rows = scoring.distinct_work(scorer, ["draft 1", "draft 2"])
    # description 2 once; per draft: demonstration 3 + question 2 + tree nodes (8), (8, 9)
    assert tokens == 2 + 2 * (3 + 2 + 2)
    # causal pairs: description 1+2; per draft: demo at positions 2..4 (3+4+5), question at
    # 5, 6 (6+7), tree nodes after the question at depth 1 and 2 (8+9)
    assert pairs == 3 + 2 * (12 + 13 + 17)
    # logits read: the question's last position and each tree node, per draft
    assert logit_rows == 2 * 3


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _value(out: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} = {NUMBER}", out, re.MULTILINE)
    assert match, f"no '{name} = …' line in:\n{out}"
    return float(match.group(1))


@pytest.mark.slow
def test_scoring_benchmark_prints_the_table_and_the_ratios_last() -> None:
    out = _run("scoring.py", "--quick", "--no-lm-eval")
    for row in ("(a) reference", "(b) TeachLab fast path", "(d) compute bound"):
        assert re.search(rf"^{re.escape(row)}.* {NUMBER} +{NUMBER} ", out, re.MULTILINE), out
    assert "8 probe items x 2 drafts = 16 evaluations" in out
    assert "fast path = reference: yes (16 of 16 predictions" in out
    last = out.strip().splitlines()[-3:]
    assert [line.split(" =")[0] for line in last] == ["b/a", "b/c", "b/d"]
    assert last[1] == "b/c = n/a (lm-eval not run)"
    assert _value(out, "b/a") > 0 and _value(out, "b/d") > 0


@pytest.mark.slow
def test_scoring_benchmark_runs_lm_eval_on_the_same_prompt_text() -> None:
    pytest.importorskip(
        "lm_eval",
        reason="lm-evaluation-harness is not installed; `make bench` (or "
        "`pip install -e '.[bench]'`) installs it for path (c)",
    )
    out = _run("scoring.py", "--quick")
    assert re.search(r"^\(c\) lm-eval-harness hf.* \d+\.\d+ ", out, re.MULTILINE), out
    # One request per choice of each of the 8 probe items, for each of the 2 drafts; every
    # one with TeachLab's prompt text.
    same = re.search(r"^lm-eval prompts: (\d+) of (\d+) requests have TeachLab's text", out, re.M)
    assert same, out
    assert same.group(1) == same.group(2), out
    assert int(same.group(2)) >= 16 * 2 and int(same.group(2)) % 16 == 0, out
    assert re.search(r"^lm-eval predictions agree with the reference on \d+ of 16 items", out, re.M)
    assert _value(out, "b/c") > 0
    assert out.strip().splitlines()[-1].startswith("b/d = ")


@pytest.mark.slow
def test_generation_benchmark_prints_the_batched_to_single_ratio() -> None:
    out = _run("generation.py", "--quick")
    for workload in ("rationales", "questions"):
        value = re.search(
            rf"^batched/single-stream tokens per second, {workload} = {NUMBER}", out, re.MULTILINE
        )
        assert value and float(value.group(1)) > 0, out
    rows = re.findall(r"^(single-stream|batched \(2 rows\)) +[\d.]+ +(\d+) ", out, re.MULTILINE)
    assert len(rows) == 4 and all(int(tokens) > 0 for _, tokens in rows), out


@pytest.mark.slow
def test_training_benchmark_runs_both_lm_head_paths_to_the_same_losses() -> None:
    steps = 2
    out = _run(
        "training.py", "--teacher", "bundled:smollm2-135m-instruct", "--steps", str(steps),
        "--batch", "1",
    )  # fmt: skip
    rows = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line.startswith(("trl-every-position ", "labelled-positions "))
    }
    assert list(rows) == ["trl-every-position", "labelled-positions"], out
    losses = []
    for per_step, peak, unit, *rest in rows.values():
        assert float(per_step) > 0 and float(peak) > 0 and unit == "G"
        assert len(rest) == 2 * steps and all(float(v) > 0 for v in rest), out
        losses.append(rest[steps:])
    assert losses[0] == losses[1], out  # the same losses, printed to 4 places
    assert re.search(rf"baseline: {NUMBER}x faster .* losses equal to 1e-3$", out, re.MULTILINE)
