"""What an experiment is: tasks, arms, seeds, models and settings, checked before anything runs.

An experiment compares conditions ("arms") that share seeds, splits, probe items and the first
drafts and scores, so their per-item results on the held-out test items are paired. It comes
from command-line options or a TOML file (``experiment create --config FILE``); the same
checks apply to both, and every refusal names the fix.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from teachlab.config import StudyConfig, check_seed
from teachlab.errors import ConfigError

SUITES = {"bbh": "the BIG-Bench Hard tasks the fetched task data holds"}
EVAL_MODES = ("loglik", "cot")  # choices ranked by log-likelihood; greedy chain of thought


@dataclass(frozen=True)
class ArmKind:
    """One kind of condition: how its teacher is aligned and what its student learns from."""

    name: str
    help: str
    pairs: str | None  # the pairs its teacher is aligned on: None (no alignment) or a source
    tailored: bool  # its student is distilled on data its teacher regenerates
    gold: bool = False  # its student is distilled on the tasks' own training examples
    trains_student: bool = True


ARM_KINDS: dict[str, ArmKind] = {
    a.name: a
    for a in (
        ArmKind(
            "student",
            "the student untouched (zero- and few-shot reference)",
            pairs=None,
            tailored=False,
            trains_student=False,
        ),
        ArmKind(
            "original",
            "student distilled on tailored data from the unaligned teacher",
            pairs=None,
            tailored=True,
        ),
        ArmKind(
            "arte",
            "teacher aligned (DPO) on the student's preference pairs, then as original",
            pairs="student",
            tailored=True,
        ),
        ArmKind(
            "random-pairs",
            "teacher aligned on the same pairs with the chosen side drawn at random (a placebo)",
            pairs="random",
            tailored=True,
        ),
        ArmKind(
            "reviewed",
            "teacher aligned on the pairs as humans decided them on the Review page",
            pairs="reviewed",
            tailored=True,
        ),
        ArmKind(
            "gold",
            "student distilled on the tasks' own training examples (a reference ceiling)",
            pairs=None,
            tailored=False,
            gold=True,
        ),
    )
}


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts for estimates when a model cannot be loaded here (the paper's 70B)."""

    teacher_params: float | None = None
    student_params: float | None = None


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    tasks: tuple[str, ...]  # task references (a suite name expands to its tasks)
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    teacher: str
    student: str
    backend: str = "transformers"
    study: StudyConfig = field(default_factory=StudyConfig)  # each task's study settings
    eval_modes: tuple[str, ...] = EVAL_MODES
    eval_shots: tuple[int, ...] = (0, 3)
    cot_max_tokens: int = 96
    reference: str = "original"  # the arm the others are compared with
    description: str = ""
    sizes: ModelSizes = field(default_factory=ModelSizes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["study"] = self.study.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentSpec:
        data = dict(data)
        study = StudyConfig.from_dict(data.pop("study", None) or {})
        sizes = ModelSizes(**(data.pop("sizes", None) or {}))
        for key in ("tasks", "arms", "seeds", "eval_modes", "eval_shots"):
            if key in data:
                data[key] = tuple(data[key])
        try:
            spec = cls(study=study, sizes=sizes, **data)
        except TypeError as exc:
            raise ConfigError(f"Bad experiment settings: {exc}") from exc
        return spec.checked()

    def checked(self) -> ExperimentSpec:
        """The spec with its suites expanded, or a ConfigError naming what to fix."""
        from teachlab.studies import NAME_RE

        if not NAME_RE.match(self.name or "") or self.name.isdigit():
            raise ConfigError(
                f"Experiment name {self.name!r} is not valid; use 1-64 letters, digits, spaces, "
                "'_', '-' or '.', starting with a letter or digit, not all digits."
            )
        tasks = expand_tasks(self.tasks)
        unknown = [a for a in self.arms if a not in ARM_KINDS]
        if unknown:
            raise ConfigError(
                f"Unknown arm kind(s): {', '.join(unknown)}; choose from {', '.join(ARM_KINDS)}."
            )
        if not self.arms or len(set(self.arms)) < len(self.arms):
            raise ConfigError("Name each arm once, and at least one (e.g. --arms original,arte).")
        if not self.seeds or len(set(self.seeds)) < len(self.seeds):
            raise ConfigError("Give each seed once, and at least one (e.g. --seeds 0,1,2).")
        seeds = tuple(check_seed(s) for s in self.seeds)
        bad_modes = [m for m in self.eval_modes if m not in EVAL_MODES]
        if bad_modes or not self.eval_modes:
            raise ConfigError(
                f"Evaluation mode(s) {bad_modes or '(none)'} not known; use {', '.join(EVAL_MODES)}."
            )
        if any(not isinstance(s, int) or not 0 <= s <= 8 for s in self.eval_shots):
            raise ConfigError(f"eval_shots {self.eval_shots} must be whole numbers from 0 to 8.")
        if self.reference not in self.arms and len(self.arms) > 1:
            raise ConfigError(
                f"The reference arm {self.reference!r} is not among the arms "
                f"({', '.join(self.arms)}); add it, or set reference to one of them."
            )
        return replace(self, tasks=tasks, seeds=seeds)


def expand_tasks(tasks: tuple[str, ...]) -> tuple[str, ...]:
    """Task references with a suite name (``bbh``) replaced by the tasks the data holds."""
    from teachlab.tasks import list_bigbench
    from teachlab.tasks.bigbench import BBH_TASKS

    out: list[str] = []
    for ref in tasks:
        if ref == "bbh":
            fetched = list_bigbench()
            found = [
                f"bigbench:{name}"
                for name in fetched
                if name in BBH_TASKS or name.split("/")[0] in BBH_TASKS
            ]
            if not found:
                raise ConfigError(
                    "The suite 'bbh' found no BIG-Bench Hard task in the task data; fetch it with "
                    "`teachlab data fetch`, or name tasks one by one with --task."
                )
            out.extend(found)
        else:
            out.append(ref)
    if not out:
        raise ConfigError("An experiment needs at least one task: --task bigbench:NAME or bbh.")
    if len(set(out)) < len(out):
        raise ConfigError("A task is named twice; name each task once.")
    return tuple(out)


def read_config(path: Path) -> dict[str, Any]:
    """An experiment's settings from a TOML file (its keys as ``ExperimentSpec``'s fields,
    ``[study]`` the study settings, ``[sizes]`` parameter counts for estimates)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"No experiment config at {path}; check the path.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it and try again.") from None
    return data
