"""Studies: create (validating task, models and settings first), list, show, duplicate, demo.

A study fixes its task splits at creation (seed examples, probe set, test set), so every
round, run and export of the study sees the same items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, func, select

from teachlab.config import BACKENDS, StudyConfig, check_seed
from teachlab.db import (
    AnnotationEvent,
    Draft,
    Pair,
    Round,
    Run,
    Study,
    init_db,
    read_session,
    write_session,
)
from teachlab.errors import ConfigError, NotFoundError
from teachlab.models import parse_ref
from teachlab.parsing import check_text
from teachlab.settings import get_settings

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
DEMO_NAME = "demo"
MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_GUIDELINES = 20_000  # characters: a page of rules, not a document
# Where the bundled pair has a signal (docs/signal-check.md): the SmolLM2-135M student picks the
# reasonable step of a wikiHow goal well above chance (0.62 vs 0.25 with 24 probes) and a
# demonstration's effect on it reads the same on both probe halves (margin reliability 0.72),
# and the short questions are ones the 270M teacher can write when drafting is scaffolded.
DEMO_TASK = "bigbench:goal_step_wikihow/step_inference"
# Small enough for a whole round in minutes on a 2-core CPU. Pairs use the gold-answer margin:
# a 135M student's probe accuracy often ties between drafts, and ties make no pairs.
DEMO_CONFIG: dict[str, Any] = {
    "n_questions": 8,
    "n_rationales": 2,
    "n_probe": 24,
    "n_test": 24,
    "n_tailored": 4,
    "dpo_max_steps": 4,
    "dpo_batch_size": 2,  # this task's question prompts are long: 4 pairs a step took 2 min
    "sft_max_steps": 4,
    "pair_metric": "margin",
    "scaffold": True,
}
# The paper's study settings (configs/paper-arte.toml's [study], kept equal by a test): for a
# 70B teacher on GPUs, shown so a reader sees the scale the defaults stand in for.
PAPER_CONFIG: dict[str, Any] = {
    "n_questions": 250,
    "n_rationales": 4,
    "strategies": ("expert", "rules", "plain", "eliminate"),
    "n_seed": 3,
    "questions_per_call": 5,
    "question_temperature": 1.0,
    "max_new_tokens": 512,
    "prefill": False,
    "n_probe": 40,
    "probe_selection": "irt",
    "scorer": "generate",
    "pair_rule": "arte",
    "quantile": 0.25,
    "n_test": 250,
    "n_tailored": 293,
    "dpo_lr": 1e-7,
    "dpo_beta": 0.1,
    "dpo_batch_size": 16,
    "dpo_epochs": 1.0,
    "dpo_max_steps": 0,
    "sft_lr": 2e-5,
    "sft_epochs": 1.0,
    "sft_batch_size": 16,
    "sft_max_steps": 0,
    "lora": False,
    "save_steps": 100,
    "eval_shots": 3,
}
# Settings presets for the create form: each fills every setting (the rest from the defaults).
PRESETS: dict[str, dict[str, Any]] = {
    "demo (the demo study's settings; a round in minutes on a CPU)": DEMO_CONFIG,
    "CPU small (TeachLab's defaults)": {},
    "paper (ARTE's settings; GPUs and a large teacher)": PAPER_CONFIG,
}


def preset_config(preset: str) -> StudyConfig:
    """A preset's full settings (ConfigError for an unknown preset)."""
    if preset not in PRESETS:
        raise ConfigError(f"Unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    return StudyConfig.from_dict(PRESETS[preset])


DEMO_DESCRIPTION = (
    "Demo: the bundled Gemma 3 270M teaches the bundled SmolLM2-135M to pick the most "
    "reasonable step towards a goal (BIG-bench goal_step_wikihow, step inference)."
)


@dataclass(frozen=True)
class StudySummary:
    id: int
    name: str
    task_ref: str
    teacher: str
    student: str
    rounds: int
    drafts: int
    pairs: int
    last_run: str
    created: str
    archived: bool = False


def _check_name(name: str) -> str:
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"Study name {name!r} is not text; give a name such as 'my-study'.")
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise ConfigError(
            f"Study name {name!r} is not valid; use 1-64 letters, digits, spaces, '_', '-' or '.', "
            "starting with a letter or digit."
        )
    if name.isdigit():
        raise ConfigError(
            f"Study name {name!r} is all digits and would read as a study id; add a letter "
            f"(for example 'study-{name}')."
        )
    return name


