"""What each process of a training group runs: ``python -m teachlab.train.launched SPEC``
(started by ``accelerate launch``; see ``teachlab.train.group``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from teachlab.config import StudyConfig
from teachlab.jobs.context import Cancelled
from teachlab.train.common import CompleteMarker
from teachlab.train.dpo import dpo_method
from teachlab.train.group import GroupContext, GroupReporter
from teachlab.train.routine import build_trainer, run_training
from teachlab.train.sft import sft_method


def main(spec_path: str) -> int:
    from accelerate import PartialState

    spec = json.loads(Path(spec_path).read_text())
    folder = Path(spec_path).parent
    config = StudyConfig.from_dict(spec["config"])
    method = (
        dpo_method(config, ordered=spec["ordered"]) if spec["kind"] == "dpo" else sft_method(config)
    )
    rows = json.loads((folder / "rows.json").read_text())
    import torch

    # Asked before the trainer's arguments make the state: without CUDA, a gloo group on CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    ctx = GroupContext(folder, spec["seed"], state.is_main_process)
    reporter = GroupReporter(ctx)
    ctx.log(f"Process group: {state.num_processes} processes ({state.distributed_type.value}).")
    run_dir = Path(spec["run_dir"])
    trainer = build_trainer(
        method,
        ctx,
        base_ref=spec["base_ref"],
        adapter_in=spec["adapter_in"],
        rows=rows,
        config=config,
        run_dir=run_dir,
        max_length=spec["max_length"],
        callbacks=[CompleteMarker(ctx), reporter],  # the marker before the report of a save
        processes=state.num_processes,
    )
    try:
        run_training(
            trainer,
            ctx,
            run_dir=run_dir,
            plan_hash=spec["plan_hash"],
            resume=Path(spec["resume"]) if spec["resume"] else None,
            metrics=reporter,  # type: ignore[arg-type]
            run_id=None,
            full_model=not config.lora,
        )
    except Cancelled:
        if state.is_main_process:
            (folder / "cancelled").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
