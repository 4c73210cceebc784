"""Training in several processes: ``accelerate launch`` runs a process group (DDP over GPUs, or
gloo on CPU; FSDP or DeepSpeed through an accelerate config file) that trains one run.

The run stays one durable run of the stage that asked for it: its executor (this process)
holds the lease, and it alone writes to the database. The group gets what to train as a spec
file in the run's folder and reports back through an events file there (each logged step, each
checkpoint, messages); the executor turns those into the run's metrics, progress and log. To
cancel, the executor writes a flag file: the group saves a checkpoint at the next step and
stops, and a later resume continues from it, in a group or in one process alike.

``python -m teachlab.train.launched SPEC`` is what each process of the group runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from teachlab.config import StudyConfig
from teachlab.errors import ConfigError, JobError
from teachlab.jobs.context import Cancelled, StageContext
from teachlab.train.common import CompleteMarker, DbMetricsCallback, TrainResult, finished_result

if TYPE_CHECKING:
    from sqlmodel import Session

GROUP = "group"  # the folder in the run's folder: spec, events, cancel flag, the group's log
POLL_S = 0.5


def _folder(run_dir: Path) -> Path:
    return run_dir / GROUP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_group(config: StudyConfig) -> None:
    """Refuse, before anything runs, a group this machine cannot start."""
    import torch

    if config.accelerate_config:
        path = Path(config.accelerate_config).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"accelerate_config {path} is not a file; write one with `accelerate config` "
                "or clear the setting."
            )
        return
    gpus = torch.cuda.device_count()
    wanted = config.num_processes
    if gpus and wanted > gpus:
        raise ConfigError(
            f"num_processes={wanted} asks for more processes than this machine's {gpus} GPUs; "
            f"use at most {gpus}."
        )
    cores = os.cpu_count() or 1
    if not gpus and wanted > cores:
        raise ConfigError(
            f"num_processes={wanted} asks for more processes than this machine's {cores} CPU "
            f"cores; use at most {cores}."
        )


def launch_command(config: StudyConfig, spec: Path) -> list[str]:
    """The ``accelerate launch`` command line for ``spec``."""
    import torch

    check_group(config)
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config.accelerate_config:
        command += ["--config_file", str(Path(config.accelerate_config).expanduser())]
    else:
        gpus = torch.cuda.device_count()
        wanted = config.num_processes
        command += ["--num_processes", str(wanted), "--num_machines", "1", "--dynamo_backend", "no"]
        # torchrun starts the processes either way ("--cpu" would start one); on a machine
        # without CUDA each process then joins a gloo group (launched.py asks for the CPU).
        command += ["--multi_gpu"] + (["--mixed_precision", "no"] if not gpus else [])
    command += [
        "--main_process_port",
        str(_free_port()),
        "-m",
        "teachlab.train.launched",
        str(spec),
    ]
    return command


def train_in_group(
    method: Any,  # teachlab.train.routine.Method (not imported: the routine imports this)
    ctx: StageContext,
    *,
    base_ref: str,
    adapter_in: str | None,
    rows: list[dict[str, Any]],
    config: StudyConfig,
    run_dir: Path,
    max_length: int,
    plan_hash: str,
    resume: Path | None,
    metrics: DbMetricsCallback,
    run_id: int | None,
) -> TrainResult:
    """Train ``rows`` with ``method`` in an accelerate-launched process group; wait for it."""
    folder = _folder(run_dir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = folder / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "kind": method.kind,
                "ordered": bool(method.settings.get("ordered", False)),
                "config": config.to_dict(),
                "base_ref": base_ref,
                "adapter_in": adapter_in,
                "run_dir": str(run_dir),
                "max_length": max_length,
                "plan_hash": plan_hash,
                "resume": str(resume) if resume else None,
                "seed": ctx.seed,
            }
        )
    )
    (folder / "rows.json").write_text(json.dumps(rows))
    command = launch_command(config, spec)
    ctx.log(f"Training in a process group: {' '.join(command[2:-3])}.")
    events = folder / "events.jsonl"
    with (folder / "log.txt").open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                "OMP_WAIT_POLICY": "PASSIVE",
                # Each process its share of the cores (torchrun would give each one thread).
                "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // config.num_processes)),
                **os.environ,
            },
            start_new_session=True,
        )
        read = 0
        try:
            while True:
                done = proc.poll() is not None
                read = _forward(events, read, ctx, metrics, run_id)
                if done:
                    break
                try:
                    ctx.check_cancelled()
                except Cancelled:
                    (folder / "cancel").touch()  # the group saves at its next step and stops
                time.sleep(POLL_S)
        except BaseException:
            _stop(proc)
            raise
    metrics.on_train_end(None, SimpleNamespace(is_world_process_zero=True), None)
    if proc.returncode != 0:
        tail = (folder / "log.txt").read_text(errors="replace")[-1500:]
        raise JobError(
            f"The training process group exited with code {proc.returncode}; its log is "
            f"{folder / 'log.txt'}. Its last lines:\n{tail}"
        )
    if (folder / "cancelled").exists():
        raise Cancelled("Training cancelled; a checkpoint is kept.")
    result = finished_result(run_dir, plan_hash)
    if result is None:
        raise JobError(f"The training process group saved no result in {run_dir}.")
    return TrainResult(
        result.output_dir,
        result.adapter_sha256,
        result.global_step,
        result.metrics,
        _resumed_step(resume),
        result.full_model,
    )


def _resumed_step(resume: Path | None) -> int | None:
    from teachlab.train.common import checkpoint_step

    return checkpoint_step(resume) if resume is not None else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _forward(
    events: Path, read: int, ctx: StageContext, metrics: DbMetricsCallback, run_id: int | None
) -> int:
    """Hand the group's new events to the run (metrics, progress, log); the bytes read so far."""
    if not events.is_file():
        return read
    with events.open("rb") as f:
        f.seek(read)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
    for line in complete.decode().splitlines():
        event = json.loads(line)
        if event["type"] == "log":
            state = SimpleNamespace(
                global_step=event["step"], max_steps=event["max_steps"], is_world_process_zero=True
            )
            metrics.on_log(None, state, None, logs=event["logs"])
        elif event["type"] == "save":
            marker = CompleteMarker(ctx, run_id)
            args = SimpleNamespace(output_dir=event["output_dir"])
            state = SimpleNamespace(global_step=event["step"], is_world_process_zero=True)
            marker.on_save(args, state, None)  # the marker exists already: records it on the run
        else:
            ctx.log(event["message"])
    return read + len(complete)