def _check_ref(ref: object, role: str) -> str:
    if not isinstance(ref, str):
        raise ConfigError(
            f"The {role} model {ref!r} is not text; give a reference such as "
            "bundled:smollm2-135m-instruct, a Hugging Face id or a local folder."
        )
    return check_text(ref, f"The {role} model reference").strip()


def new_study(
    name: str,
    task_ref: str,
    *,
    teacher: str | None = None,
    student: str | None = None,
    backend: str = "transformers",
    seed: int = 0,
    config: dict[str, Any] | StudyConfig | None = None,
    description: str = "",
    guidelines: str = "",
    experiment_id: int | None = None,
) -> Study:
    """A study checked in every part (name, seed, models, settings, task data, splits), not yet
    stored: ``save_study`` stores it with its first round."""
    from teachlab.tasks import make_splits, resolve_task

    settings = get_settings()
    name = _check_name(name)
    seed = check_seed(seed)
    description = check_text(description or "", "The description")
    guidelines = _check_guidelines(guidelines or "")
    teacher = _check_ref(teacher or settings.teacher, "teacher")
    student = _check_ref(student or settings.student, "student")
    parse_ref(teacher)
    parse_ref(student)
    if backend not in BACKENDS:
        raise ConfigError(f"Backend {backend!r} is not known; choose one of {', '.join(BACKENDS)}.")
    cfg = config if isinstance(config, StudyConfig) else StudyConfig.from_dict(config)
    cfg.validate()
    if settings.demo_mode:
        from teachlab import demo

        demo.check_config(cfg)
    task = resolve_task(task_ref)
    splits = make_splits(task, n_seed=cfg.n_seed, n_probe=cfg.n_probe, n_test=cfg.n_test, seed=seed)
    return Study(
        name=name,
        description=description or task.description[:500],
        task_ref=task_ref,
        teacher=teacher,
        student=student,
        backend=backend,
        seed=seed,
        config=cfg.to_dict(),
        splits={
            "seed": list(splits.seed),
            "probe": list(splits.probe),
            "test": list(splits.test),
            "task_fingerprint": task.fingerprint(),
            "n_examples": len(task.examples),
        },
        guidelines=guidelines,
        experiment_id=experiment_id,
    )


def save_study(session: Session, study: Study) -> Study:
    """Store a checked study and its first round in ``session`` (refused if the name is taken)."""
    if session.exec(select(Study).where(Study.name == study.name)).first() is not None:
        raise ConfigError(f"A study named {study.name!r} exists already; choose another name.")
    session.add(study)
    session.flush()
    session.add(Round(study_id=study.id, index=0, teacher=study.teacher, student=study.student))  # type: ignore[arg-type]
    return study


def create_study(name: str, task_ref: str, **kw: Any) -> Study:
    """Validate everything, then store the study with its splits and its first round
    (keywords as ``new_study``'s)."""
    study = new_study(name, task_ref, **kw)
    init_db()
    with write_session() as session:
        return save_study(session, study)


def find_study(session: Session, ref: int | str) -> Study:
    """A study by id or name, in an open session; NotFoundError naming how to list them."""
    if isinstance(ref, int) or (str(ref).isascii() and str(ref).isdigit()):
        # An id past SQLite's 64-bit integers is no study (binding it would overflow).
        study = session.get(Study, int(ref)) if abs(int(ref)) <= MAX_ID else None
    else:
        study = session.exec(select(Study).where(Study.name == str(ref))).first()
    if study is None:
        raise NotFoundError(f"No study {ref!r}; list studies with `teachlab study list`.")
    return study


def get_study(ref: int | str) -> Study:
    """A study by id or name."""
    init_db()
    with read_session() as session:
        return find_study(session, ref)


def list_studies() -> list[StudySummary]:
    init_db()
    with read_session() as session:
        studies = session.exec(select(Study).order_by(col(Study.id))).all()
        out = []
        for s in studies:
            round_ids = [r.id for r in session.exec(select(Round).where(Round.study_id == s.id))]
            n_drafts = session.exec(
                select(func.count()).select_from(Draft).where(col(Draft.round_id).in_(round_ids))
            ).one()
            n_pairs = session.exec(
                select(func.count()).select_from(Pair).where(col(Pair.round_id).in_(round_ids))
            ).one()
            last = session.exec(
                select(Run).where(Run.study_id == s.id).order_by(col(Run.id).desc())
            ).first()
            out.append(
                StudySummary(
                    id=s.id,  # type: ignore[arg-type]
                    name=s.name,
                    task_ref=s.task_ref,
                    teacher=s.teacher,
                    student=s.student,
                    rounds=len(round_ids),
                    drafts=int(n_drafts),
                    pairs=int(n_pairs),
                    last_run=f"#{last.id} {last.kind} {last.status}" if last else "",
                    created=s.created_at.strftime("%Y-%m-%d %H:%M"),
                    archived=s.archived,
                )
            )
    return out


