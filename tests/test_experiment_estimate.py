"""The compute estimate: hand-checked token and FLOP arithmetic, what scales with seeds, arms and
tasks, the paper's config estimated offline, GPU names, estimate-vs-measured, calibration."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from teachlab.config import StudyConfig
from teachlab.errors import ConfigError
from teachlab.experiments.calibration import Calibration
from teachlab.experiments.estimate import (
    ACCELERATORS,
    UTILISATION,
    accelerator,
    against,
    build,
    estimate,
)
from teachlab.experiments.estimate_text import render
from teachlab.experiments.lengths import ModelInfo, TaskShape, model_info, task_shape, token_counter
from teachlab.experiments.spec import ExperimentSpec, read_config
from tests.conftest import bigbench_available

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper-arte.toml"

# Round numbers, so every figure below can be worked out by hand.
SHAPE = TaskShape(
    task="t",
    available=None,
    source="defaults",
    question_prompt=100,
    question_block=20,
    rationale_prompt=30,
    plain_prompt=25,
    scaffold_passes=0,
    special=1,
    description=9,
    question=10,
    question_cot=15,
    choices=4,
    answer=2,
    shot=12,
    demo_head=10,
)
# No layers: the attention term is off, so FLOPs are 2 P a token forward.
MODELS = {"teacher": ModelInfo("T", 1000.0), "student": ModelInfo("S", 100.0)}
STUDY = dict(
    n_questions=4,
    n_rationales=2,
    questions_per_call=2,
    max_new_tokens=50,
    n_probe=3,
    n_test=5,
    n_tailored=2,
    dpo_max_steps=0,
    dpo_batch_size=2,
    sft_max_steps=0,
    sft_batch_size=2,
    lora=False,
)


def hand_spec(**changes: object) -> ExperimentSpec:
    spec = ExperimentSpec(
        name="hand",
        tasks=("t",),
        arms=("arte",),
        seeds=(0,),
        teacher="T",
        student="S",
        study=StudyConfig.from_dict(STUDY),
        eval_modes=("loglik",),
        eval_shots=(0,),
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def rows_by_key(est: object) -> dict[tuple[str, str | None], object]:
    return {(r.stage, r.arm): r for r in est.rows}  # type: ignore[attr-defined]


def calibration(role: str, prefill: float, decode: float, train: float) -> Calibration:
    return Calibration(role, f"bundled:{role}", 1.0, 1.0, prefill, 8, 1.0, decode, 1.0, train, 0.0)


def test_tokens_and_flops_match_a_hand_computation() -> None:
    est = build(hand_spec(), {"t": SHAPE}, MODELS)
    rows = rows_by_key(est)
    assert list(rows) == [
        ("draft", None),
        ("score", None),
        ("pairs", None),
        ("align", "arte"),
        ("regenerate", "arte"),
        ("distill", "arte"),
        ("evaluate", "arte"),
    ]
    # draft: 2 question calls share one 100-token prompt (99 read once + the last token of
    # each row), each writes 2 questions of 20 tokens; 4 x 2 rationale calls read 30, write 50.
    draft = rows[("draft", None)]
    assert draft.tokens_scored == 99 + 2 + 8 * 30
    assert draft.tokens_generated == 2 * 40 + 8 * 50
    assert draft.flops == 2 * 1000 * (341 + 480)
    # score: 8 drafts, prefix special 1 + description 9 + demo 10 + rationale 50 = 70, then
    # 3 probes of question 10 + choices 4; the zero-shot baseline has a 10-token prefix.
    score = rows[("score", None)]
    assert score.tokens_scored == 8 * (70 + 3 * 14) + (10 + 3 * 14)
    assert score.flops == 2 * 100 * 948
    assert rows[("pairs", None)].flops == 0
    # align: 1 question pair (floor(4 x 0.25)) of 100 + 20 and 4 rationale pairs of 25 + 50;
    # ceil(5 / 2) = 3 steps of 2 pairs, two sequences each of the mean length 84; full
    # fine-tuning 6 P a token plus the reference's forward 2 P.
    align = rows[("align", "arte")]
    assert align.tokens_trained == 3 * 2 * 2 * 84
    assert align.flops == pytest.approx(1008 * 8 * 1000)
    # regenerate: 1 question call (shared prompt: 99 + 1 read, 40 written), 2 plain-prompt
    # rationales (25 read, 50 written each).
    regen = rows[("regenerate", "arte")]
    assert (regen.tokens_scored, regen.tokens_generated) == (100 + 50, 40 + 100)
    assert regen.flops == 2 * 1000 * 290
    # distill: 2 examples of 1 + 9 + 15 + 1 + 50 = 76 tokens, one step of 2, 6 P a token.
    distill = rows[("distill", "arte")]
    assert distill.tokens_trained == 152
    assert distill.flops == pytest.approx(6 * 100 * 152)
    # evaluate, loglik 0-shot: prefix 10, then 5 test items of 14.
    assert rows[("evaluate", "arte")].tokens_scored == 10 + 5 * 14
    assert rows[("evaluate", "arte")].flops == 2 * 100 * 80
    assert est.total().flops == pytest.approx(sum(r.flops for r in est.rows))


def test_scaffolded_questions_read_their_prompt_again_for_each_later_pass() -> None:
    study = StudyConfig.from_dict({**STUDY, "scaffold": True})
    shape = replace(SHAPE, scaffold_passes=2)  # target and options
    rows = rows_by_key(build(hand_spec(study=study), {"t": shape}, MODELS))
    # One question a call: 4 calls share the 100-token prompt (99 + 4 read) and write 20 each;
    # then 2 passes x 4 rows read prompt 100 + the 20 written; 8 rationale calls as before.
    draft = rows[("draft", None)]
    assert draft.tokens_scored == 99 + 4 + 2 * 4 * 120 + 8 * 30
    assert draft.tokens_generated == 4 * 20 + 8 * 50
    # regenerate: 2 tailored calls (99 + 2, then 2 x 2 x 120) and 2 rationales of 25.
    assert rows[("regenerate", "arte")].tokens_scored == 99 + 2 + 2 * 2 * 120 + 2 * 25


@pytest.mark.skipif(not bigbench_available("ruin_names"), reason="BIG-bench not fetched")
def test_scaffold_passes_follow_how_the_task_shows_its_options() -> None:
    counters = token_counter("bundled:gemma-3-270m"), token_counter("bundled:smollm2-135m-instruct")
    plain = StudyConfig.from_dict(STUDY)
    scaffold = StudyConfig.from_dict({**STUDY, "scaffold": True})
    # ruin_names: each question its own options, written in a pass of their own.
    assert task_shape("bigbench:ruin_names", scaffold, *counters).scaffold_passes == 2
    assert task_shape("bigbench:ruin_names", plain, *counters).scaffold_passes == 0


def test_time_here_and_on_a_gpu_follow_the_rates() -> None:
    rates = [
        calibration("teacher", 1000.0, 100.0, 500.0),
        calibration("student", 200.0, 20.0, 50.0),
    ]
    est = build(hand_spec(), {"t": SHAPE}, MODELS, calibration=rates, gpu="2xh100")
    draft = rows_by_key(est)[("draft", None)]
    # Prefill FLOPs at the prefill rate, decoding at the decode rate, per role.
    assert draft.seconds_here == pytest.approx(2000 * 341 / 1000 + 2000 * 480 / 100)
    gpu = ACCELERATORS["h100"]
    compute = 2000 * 341 / (2 * gpu.peak_flops * UTILISATION["prefill"])
    decode_memory = 480 / 64 * 2 * 1000 / (2 * gpu.bandwidth * UTILISATION["decode_bandwidth"])
    decode_compute = 2000 * 480 / (2 * gpu.peak_flops * UTILISATION["prefill"])
    assert draft.seconds_gpu == pytest.approx(compute + max(decode_memory, decode_compute))
    align = rows_by_key(est)[("align", "arte")]
    assert align.seconds_here == pytest.approx(align.flops / 500.0)
    assert align.seconds_gpu == pytest.approx(
        align.flops / (2 * gpu.peak_flops * UTILISATION["train"])
    )
    assert est.gpu == f"2x {gpu.label}"


def test_attention_term_is_added_where_the_shape_is_known() -> None:
    shaped = {
        "teacher": ModelInfo("T", 1000.0, layers=2, attn_width=4),
        "student": MODELS["student"],
    }
    plain = rows_by_key(build(hand_spec(), {"t": SHAPE}, MODELS))
    more = rows_by_key(build(hand_spec(), {"t": SHAPE}, shaped))
    # The 8 rationale calls: 30 prompt tokens from scratch, then 50 new after them; 4 x layers x
    # width per (query, key) pair over the causal context.
    pairs_prompt = 30 * 31 / 2
    pairs_new = 50 * 30 + 50 * 51 / 2
    # The 2 question calls: 99 shared tokens once, then one token per row after them, then 40
    # new after the 100-token prompt.
    pairs_questions = 99 * 100 / 2 + 2 * (99 + 1) + 2 * (40 * 100 + 40 * 41 / 2)
    extra = 4 * 2 * 4 * (8 * (pairs_prompt + pairs_new) + pairs_questions)
    assert more[("draft", None)].flops - plain[("draft", None)].flops == pytest.approx(extra)
    assert more[("score", None)].flops == plain[("score", None)].flops  # the student has none


def test_two_seeds_double_every_row() -> None:
    rates = [
        calibration("teacher", 1000.0, 100.0, 500.0),
        calibration("student", 200.0, 20.0, 50.0),
    ]
    one = build(hand_spec(), {"t": SHAPE}, MODELS, calibration=rates, gpu="a100")
    two = build(hand_spec(seeds=(0, 1)), {"t": SHAPE}, MODELS, calibration=rates, gpu="a100")
    for a, b in zip(one.rows, two.rows, strict=True):
        assert (b.stage, b.arm, b.runs) == (a.stage, a.arm, 2 * a.runs)
        assert b.tokens_generated == 2 * a.tokens_generated
        assert b.tokens_scored == 2 * a.tokens_scored
        assert b.tokens_trained == 2 * a.tokens_trained
        assert b.flops == pytest.approx(2 * a.flops)
        assert b.seconds_here == pytest.approx(2 * a.seconds_here)
        assert b.seconds_gpu == pytest.approx(2 * a.seconds_gpu)
    assert two.total().flops == pytest.approx(2 * one.total().flops)


def test_arms_add_only_their_own_stages() -> None:
    def keys(*arms: str) -> set[tuple[str, str | None]]:
        return set(rows_by_key(build(hand_spec(arms=arms), {"t": SHAPE}, MODELS)))

    shared = {("draft", None), ("score", None), ("pairs", None)}
    assert keys("student") == shared | {("evaluate", "student")}
    # original has no pairs: its teacher is not aligned.
    assert keys("original") == shared | {
        ("regenerate", "original"),
        ("distill", "original"),
        ("evaluate", "original"),
    }
    assert keys("gold") == shared | {("distill", "gold"), ("evaluate", "gold")}
    both = keys("original", "arte")
    assert ("align", "arte") in both and ("align", "original") not in both
    assert keys("random-pairs") >= {("align", "random-pairs"), ("regenerate", "random-pairs")}


def test_more_tasks_scale_per_task_stages_and_pool_training() -> None:
    one = rows_by_key(build(hand_spec(), {"t": SHAPE}, MODELS))
    two = rows_by_key(
        build(hand_spec(tasks=("t", "u")), {"t": SHAPE, "u": replace(SHAPE, task="u")}, MODELS)
    )
    for key in [("draft", None), ("score", None), ("regenerate", "arte"), ("evaluate", "arte")]:
        assert two[key].runs == 2 * one[key].runs
        assert two[key].flops == pytest.approx(2 * one[key].flops)
    # One DPO run on both tasks' 10 pairs: ceil(10 / 2) = 5 steps, still one run.
    assert two[("align", "arte")].runs == 1
    assert two[("align", "arte")].tokens_trained == 5 * 2 * 2 * 84
    assert two[("distill", "arte")].tokens_trained == 2 * 2 * 76


def test_eval_modes_and_shots_multiply_evaluation() -> None:
    spec = hand_spec(eval_modes=("loglik", "cot"), eval_shots=(0, 3), cot_max_tokens=7)
    row = rows_by_key(build(spec, {"t": SHAPE}, MODELS))[("evaluate", "arte")]
    loglik = (10 + 5 * 14) + (10 + 36 + 5 * 14)  # 3 shots of 12 tokens in the prefix
    cot = (10 + 5 * 15) + (10 + 36 + 5 * 15)
    assert row.tokens_scored == loglik + cot
    assert row.tokens_generated == 2 * 5 * 7


def test_step_caps_set_the_training_rows() -> None:
    study = replace(hand_spec().study, dpo_max_steps=4, dpo_batch_size=3, lora=True)
    row = rows_by_key(build(hand_spec(study=study), {"t": SHAPE}, MODELS))[("align", "arte")]
    assert row.tokens_trained == 4 * 3 * 2 * 84
    assert row.flops == pytest.approx(row.tokens_trained * (4 + 2) * 1000)  # LoRA: 4 P + ref 2 P


def test_unknown_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as info:
        estimate(hand_spec(), gpu="v100", calibrate=False)
    for name in ACCELERATORS:
        assert name in str(info.value)
    assert accelerator("8xa100") == (ACCELERATORS["a100"], 8)
    assert accelerator("8×H100") == (ACCELERATORS["h100"], 8)
    assert accelerator("l4") == (ACCELERATORS["l4"], 1)


def test_a_model_that_cannot_be_read_needs_sizes() -> None:
    with pytest.raises(ConfigError, match=r"\[sizes\]"):
        model_info("someone/not-cached-here", "teacher", None)
    assert model_info("someone/not-cached-here", "teacher", 7e9).params == 7e9


def test_bundled_models_are_read_from_their_folders() -> None:
    info = model_info("bundled:smollm2-135m-instruct", "student", None)
    assert 1.3e8 < info.params < 1.4e8
    assert info.layers == 30 and info.attn_width == 576
    assert info.source == "safetensors headers"


def test_calibrate_false_skips_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    import teachlab.experiments.estimate as module

    def boom(*args: object) -> None:
        raise AssertionError("calibration ran")

    monkeypatch.setattr(module, "calibrate_here", boom)
    spec = hand_spec(
        tasks=("file:/nonexistent/task.jsonl",),
        teacher="bundled:gemma-3-270m",
        student="bundled:smollm2-135m-instruct",
    )
    est = estimate(spec, calibrate=False)
    assert est.calibration == []
    assert all(r.seconds_here is None for r in est.rows)
    assert est.shapes[0].source == "defaults"
    assert any("No task data" in w for w in est.warnings)
    text = render(est)
    assert "Not calibrated" in text and "Assumptions:" in text
    json.dumps(est.to_dict())  # storable as the experiment's estimate


@pytest.mark.skipif(not bigbench_available("sports_understanding"), reason="BIG-bench not fetched")
def test_task_lengths_come_from_the_task_data() -> None:
    config = StudyConfig.from_dict(STUDY)
    shape = task_shape(
        "bigbench:sports_understanding",
        config,
        token_counter("bundled:gemma-3-270m"),
        token_counter("bundled:smollm2-135m-instruct"),
    )
    assert shape.source == "task data" and shape.available and shape.available > 500
    assert shape.question_prompt > 2 * shape.question_block > 0
    assert shape.rationale_prompt > shape.plain_prompt > 0
    assert shape.choices > 0 and shape.description > 0 and shape.question_cot > shape.question > 0


@pytest.mark.skipif(not bigbench_available("sports_understanding"), reason="BIG-bench not fetched")
def test_paper_config_parses_and_estimates_offline() -> None:
    spec = ExperimentSpec.from_dict(read_config(PAPER))
    assert spec.teacher == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert spec.study.n_questions == 250 and spec.study.n_probe == 40 and not spec.study.lora
    assert spec.arms == ("student", "original", "arte") and len(spec.tasks) >= 20
    est = estimate(spec, gpu="8xa100", calibrate=False)
    assert est.models["teacher"].params == 70.55e9
    assert "[sizes]" in est.models["teacher"].source
    rows = rows_by_key(est)
    assert ("align", "arte") in rows and ("align", "original") not in rows
    total = est.total()
    assert 1e18 < total.flops < 1e20
    assert total.seconds_gpu is not None and 3600 < total.seconds_gpu < 7 * 86400
    assert any("ZeRO-3" in w for w in est.warnings)  # 70B full fine-tuning on 640 GB
    assert "8x NVIDIA A100" in render(est)


def test_against_sums_measured_rows_and_computes_ratios() -> None:
    rates = [
        calibration("teacher", 1000.0, 100.0, 500.0),
        calibration("student", 200.0, 20.0, 50.0),
    ]
    est = build(hand_spec(), {"t": SHAPE}, MODELS, calibration=rates)
    draft = rows_by_key(est)[("draft", None)]
    measured = [  # two tasks' rows of one stage are summed
        {"stage": "draft", "arm": None, "seconds": draft.seconds_here, "tokens_generated": 240},
        {"stage": "draft", "arm": None, "seconds": draft.seconds_here, "tokens_generated": 240},
        {"stage": "align", "arm": "arte", "seconds": 1.0, "tokens_scored": 504},
        {"stage": "check", "arm": None, "seconds": 5.0},
    ]
    rows = {(r["stage"], r["arm"], r["quantity"]): r for r in against(est, measured)}
    assert rows[("draft", None, "seconds")]["ratio"] == pytest.approx(2.0)
    assert rows[("draft", None, "tokens_generated")]["ratio"] == pytest.approx(240 * 2 / 480)
    align = rows[("align", "arte", "tokens_read")]  # trained tokens count as read
    assert align["estimated"] == 1008 and align["ratio"] == pytest.approx(0.5)
    assert rows[("evaluate", "arte", "seconds")]["measured"] is None
    assert rows[("evaluate", "arte", "seconds")]["ratio"] is None
    assert rows[("check", None, "seconds")]["estimated"] is None
    total = rows[("total", None, "seconds")]  # over the stages both sides have
    align_here = rows_by_key(est)[("align", "arte")].seconds_here
    assert total["estimated"] == pytest.approx(draft.seconds_here + align_here)
    assert math.isclose(total["measured"], 2 * draft.seconds_here + 1.0)


@pytest.mark.slow
def test_real_calibration_measures_both_bundled_models() -> None:
    from teachlab.experiments.estimate import calibrate_here

    found = {c.role: c for c in calibrate_here()}
    assert set(found) == {"student", "teacher"}
    for c in found.values():
        # Prefill and training run batched matmuls; decoding a few rows is far slower a token.
        assert c.prefill_tokens_per_s > c.decode_tokens_per_s > 0
        assert c.prefill_flops > c.decode_flops > 0 and c.train_flops > 0
    spec = hand_spec(teacher="bundled:gemma-3-270m", student="bundled:smollm2-135m-instruct")
    est = build(spec, {"t": SHAPE}, MODELS, calibration=list(found.values()))
    assert all(r.seconds_here is not None for r in est.rows)
    assert "Calibration on this machine" in render(est)


def test_against_takes_a_stored_estimate_and_shared_cost_rows() -> None:
    rates = [
        calibration("teacher", 1000.0, 100.0, 500.0),
        calibration("student", 200.0, 20.0, 50.0),
    ]
    est = build(hand_spec(), {"t": SHAPE}, MODELS, calibration=rates, gpu="h100")
    stored = json.loads(json.dumps(est.to_dict()))  # as the experiment's row keeps it
    score = rows_by_key(est)[("score", None)]
    cost = [  # a cost table's rows: shared steps under arm "shared", GPU time beside wall time
        {"stage": "score", "arm": "shared", "seconds": 9.0, "gpu_seconds": 3 * score.seconds_gpu}
    ]
    here = {(r["stage"], r["arm"], r["quantity"]): r for r in against(stored, cost)}
    assert here[("score", None, "seconds")]["ratio"] == pytest.approx(9.0 / score.seconds_here)
    on_gpu = {(r["stage"], r["arm"], r["quantity"]): r for r in against(est, cost, on_gpu=True)}
    assert on_gpu[("score", None, "seconds")]["ratio"] == pytest.approx(3.0)


def test_a_busy_machine_during_calibration_is_warned_about() -> None:
    busy = replace(calibration("teacher", 1000.0, 100.0, 500.0), load=99.0)
    quiet = replace(calibration("student", 200.0, 20.0, 50.0), load=0.1)
    est = build(hand_spec(), {"t": SHAPE}, MODELS, calibration=[busy, quiet])
    found = [w for w in est.warnings if "busy" in w]
    assert len(found) == 1 and "teacher" in found[0]
    assert "load average 99.0 as it began" in render(est)


def test_each_stage_run_adds_its_model_loads_here() -> None:
    plain = [
        calibration("teacher", 1000.0, 100.0, 500.0),
        calibration("student", 200.0, 20.0, 50.0),
    ]
    loading = [replace(plain[0], load_seconds=3.0), replace(plain[1], load_seconds=2.0)]
    spec = hand_spec(seeds=(0, 1))
    a = rows_by_key(build(spec, {"t": SHAPE}, MODELS, calibration=plain))
    b = rows_by_key(build(spec, {"t": SHAPE}, MODELS, calibration=loading))
    # Calibrated on a 1-parameter stand-in, loads scale by parameters: 1000 x 3 s, 100 x 2 s.
    assert b[("draft", None)].seconds_here - a[("draft", None)].seconds_here == 2 * 3000.0
    assert b[("distill", "arte")].seconds_here - a[("distill", "arte")].seconds_here == 2 * 200.0
    assert b[("pairs", None)].seconds_here == 0.0
