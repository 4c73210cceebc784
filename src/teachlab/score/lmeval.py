"""The student on an lm-evaluation-harness task: the standard numbers everyone else reports.

``run_lm_eval`` runs one task (a registered lm-eval task name such as ``arc_easy``, or a path to
a task YAML file) through lm-eval's own ``hf`` model on the student's local folder, with its peft
adapter, and returns the task's primary metric. lm-eval is an optional extra
(``pip install -e '.[eval]'``); it is imported only here, inside the functions.

With ``TEACHLAB_OFFLINE`` set the Hugging Face Hub is never contacted: a named task then needs its
dataset in the local ``datasets`` cache, and a task YAML should read local files
(``dataset_path: json`` with ``dataset_kwargs: {data_files: ...}``).
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teachlab.errors import ConfigError, DataError

INSTALL_HINT = "pip install -e '.[eval]' (or pip install 'teachlab[eval]')"
YAML_SUFFIXES = (".yaml", ".yml")
Z95 = 1.96


@dataclass(frozen=True)
class LmEvalResult:
    """One lm-eval task's result on one model (and adapter)."""

    task: str  # the task's name (read from the YAML for a task file)
    metric: str  # the primary metric, e.g. "acc" (its filter, if not "none", after a comma)
    value: float
    stderr: float | None  # lm-eval's standard error of the metric; None when it gave none
    n: int  # documents evaluated
    num_fewshot: int  # few-shot examples per prompt that lm-eval used
    split: str  # the task's split lm-eval evaluated (its test split, else its validation one)
    lm_eval_version: str
    results: dict[str, dict[str, Any]] = field(repr=False)  # lm-eval's per-task results
    model_args: dict[str, Any] = field(default_factory=dict, repr=False)  # as lm-eval got them

    def interval(self) -> tuple[float | None, float | None]:
        """value ± 1.96·stderr clipped to [0, 1]; (None, None) without a standard error."""
        if self.stderr is None:
            return None, None
        return (
            min(1.0, max(0.0, self.value - Z95 * self.stderr)),
            min(1.0, max(0.0, self.value + Z95 * self.stderr)),
        )


def is_task_file(task: str) -> bool:
    """Whether ``task`` names a task YAML file rather than a registered task."""
    return task.strip().lower().endswith(YAML_SUFFIXES)


def task_name(task: str) -> str:
    """The lm-eval name of ``task``: itself for a registered name, the YAML's ``task`` (or
    ``group``) for a task file. ConfigError when the file is missing, unparsable or names none."""
    task = task.strip()
    if not task:
        raise ConfigError("No lm-eval task given; name one (e.g. arc_easy) or a task YAML file.")
    if not is_task_file(task):
        return task
    _require_lm_eval()
    return _read_task_file(Path(task).expanduser())[0]


def run_lm_eval(
    model_ref: str,
    adapter: str | None,
    task: str,
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    bootstrap_iters: int = 1000,
) -> LmEvalResult:
    """Run one lm-eval task on ``model_ref`` (with the peft adapter folder ``adapter``).

    ``task`` is a registered lm-eval task name or a path to a task YAML file (its folder is added
    to lm-eval's task index). ``limit`` caps the documents (None: all); ``num_fewshot`` overrides
    the task's own few-shot count (None: the task's, else 0); ``bootstrap_iters`` is passed to
    lm-eval for the metrics whose standard error it bootstraps (a mean's is closed-form).
    """
    from teachlab import models
    from teachlab.settings import get_settings

    version = _require_lm_eval()
    settings = get_settings()
    folder = models.fetch(model_ref, settings)
    kind = models.trained_kind(adapter) if adapter is not None else None  # names a bad folder
    import logging

    import torch
    from lm_eval import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cuda = torch.cuda.is_available()
    model_args: dict[str, Any] = {
        # A fully fine-tuned model is evaluated in place of the base; an adapter goes on top.
        "pretrained": str(adapter if kind == "model" else folder),
        "dtype": "auto" if cuda else "float32",
    }
    if kind == "model":
        model_args["tokenizer"] = str(folder)
    if kind == "adapter":
        model_args["peft"] = str(adapter)
    with _hub_offline(settings.offline):
        manager, name = _task_manager(task)
        loaded = _load_task(manager, name, task, offline=settings.offline)
        top = loaded["groups"].get(name)
        if top is None:
            top = loaded["tasks"].get(name)
        if top is None:  # a tag: several tasks under one name
            raise ConfigError(
                f"lm-eval name {name!r} is a tag of {len(loaded['tasks'])} tasks, not one task or "
                "group; name one of its tasks."
            )
        output = simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=[top],
            task_manager=manager,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device="cuda" if cuda else "cpu",
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            cache_requests=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if output is None:  # only on a non-zero rank of a distributed run; not ours
        raise ConfigError("lm-eval returned no results (a distributed run's other rank?).")
    return _result(name, output, version, model_args)


# ---------------------------------------------------------------- helpers


def _require_lm_eval() -> str:
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(
            "lm-evaluation-harness is not installed, so lm-eval tasks cannot run; "
            f"install it with `{INSTALL_HINT}`, or clear the lm_eval_tasks setting."
        ) from None
    return str(getattr(lm_eval, "__version__", "unknown"))


