"""DPO and SFT really train the bundled student with LoRA, on exactly the prompt ids given.

Slow tests train SmolLM2-135M for a few steps on tiny hand-made data: adapter weights move,
base weights stay, metrics land in the database once per step, and a cancelled run resumes
from its last complete checkpoint to the same result as an uninterrupted one.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from teachlab.config import StudyConfig
from teachlab.errors import ConfigError, DataError
from teachlab.jobs.context import Cancelled, LocalContext
from teachlab.train.common import (
    COMPLETE_MARKER,
    latest_complete_checkpoint,
    micro_batch,
    remove_incomplete_checkpoints,
)

STUDENT = "bundled:smollm2-135m-instruct"
SHARED_MODELS = Path(
    os.environ.get(
        "TEACHLAB_TEST_MODEL_CACHE", Path(__file__).resolve().parents[1] / "storage" / "models"
    )
)
SPORTS = ("football", "tennis", "golf", "rugby", "hockey", "boxing")
# Short plain prompts keep each step to a few seconds on 2 cores.
PAIRS = [
    {"prompt": f"Q: Is {s} a sport?\nA:", "chosen": " Yes.", "rejected": " No, never."}
    for s in SPORTS
]
EXAMPLES = [{"prompt": f"Q: Is {s} a sport?\nA:", "completion": " Yes."} for s in SPORTS[:4]]
# 6 pairs, batch 2: 3 steps per epoch, so a cancel after step 2 resumes mid-epoch.
DPO = StudyConfig(dpo_lr=2e-3, dpo_batch_size=2, dpo_max_steps=3, save_steps=1, lora_r=4)


# --- pure logic -----------------------------------------------------------------------------


def _checkpoint(folder: Path, step: int, complete: bool) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (path / COMPLETE_MARKER).write_text(str(step))
    return path


def test_latest_complete_checkpoint_skips_partial_folders(tmp_path: Path) -> None:
    assert latest_complete_checkpoint(tmp_path / "none") is None
    _checkpoint(tmp_path, 2, complete=True)
    ten = _checkpoint(tmp_path, 10, complete=True)  # numeric, not lexical, order
    partial = _checkpoint(tmp_path, 12, complete=False)  # a kill during the save
    (tmp_path / "checkpoint-last").mkdir()
    assert latest_complete_checkpoint(tmp_path) == ten
    assert remove_incomplete_checkpoints(tmp_path) == [partial]
    assert not partial.exists() and ten.exists()


@pytest.mark.parametrize(
    ("batch", "split"), [(4, (4, 1)), (16, (8, 2)), (13, (1, 13)), (6, (6, 1))]
)
def test_micro_batch_keeps_the_effective_batch(batch: int, split: tuple[int, int]) -> None:
    assert micro_batch(batch) == split


# --- helpers, and the metrics callback ------------------------------------------------------


def _db_with_run() -> tuple[Path, int]:
    """A run in the process's store (the test's own database): the store's path, the run's id."""
    from teachlab.db import Round, Run, Study, init_db, write_session

    db = init_db().path
    with write_session() as session:
        study = Study(name="train-test", task_ref="x", teacher=STUDENT, student=STUDENT)
        session.add(study)
        session.flush()
        round_ = Round(study_id=study.id, teacher=STUDENT, student=STUDENT)
        session.add(round_)
        session.flush()
        run = Run(study_id=study.id, round_id=round_.id, kind="align")
        session.add(run)
        session.flush()
        assert run.id is not None
        return db, run.id


def _metrics(db: Path, run_id: int) -> list[tuple[int, str, float]]:
    from sqlmodel import select

    from teachlab.db import Metric, Store

    with Store(db).read() as session:
        rows = session.exec(select(Metric).where(Metric.run_id == run_id)).all()
        return [(m.step, m.name, m.value) for m in rows]


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@dataclass
class CancelAtStep(LocalContext):
    """A context whose run is cancelled at the end of step ``at``."""

    at: int = 2
    checks: int = 0

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.checks >= self.at:
            raise Cancelled("cancelled by the test")


def test_metrics_callback_writes_once_survives_a_busy_database_and_cancels_gracefully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from sqlalchemy.exc import OperationalError
    from transformers import TrainerControl

    import teachlab.db
    from teachlab.train.common import DbMetricsCallback

    db, run_id = _db_with_run()
    ctx = CancelAtStep(at=2)
    callback = DbMetricsCallback(ctx, run_id)
    state = SimpleNamespace(global_step=1, max_steps=3, is_world_process_zero=True)
    logs = {"loss": 0.69, "rewards/margins": 0.0, "grad_norm": float("nan"), "note": "x"}
    callback.on_log(None, state, TrainerControl(), logs=logs)
    callback.on_log(None, state, TrainerControl(), logs={"loss": 0.5, "train_runtime": 9.0})
    assert sorted(_metrics(db, run_id)) == [
        (1, "loss", 0.69), (1, "rewards/margins", 0.0), (1, "train_runtime", 9.0),
    ]  # fmt: skip
    assert ctx.events == [(1, 3, "step 1/3 loss 0.6900"), (1, 3, "step 1/3 loss 0.5000")]
    assert any("grad_norm is nan" in line for line in ctx.lines)

    real = teachlab.db.write_session

    def busy(path: Path | None = None) -> None:
        raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))

    monkeypatch.setattr(teachlab.db, "write_session", busy)
    state.global_step = 2
    callback.on_log(None, state, TrainerControl(), logs={"loss": 0.4})
    assert len(_metrics(db, run_id)) == 3 and "database is locked" in ctx.lines[-1]
    monkeypatch.setattr(teachlab.db, "write_session", real)
    callback.on_train_end(None, state, TrainerControl())
    assert (2, "loss", 0.4) in _metrics(db, run_id)

    control = TrainerControl()
    callback.on_step_end(None, state, control)  # the first check passes
    assert not control.should_training_stop
    callback.on_step_end(None, state, control)  # cancelled: save this step, then stop
    assert callback.cancelled and control.should_save and control.should_training_stop


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two OpenMP threads spin-wait on each other
    (measured here under load: 81 s for two tiny DPO steps with 2 threads, 6.5 s with 1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Trained:
    db: Path
    run_id: int
    run_dir: Path
    result: object
    base_hash_before: str


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """One uninterrupted 3-step LoRA DPO run, shared by the checks below."""

    from teachlab import models
    from teachlab.settings import get_settings
    from teachlab.train.dpo import train_dpo

    tmp = tmp_path_factory.mktemp("dpo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEACHLAB_STORAGE", str(tmp / "storage"))
        mp.setenv("TEACHLAB_MODEL_CACHE", str(SHARED_MODELS))  # as conftest's storage fixture
        mp.setenv("TEACHLAB_OFFLINE", "1")
        get_settings.cache_clear()
        before = models.hash_folder(models.fetch(STUDENT))
        db, run_id = _db_with_run()
        ctx = LocalContext(run_id=run_id, seed=7)
        result = train_dpo(
            ctx, base_ref=STUDENT, adapter_in=None, pairs=PAIRS, config=DPO,
            run_dir=tmp / "run", run_id=run_id,
        )  # fmt: skip
        yield Trained(db, run_id, tmp / "run", result, before)
    get_settings.cache_clear()


# --- DPO ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dpo_trains_the_adapter_and_leaves_the_base(uninterrupted: Trained) -> None:
    from teachlab import models

    result = uninterrupted.result
    assert result.global_step == 3
    assert result.output_dir == uninterrupted.run_dir / "adapter"
    assert result.adapter_sha256 == models.hash_folder(
        result.output_dir, "adapter_model.safetensors"
    )
    tensors = _tensors(result.output_dir)
    # Only adapter weights are saved (no base weights, no frozen "ref" copy)...
    assert tensors and all("lora_" in name and ".ref." not in name for name in tensors)
    # ...and LoRA's B matrices, zero at initialisation, have moved.
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
    assert models.hash_folder(models.fetch(STUDENT)) == uninterrupted.base_hash_before
    assert not (uninterrupted.run_dir / "checkpoints").exists()  # superseded by the result


@pytest.mark.slow
def test_dpo_metrics_are_written_once_per_step(uninterrupted: Trained) -> None:
    rows = _metrics(uninterrupted.db, uninterrupted.run_id)
    counts = Counter((name, step) for step, name, _ in rows)
    assert max(counts.values()) == 1
    for name in ("loss", "rewards/margins", "rewards/accuracies", "learning_rate", "grad_norm"):
        assert {step for step, n, _ in rows if n == name} == {1, 2, 3}, name
    lr = {step: v for step, n, v in rows if n == "learning_rate"}
    assert lr[1] == 0.0 and lr[2] > 0  # 10% warm-up rounds up to the first step
    margins = {step: v for step, n, v in rows if n == "rewards/margins"}
    assert margins[3] != 0.0  # the policy has left the reference


@pytest.mark.slow
def test_rerun_of_a_finished_run_returns_the_stored_adapter(uninterrupted: Trained) -> None:
    from teachlab.train.dpo import train_dpo

    ctx = LocalContext(run_id=uninterrupted.run_id, seed=7)
    again = train_dpo(
        ctx, base_ref=STUDENT, adapter_in=None, pairs=PAIRS, config=DPO,
        run_dir=uninterrupted.run_dir, run_id=uninterrupted.run_id,
    )  # fmt: skip
    assert again.adapter_sha256 == uninterrupted.result.adapter_sha256
    assert not ctx.events  # nothing was trained


@pytest.mark.slow
def test_cancelled_dpo_resumes_from_its_last_complete_checkpoint(
    tmp_path: Path, uninterrupted: Trained
) -> None:
    import torch
    from sqlmodel import select

    from teachlab.db import Run, read_session
    from teachlab.train.dpo import train_dpo

    db, run_id = _db_with_run()
    run_dir = tmp_path / "run"
    kwargs = dict(
        base_ref=STUDENT, adapter_in=None, pairs=PAIRS, config=DPO,
        run_dir=run_dir, run_id=run_id,
    )  # fmt: skip
    with pytest.raises(Cancelled):
        train_dpo(CancelAtStep(run_id=run_id, seed=7, at=2), **kwargs)
    checkpoints = run_dir / "checkpoints"
    assert latest_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-2"
    assert not (run_dir / "adapter").exists()
    with read_session() as session:
        assert session.exec(select(Run.checkpoint)).one() == str(checkpoints / "checkpoint-2")
    assert {step for step, _, _ in _metrics(db, run_id)} == {1, 2}
    # A kill during the next save would leave this: a folder without the marker.
    _checkpoint(checkpoints, 3, complete=False)

    ctx = LocalContext(run_id=run_id, seed=7)
    result = train_dpo(ctx, **kwargs)
    assert result.resumed_from == 2
    assert result.global_step == DPO.dpo_max_steps
    assert ctx.events[0][:2] == (3, 3)  # continued at step 3 of 3
    rows = _metrics(db, run_id)
    assert max(Counter((name, step) for step, name, _ in rows).values()) == 1
    assert {step for step, name, _ in rows if name == "loss"} == {1, 2, 3}
    # Mid-epoch resume may reorder RNG draws; the result must still match closely.
    full = _metrics(uninterrupted.db, uninterrupted.run_id)
    loss = {step: v for step, n, v in rows if n == "loss"}
    full_loss = {step: v for step, n, v in full if n == "loss"}
    assert loss[3] == pytest.approx(full_loss[3], abs=1e-3)
    resumed, straight = _tensors(result.output_dir), _tensors(uninterrupted.result.output_dir)
    assert resumed.keys() == straight.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_dpo_continues_a_teacher_adapter_against_itself(
    tmp_path: Path, uninterrupted: Trained
) -> None:
    """Round 2: the previous adapter is trained on, and its frozen copy is the reference."""
    from dataclasses import replace

    from teachlab.train.dpo import train_dpo

    db, run_id = _db_with_run()
    adapter_in = uninterrupted.result.output_dir
    result = train_dpo(
        LocalContext(run_id=run_id, seed=7), base_ref=STUDENT,
        adapter_in=str(adapter_in), pairs=PAIRS[:2], config=replace(DPO, dpo_max_steps=1),
        run_dir=tmp_path / "run", run_id=run_id,
    )  # fmt: skip
    rows = {name: v for _, name, v in _metrics(db, run_id)}
    # Policy == reference at step 1 (a fresh base reference would give non-zero rewards).
    assert rows["rewards/chosen"] == 0.0 and rows["rewards/rejected"] == 0.0
    # Step 1 is all warm-up (lr 0): the output is the input adapter, so it was loaded.
    before, after = _tensors(adapter_in), _tensors(result.output_dir)
    assert before.keys() == after.keys()
    assert all(bool((before[k] == after[k]).all()) for k in before)


@pytest.mark.slow
def test_dpo_prompt_ids_are_exactly_the_generation_prompt(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from teachlab import models
    from teachlab.prompts import prompt_token_ids
    from teachlab.train.dpo import build_dpo_trainer, tokenize_pairs

    tok = AutoTokenizer.from_pretrained(models.fetch(STUDENT))
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Draft a question."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    pairs = [
        # Prefilled assistant turn; completions continue it mid-line.
        {"prompt": chat + "<Question_1><input>", "chosen": "Is golf a sport?", "rejected": "Hm"},
        # A prompt ending in a space: tokenised together with its completion, " Yes" would
        # merge into one token and the prompt's last token would be lost.
        {
            "prompt": chat + "Answer: Let's think step by step. ",
            "chosen": "Yes.",
            "rejected": "No.",
        },
    ]
    exact = [prompt_token_ids(tok, p["prompt"]) for p in pairs]  # what generation encodes
    # SmolLM's tokenizer adds no special tokens, so that is the bare text's ids.
    assert exact == [tok(p["prompt"], add_special_tokens=False)["input_ids"] for p in pairs]
    together = tok(pairs[1]["prompt"] + pairs[1]["chosen"], add_special_tokens=False)["input_ids"]
    assert together[: len(exact[1])] != exact[1]  # the pitfall is real for this tokenizer

    trainer = build_dpo_trainer(
        LocalContext(seed=1), base_ref=STUDENT, adapter_in=None, rows=tokenize_pairs(tok, pairs),
        config=DPO, run_dir=tmp_path, max_length=256,
    )  # fmt: skip
    data = trainer.train_dataset
    eos = tok.eos_token_id
    for i, pair in enumerate(pairs):
        assert data[i]["prompt_ids"] == exact[i]
        assert tok.decode(data[i]["prompt_ids"]) == pair["prompt"]  # byte-identical text
        assert data[i]["chosen_ids"] == tok(pair["chosen"], add_special_tokens=False)[
            "input_ids"
        ] + [eos]
    batch = trainer.data_collator([data[i] for i in range(len(pairs))])
    n = len(exact[0])
    assert batch["input_ids"][0, :n].tolist() == exact[0]  # chosen row of pair 0
    assert batch["completion_mask"][0, :n].sum() == 0  # no loss on the prompt
    assert batch["completion_mask"][0, n] == 1


@pytest.mark.slow
def test_prompts_get_generations_bos_and_completions_none_for_gemma() -> None:
    from transformers import AutoTokenizer

    from teachlab import models
    from teachlab.prompts import prompt_token_ids
    from teachlab.train.common import completion_ids, encode_prompt

    tok = AutoTokenizer.from_pretrained(models.fetch("bundled:gemma-3-270m"))
    bos, prompt = tok.bos_token_id, "User: hi\nAssistant:"
    bare = tok(prompt, add_special_tokens=False)["input_ids"]
    # Gemma's plain template renders no BOS; generation adds one, and so must training.
    assert encode_prompt(tok, prompt) == prompt_token_ids(tok, prompt) == [bos, *bare]
    assert encode_prompt(tok, tok.bos_token + prompt) == [bos, *bare]  # never two
    assert completion_ids(tok, " ok") == [
        *tok(" ok", add_special_tokens=False)["input_ids"],
        tok.eos_token_id,
    ]
    assert completion_ids(tok, " ok" + tok.eos_token).count(tok.eos_token_id) == 1


@pytest.mark.slow
def test_over_long_pairs_fail_before_training(tmp_path: Path) -> None:
    from teachlab.train.dpo import train_dpo

    long_pair = {
        "prompt": "Q: " + "very " * 40 + "long?\nA:",
        "chosen": " Yes.",
        "rejected": " No.",
    }
    with pytest.raises(ConfigError, match=r"1 of 3 pairs exceed the 32-token training limit"):
        train_dpo(
            LocalContext(), base_ref=STUDENT, adapter_in=None, pairs=[*PAIRS[:2], long_pair],
            config=DPO, run_dir=tmp_path / "run", run_id=None, max_length=32,
        )  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_malformed_pairs_are_refused(tmp_path: Path) -> None:
    from teachlab.train.dpo import train_dpo

    for pairs, message in (([], "No pairs"), ([{"prompt": "x", "chosen": "y"}], "rejected")):
        with pytest.raises(DataError, match=message):
            train_dpo(
                LocalContext(), base_ref=STUDENT, adapter_in=None, pairs=pairs, config=DPO,
                run_dir=tmp_path / "run", run_id=None,
            )  # fmt: skip


# --- SFT ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_trains_on_the_completion_only(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from teachlab import models
    from teachlab.train.sft import tokenize_examples, train_sft

    tok = AutoTokenizer.from_pretrained(models.fetch(STUDENT))
    row = tokenize_examples(tok, EXAMPLES[:1])[0]
    n = len(tok(EXAMPLES[0]["prompt"], add_special_tokens=False)["input_ids"])
    assert row["labels"][:n] == [-100] * n
    assert row["labels"][n:] == row["input_ids"][n:] and row["labels"][-1] == tok.eos_token_id

    base_before = models.hash_folder(models.fetch(STUDENT))
    db, run_id = _db_with_run()
    config = StudyConfig(sft_lr=2e-3, sft_batch_size=2, sft_max_steps=2, lora_r=4)
    result = train_sft(
        LocalContext(run_id=run_id, seed=3), base_ref=STUDENT, adapter_in=None,
        examples=EXAMPLES, config=config, run_dir=tmp_path / "run", run_id=run_id,
    )  # fmt: skip
    assert result.global_step == 2
    assert result.adapter_sha256 == models.hash_folder(
        result.output_dir, "adapter_model.safetensors"
    )
    tensors = _tensors(result.output_dir)
    assert all("lora_" in name for name in tensors)
    assert all(t.abs().sum() > 0 for name, t in tensors.items() if "lora_B" in name)
    assert models.hash_folder(models.fetch(STUDENT)) == base_before
    rows = _metrics(db, run_id)
    assert {step for step, name, _ in rows if name == "loss"} == {1, 2}
    assert max(Counter((name, step) for step, name, _ in rows).values()) == 1


# --- trl's fused LM head on the CPU ---------------------------------------------------------


@pytest.mark.slow
def test_scoring_only_labelled_positions_changes_neither_loss_nor_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CPU speed-up in ``score_only_labelled_positions_on_cpu`` is exact: the same loss,
    per-token log-probs and gradients as trl's every-position path, on a padded batch whose
    prompts carry no labels."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    from teachlab import models
    from teachlab.train.common import score_only_labelled_positions_on_cpu

    current = trl_utils._use_triton  # an earlier training run in this process may have switched it
    shipped = getattr(current, "_teachlab_shipped", current)
    monkeypatch.setattr(trl_utils, "_use_triton", shipped)  # `current` comes back after the test
    assert not shipped(torch.device("cpu")), "trl now scores only labelled positions itself"

    model = AutoModelForCausalLM.from_pretrained(models.fetch(STUDENT), dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (3, 24), generator=generator)
    labels = ids.clone()
    labels[:, :15] = -100  # the prompt
    labels[1, 20:] = -100  # padding
    attention = (labels != -100) | (torch.arange(24) < 15)

    def forward() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        out.loss.backward()
        fields = {k: getattr(out, k).detach() for k in ("log_probs", "entropy", "mean_logits")}
        return out.loss.detach(), fields, model.model.norm.weight.grad.clone()

    loss, fields, grad = forward()
    assert score_only_labelled_positions_on_cpu() and score_only_labelled_positions_on_cpu()
    assert trl_utils._use_triton is not shipped
    fast_loss, fast_fields, fast_grad = forward()

    torch.testing.assert_close(fast_loss, loss, rtol=1e-5, atol=1e-6)
    mask = labels[:, 1:] != -100
    for name, value in fields.items():
        torch.testing.assert_close(fast_fields[name][mask], value[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grad, grad, rtol=1e-4, atol=1e-6)
    assert grad.abs().sum() > 0


def test_training_precision_follows_the_device_and_checkpointing_the_setting(
    tmp_path: Path,
) -> None:
    import torch
    from trl import SFTConfig

    from teachlab.train.common import Schedule, training_arguments

    schedule = Schedule(lr=1e-4, epochs=1, batch=4, max_steps=2, warmup=0.1, scheduler="cosine")
    plain, lean = (
        training_arguments(
            SFTConfig,
            run_dir=tmp_path,
            seed=0,
            schedule=schedule,
            save_steps=1,
            checkpointing=flag,
        )
        for flag in (False, True)
    )
    field = (
        "activation_checkpointing"
        if hasattr(plain, "activation_checkpointing")
        else ("gradient_checkpointing")
    )
    assert (getattr(plain, field), getattr(lean, field)) == (False, True)
    if not torch.cuda.is_available():  # CPU: full precision, no mixed-precision flags
        assert (plain.bf16, plain.fp16, plain.use_cpu) == (False, False, True)