def last_reviewed_study(annotator: str) -> int | None:
    """The study whose pairs ``annotator`` decided most recently (None if they never have)."""
    with read_session() as session:
        row = session.exec(
            select(Round.study_id)
            .join(Pair, col(Pair.round_id) == col(Round.id))
            .join(AnnotationEvent, col(AnnotationEvent.pair_id) == col(Pair.id))
            .where(AnnotationEvent.annotator == annotator)
            .order_by(col(AnnotationEvent.id).desc())
        ).first()
    return int(row) if row is not None else None


def duplicate_study(ref: int | str, new_name: str) -> Study:
    """A new study with the same task, models, settings and seed (no drafts or runs)."""
    src = get_study(ref)
    return create_study(
        new_name,
        src.task_ref,
        teacher=src.teacher,
        student=src.student,
        backend=src.backend,
        seed=src.seed,
        config=src.config,
        description=src.description,
        guidelines=src.guidelines,
    )


# Settings that may change after a study is made: they steer training and evaluation still
# to come, never the splits, drafts, scores or pairs already stored (each run records the
# settings it used). The rest fix what the stored rows mean: duplicate the study to change them.
EDITABLE_SETTINGS = (
    "use_unreviewed",
    "dpo_lr",
    "dpo_beta",
    "dpo_epochs",
    "dpo_batch_size",
    "dpo_max_steps",
    "sft_lr",
    "sft_epochs",
    "sft_batch_size",
    "sft_max_steps",
    "save_steps",
    "gradient_checkpointing",
    "eval_shots",
    "bootstrap",
)


def _active_run(session: Session, study_id: int) -> Run | None:
    from teachlab.jobs.runs import ACTIVE

    return session.exec(
        select(Run).where(Run.study_id == study_id, col(Run.status).in_(ACTIVE))
    ).first()


def edit_study(
    ref: int | str,
    *,
    name: str | None = None,
    description: str | None = None,
    settings: dict[str, Any] | None = None,
) -> Study:
    """Rename a study, change its description, or change the settings that are safe to change
    (``EDITABLE_SETTINGS``); refused while one of its runs is queued or running."""
    study = get_study(ref)
    changes = dict(settings or {})
    fixed = sorted(k for k in changes if k not in EDITABLE_SETTINGS)
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)} cannot change after a study is made (stored drafts, scores and "
            "pairs were made with them); duplicate the study and change them there."
        )
    new_name = _check_name(name) if name is not None else study.name
    text = check_text(description, "The description") if description is not None else None
    config = StudyConfig.from_dict({**study.config, **changes}).to_dict() if changes else None
    if config is not None and get_settings().demo_mode:
        from teachlab import demo

        demo.check_config(StudyConfig.from_dict(config))
    with write_session() as session:
        row = session.get(Study, study.id)
        assert row is not None
        busy = _active_run(session, int(row.id or 0))
        if busy is not None:
            raise ConfigError(
                f"Run #{busy.id} ({busy.kind}) of this study is {busy.status}; change the study "
                "once it has finished, or cancel it first."
            )
        if new_name != row.name:
            clash = session.exec(select(Study).where(Study.name == new_name)).first()
            if clash is not None:
                raise ConfigError(f"A study named {new_name!r} exists already; pick another name.")
            row.name = new_name
        if text is not None:
            row.description = text
        if config is not None:
            row.config = config
        session.add(row)
        session.flush()
        session.refresh(row)
        return row


def archive_study(ref: int | str, archived: bool = True) -> Study:
    """Archive a study (kept whole, hidden from the study pickers) or bring it back."""
    study = get_study(ref)
    with write_session() as session:
        row = session.get(Study, study.id)
        assert row is not None
        row.archived = bool(archived)
        session.add(row)
        session.flush()
        session.refresh(row)
        return row


