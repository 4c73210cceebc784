"""Training stages: align the teacher with DPO and distil the student with SFT.

Both run through one routine (``routine.train``), each with its ``Method`` record; they resume
from complete-marked checkpoints and write their metrics to the database. Names load on first
use (PEP 562): importing transformers costs seconds the UI and CLI need not pay.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "TrainResult": "teachlab.train.common",
    "latest_complete_checkpoint": "teachlab.train.common",
    "train_dpo": "teachlab.train.dpo",
    "train_sft": "teachlab.train.sft",
}
__all__ = ["TrainResult", "latest_complete_checkpoint", "train_dpo", "train_sft"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'teachlab.train' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
