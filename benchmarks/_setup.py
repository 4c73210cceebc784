"""What the benchmark scripts share: a scratch storage folder, the caches, offline mode, the
thread count, and one line describing the machine the figures come from."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2  # the machine's two cores; every benchmark runs with the same count


def prepare() -> Path:
    """Point TeachLab at the repository's model and data caches (unless set), a scratch storage
    folder, and no network; returns the scratch folder."""
    scratch = Path(tempfile.mkdtemp(prefix="teachlab-bench-"))
    os.environ["TEACHLAB_STORAGE"] = str(scratch / "storage")
    os.environ.setdefault("TEACHLAB_MODEL_CACHE", str(ROOT / "storage" / "models"))
    os.environ.setdefault("TEACHLAB_DATA_CACHE", str(ROOT / "storage" / "data"))
    os.environ["TEACHLAB_OFFLINE"] = "1"
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    os.environ["HF_DATASETS_CACHE"] = str(scratch / "hf-datasets")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(THREADS)
    return scratch


def machine() -> str:
    """CPU model, cores, memory, Python and torch versions and threads."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            cpu,
        )
    except (OSError, subprocess.CalledProcessError):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}; {os.cpu_count()} cores; {mem:.0f} GiB RAM; Python {sys.version.split()[0]}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