@dataclass(frozen=True)
class Footprint:
    """What deleting a study removes."""

    rounds: int
    drafts: int
    pairs: int
    decisions: int
    runs: int
    run_folders: list[str]

    def describe(self) -> str:
        return (
            f"{self.rounds} rounds, {self.drafts} drafts with their scores, {self.pairs} pairs "
            f"with {self.decisions} review decisions, {self.runs} runs with their logs, "
            f"checkpoints and adapters ({len(self.run_folders)} folders)"
        )


def footprint(ref: int | str) -> Footprint:
    study = get_study(ref)
    runs_dir = get_settings().runs_dir
    with read_session() as session:
        round_ids = [r.id for r in session.exec(select(Round).where(Round.study_id == study.id))]
        pair_ids = select(Pair.id).where(col(Pair.round_id).in_(round_ids))

        def count(model: Any, *where: Any) -> int:
            return int(session.exec(select(func.count()).select_from(model).where(*where)).one())

        run_ids = list(session.exec(select(Run.id).where(Run.study_id == study.id)))
        return Footprint(
            rounds=len(round_ids),
            drafts=count(Draft, col(Draft.round_id).in_(round_ids)),
            pairs=count(Pair, col(Pair.round_id).in_(round_ids)),
            decisions=count(AnnotationEvent, col(AnnotationEvent.pair_id).in_(pair_ids)),
            runs=len(run_ids),
            run_folders=[
                str(runs_dir / f"run-{i:05d}")
                for i in run_ids
                if i is not None and (runs_dir / f"run-{i:05d}").exists()
            ],
        )


def delete_study(ref: int | str, confirm: str) -> Footprint:
    """Delete a study with everything it made (``footprint``), once ``confirm`` is its name.
    Exports already written stay where they are. Refused while one of its runs is active and
    for a study an experiment made (delete or keep the experiment as a whole)."""
    import shutil

    study = get_study(ref)
    if (confirm or "").strip() != study.name:
        raise ConfigError(
            f"To delete study #{study.id}, type its name {study.name!r} to confirm (archiving "
            "it instead hides it and can be undone)."
        )
    if study.experiment_id is not None:
        raise ConfigError(
            f"Study {study.name!r} belongs to experiment #{study.experiment_id}; its results "
            "need it. Archive it instead."
        )
    gone = footprint(study.id)  # type: ignore[arg-type]
    with write_session() as session:
        row = session.get(Study, study.id)
        assert row is not None
        busy = _active_run(session, int(row.id or 0))
        if busy is not None:
            raise ConfigError(
                f"Run #{busy.id} ({busy.kind}) of this study is {busy.status}; cancel it before "
                "deleting the study."
            )
        session.delete(row)
    for folder in gone.run_folders:
        shutil.rmtree(folder, ignore_errors=True)
    return gone


def _check_guidelines(text: str) -> str:
    text = check_text(text, "The guidelines")
    if len(text) > MAX_GUIDELINES:
        # Refused, not cut: a cut would drop rules without anyone knowing.
        raise ConfigError(
            f"The guidelines are {len(text):,} characters, over the limit of {MAX_GUIDELINES:,}. "
            "Shorten them (link to a longer document instead)."
        )
    return text


def update_guidelines(ref: int | str, text: str) -> None:
    text = _check_guidelines(text)
    study = get_study(ref)
    with write_session() as session:
        row = session.get(Study, study.id)
        assert row is not None
        row.guidelines = text
        session.add(row)


def ensure_demo_study() -> Study | None:
    """Create the demo study on first start (bundled models, a BIG-bench task) if none exist."""
    from teachlab.tasks import list_bigbench

    init_db()
    with read_session() as session:
        if session.exec(select(Study)).first() is not None:
            return None
    if DEMO_TASK.split(":", 1)[1] not in list_bigbench():
        return None  # task data not fetched yet (`teachlab data fetch`)
    return create_demo_study(DEMO_NAME)


def create_demo_study(name: str = DEMO_NAME) -> Study:
    """The demo study: the demo task and settings on the bundled models, with guidelines."""
    return create_study(
        name,
        DEMO_TASK,
        seed=0,
        config=DEMO_CONFIG,
        description=DEMO_DESCRIPTION,
        guidelines="Prefer the draft whose question is well-formed, whose target is correct, and "
        "whose rationale reaches the target by valid steps. When both are bad, reject the pair.",
    )
