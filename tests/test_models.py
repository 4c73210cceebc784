"""Model references resolve or fail with a clear message; bundled models load from the cache."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from teachlab import models
from teachlab.errors import ModelError


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("bundled:smollm2-135m-instruct", "bundled"),
        ("bundled:gemma-3-270m", "bundled"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub"),
    ],
)
def test_references_parse(ref: str, kind: str) -> None:
    assert models.parse_ref(ref).kind == kind


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("bundled:gpt-9", "Unknown bundled model 'gpt-9'; choose one of"),
        ("", "No model given"),
        ("not a model", "is not a model reference"),
        ("./no/such/folder", "is not a model folder"),
    ],
)
def test_bad_references_fail_clearly(ref: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        models.parse_ref(ref)


def test_local_path_reference(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    ref = models.parse_ref(str(tmp_path))
    assert ref.kind == "path" and ref.name == str(tmp_path.resolve())


def test_hub_model_offline_fails_before_loading() -> None:
    with pytest.raises(ModelError, match="TEACHLAB_OFFLINE"):
        models.fetch("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_hub_model_unreachable_fails_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from teachlab.settings import get_settings

    monkeypatch.setenv("TEACHLAB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    with pytest.raises(ModelError, match="teachlab models fetch"):
        models.fetch("someone/no-such-model-xyz")


def test_list_models_reports_install_and_cache_state() -> None:
    rows = {r["ref"]: r for r in models.list_models()}
    assert set(rows) == {"bundled:smollm2-135m-instruct", "bundled:gemma-3-270m"}
    assert all(r["installed"] == "yes" for r in rows.values())


@pytest.mark.slow
@pytest.mark.parametrize("ref", ["bundled:smollm2-135m-instruct", "bundled:gemma-3-270m"])
def test_bundled_model_loads_from_cache_fast_and_generates(ref: str) -> None:
    import torch

    models.fetch(ref)  # de-quantises once (minutes on first use); cached afterwards
    start = time.perf_counter()
    loaded = models.load(ref)
    seconds = time.perf_counter() - start
    assert seconds < 10, f"cached load took {seconds:.1f} s"
    assert len(loaded.weights_sha256) == 64
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.generate(**ids, max_new_tokens=4, do_sample=False)
    text = loaded.tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
    assert text.strip(), "the de-quantised model produced nothing"
    assert not any(p.is_meta for p in loaded.model.parameters())


def test_a_trained_folder_is_an_adapter_a_whole_model_or_refused(tmp_path: Path) -> None:
    adapter, whole, broken = (tmp_path / n for n in ("adapter", "whole", "broken"))
    for folder in (adapter, whole, broken):
        folder.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    (whole / "config.json").write_text("{}")
    (whole / "model.safetensors").write_bytes(b"all weights")
    (broken / "config.json").write_text("{}")  # the weights were never written
    assert models.trained_kind(adapter) == "adapter"
    assert models.trained_kind(whole) == "model"
    assert models.trained_hash(whole) == models.hash_folder(whole, "*.safetensors")
    assert models.trained_hash(adapter) != models.trained_hash(whole)
    with pytest.raises(ModelError, match="Re-run the align or distil stage"):
        models.trained_kind(broken)
    with pytest.raises(ModelError, match="neither a LoRA adapter"):
        models.load("bundled:smollm2-135m-instruct", broken)


def test_four_bit_training_is_refused_on_a_cpu_before_anything_loads() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelError, match="needs a CUDA GPU and this machine has none"):
        models.require_device(load_in_4bit=True)
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        models.load("bundled:smollm2-135m-instruct", quantize_4bit=True)
    models.require_device(load_in_4bit=False)  # nothing asked, nothing refused
    assert models.load_dtype(trainable=False) == torch.float32  # CPU: full precision