def _read_task_file(path: Path) -> tuple[str, bool]:
    """(the task or group name a task YAML defines, whether it is a group)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if not path.is_file():
        raise ConfigError(
            f"lm-eval task file {path} does not exist; give the path of a task YAML file "
            "(an absolute path is safest: the worker may run elsewhere)."
        )
    try:
        # resolve_func=False: `!function` tags are read as text here, not imported.
        config = load_yaml(path, resolve_func=False)
    except Exception as exc:  # yaml.YAMLError, ValueError (not a mapping), OSError (includes)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"lm-eval task file {path} cannot be read as a task YAML ({first}); fix the YAML."
        ) from None
    name = config.get("task")
    group = config.get("group")
    if isinstance(name, str) and name.strip():
        return name.strip(), False
    if isinstance(group, str) and group.strip():
        return group.strip(), True
    raise ConfigError(f"lm-eval task file {path} names no task; add a line `task: <name>` to it.")


@functools.cache
def _default_manager() -> Any:
    """lm-eval's index of its own tasks (seconds to build, so built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _task_manager(task: str) -> tuple[Any, str]:
    """(a TaskManager that knows ``task``, the task's name)."""
    from lm_eval.tasks import TaskManager

    task = task.strip()
    if is_task_file(task):
        path = Path(task).expanduser().resolve()
        name, group = _read_task_file(path)
        # A group may list lm-eval's own tasks: only then is its (slow) index needed.
        manager = TaskManager(include_path=str(path.parent), include_defaults=group)
        if name not in manager.all_tasks:
            raise ConfigError(
                f"lm-eval did not take task {name!r} from {path} (another file in "
                f"{path.parent} may define it too, or the YAML misses required keys); "
                "check the file with `lm-eval validate --tasks` on it."
            )
        return manager, name
    manager = _default_manager()
    if task not in manager.all_tasks:
        close = difflib.get_close_matches(task, manager.all_tasks, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"{task!r} is not an lm-eval task; {hint}`lm-eval ls tasks` lists them, or give the "
            "path of a task YAML file (ending .yaml)."
        )
    return manager, task


def _load_task(manager: Any, name: str, task: str, *, offline: bool) -> dict[str, Any]:
    """The task (its dataset loaded), with its failures as TeachLab errors."""
    try:
        loaded: dict[str, Any] = manager.load([name])
    except (ConnectionError, TimeoutError, FileNotFoundError, OSError) as exc:
        where = (
            "TEACHLAB_OFFLINE is set, so only datasets already in the local cache or local "
            "files load"
            if offline
            else "the Hugging Face Hub may be unreachable"
        )
        raise DataError(
            f"The dataset of lm-eval task {name!r} could not be loaded ({_line(exc)}); {where}: "
            "run the task once where the Hub is reachable to cache it, or point a task YAML "
            "at local files (dataset_path: json, dataset_kwargs: {data_files: ...})."
        ) from None
    except (KeyError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise ConfigError(
            f"lm-eval could not build task {name!r} from {task} ({_line(exc)}); fix its YAML."
        ) from None
    return loaded


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Hold huggingface_hub, datasets and transformers offline while lm-eval runs (TEACHLAB_OFFLINE).

    They read HF_HUB_OFFLINE when first imported, so the read flags are set here as well as the
    environment, and all are restored afterwards.
    """
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    flags = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    saved = [(module, attr, getattr(module, attr)) for module, attr in flags]
    try:
        os.environ.update(dict.fromkeys(env, "1"))
        for module, attr in flags:
            setattr(module, attr, True)
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _result(
    name: str, output: dict[str, Any], version: str, model_args: dict[str, Any]
) -> LmEvalResult:
    """The primary metric of task (or group) ``name`` from ``simple_evaluate``'s output."""
    results: dict[str, dict[str, Any]] = output.get("results", {})
    row = results.get(name)
    if row is None:
        raise ConfigError(f"lm-eval returned no results for task {name!r}.")
    metrics = [
        key
        for key, value in row.items()
        if "," in key and "_stderr" not in key.split(",", 1)[0] and _number(value) is not None
    ]
    if not metrics:
        raise ConfigError(f"lm-eval task {name!r} reported no numeric metric; check its YAML.")
    # The task's first listed metric is its primary one; else the first lm-eval reported.
    config = output.get("configs", {}).get(name, {})
    listed = config.get("metric_list") or []
    first = listed[0].get("metric") if listed and isinstance(listed[0], dict) else None
    key = next((k for k in metrics if k.split(",", 1)[0] == first), metrics[0])
    metric, _, filt = key.partition(",")
    value = _number(row[key])
    assert value is not None  # picked among the numeric ones
    stderr = _number(row.get(f"{metric}_stderr,{filt}"))
    counts = output.get("n-samples", {})
    if name in counts:
        n = int(counts[name].get("effective", 0))
    else:  # a group: the sum over its tasks (the only ones this run evaluated)
        n = sum(int(c.get("effective", 0)) for c in counts.values())
    shots = output.get("n-shot", {}).get(name)
    if not isinstance(shots, int):  # a group reports its tasks' counts: take the first
        shots = next((s for s in output.get("n-shot", {}).values() if isinstance(s, int)), 0)
    return LmEvalResult(
        task=name,
        metric=metric if filt in ("", "none") else key,
        value=value,
        stderr=stderr,
        n=n,
        num_fewshot=int(shots),
        split=str(config.get("test_split") or config.get("validation_split") or "test"),
        lm_eval_version=version,
        results=results,
        model_args=dict(output.get("config", {}).get("model_args") or model_args),
    )