# ---------------------------------------------------------------- inside the group


class GroupContext:
    """A stage context for the processes of a group: no database (the executor owns the run);
    messages go to the events file from the main process, cancellation comes as a flag file."""

    run_id: int | None = None  # the executor records the run; the group does not

    def __init__(self, folder: Path, seed: int, main: bool) -> None:
        self.folder, self.seed, self.main = folder, seed, main

    def emit(self, event: dict[str, Any]) -> None:
        if self.main:
            with (self.folder / "events.jsonl").open("a") as f:
                f.write(json.dumps(event) + "\n")
                f.flush()

    def progress(self, done: int, total: int, message: str = "") -> None:
        return None  # the executor derives progress from the logged steps

    def log(self, message: str) -> None:
        self.emit({"type": "message", "message": message})

    def check_cancelled(self) -> None:
        if (self.folder / "cancel").exists():
            raise Cancelled("cancel requested")

    def provenance(self, extra: dict[str, Any]) -> None:
        return None

    def write(self) -> AbstractContextManager[Session]:
        raise RuntimeError("a training process group does not write to the database")


class GroupReporter(TrainerCallback):
    """Each logged step to the events file; stops (with a checkpoint) when the flag appears."""

    def __init__(self, ctx: GroupContext) -> None:
        self.ctx = ctx
        self.cancelled = False
        self.last: dict[str, float] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        try:
            self.ctx.check_cancelled()
        except Cancelled:
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> Any:
        values = {
            k: v
            for k, v in (logs or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        self.last.update({k: float(v) for k, v in values.items()})
        self.ctx.emit(
            {
                "type": "log",
                "step": int(state.global_step),
                "max_steps": int(state.max_steps),
                "logs": values,
            }
        )
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        event = {"type": "save", "step": int(state.global_step), "output_dir": args.output_dir}
        self.ctx.emit(event)
        return control
