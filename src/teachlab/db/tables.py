"""The study store's tables (SPEC section 5).

Study → Round → Draft → ProbeResult; Round → Pair → AnnotationEvent (append-only);
Run → Metric; Round → Evaluation. JSON columns hold configs and flags.
Schema changes go through an Alembic migration in ``teachlab/db/migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(**kw: Any) -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False), **kw)


def _text(default: str | None = "") -> Any:
    return Field(default=default, sa_column=Column(Text, nullable=default is None))


class Study(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    description: str = ""
    task_ref: str  # bigbench:<name> | upload:<name> | file:<path> | hf:<spec>
    teacher: str
    student: str
    backend: str = "transformers"
    seed: int = 0
    config: dict[str, Any] = _json()  # StudyConfig as a dict (sizes, scorer, rule, prompts…)
    splits: dict[str, Any] = _json()  # {"seed": [...], "probe": [...], "test": [...]}
    guidelines: str = _text()
    created_at: datetime = Field(default_factory=utcnow)
    archived: bool = False
    # A study an experiment made for one of its tasks and seeds (None: a study of its own).
    experiment_id: int | None = Field(
        default=None, foreign_key="experiment.id", ondelete="CASCADE", index=True
    )


class Round(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("study_id", "index"),)
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True, ondelete="CASCADE")
    index: int = 0
    teacher: str  # model ref the round starts from
    teacher_adapter: str | None = None  # adapter folder (None = base weights)
    student: str
    student_adapter: str | None = None
    status: str = "open"  # open | done
    # An experiment arm's branch of round 0: its tailored data and adapters (None: a round).
    arm: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Draft(SQLModel, table=True):
    """One teacher output: a question, or a rationale for a question (``parent_id``)."""

    __table_args__ = (
        Index("ix_draft_round_kind_phase", "round_id", "kind", "phase"),
        UniqueConstraint("round_id", "phase", "idem_key"),
    )
    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", ondelete="CASCADE")
    kind: str  # question | rationale
    phase: str = "draft"  # draft (scored for preferences) | tailored (regenerated for SFT)
    parent_id: int | None = Field(default=None, foreign_key="draft.id", ondelete="CASCADE")
    idem_key: str  # deterministic key of (stage, batch, slot): a resumed stage skips stored ones
    strategy: str | None = None  # rationale strategy name
    prompt: str = _text()  # the exact text the teacher was given (chat template applied)
    prefill: str = ""  # text the assistant turn was prefilled with (part of the completion)
    raw_output: str = _text()
    input: str | None = _text(None)
    target: str | None = _text(None)
    choices: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    rationale: str | None = _text(None)
    answer: str | None = None  # the answer inside <ans>…</ans> of a rationale
    status: str = "ok"  # ok | rejected (parse failure) | duplicate
    reason: str = ""  # why rejected / duplicate
    flags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    template_version: str = ""
    sampling: dict[str, Any] = _json()
    teacher: str = ""
    adapter_hash: str | None = None
    score: float | None = None  # rationale: probe accuracy; question: mean of rationales
    margin_score: float | None = None  # mean over probes of log p(gold) − max log p(other)
    created_at: datetime = Field(default_factory=utcnow)


class ProbeResult(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("draft_id", "probe_index", "mode"),
        # The zero-shot baseline has no draft (NULL never clashes in a UNIQUE constraint):
        # one baseline row per round, probe and mode.
        Index(
            "ux_proberesult_baseline",
            "round_id",
            "probe_index",
            "mode",
            unique=True,
            sqlite_where=text("draft_id IS NULL"),
            postgresql_where=text("draft_id IS NULL"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    draft_id: int | None = Field(
        default=None, foreign_key="draft.id", ondelete="CASCADE", index=True
    )
    round_id: int = Field(foreign_key="round.id", ondelete="CASCADE", index=True)
    probe_index: int  # index of the example in the task
    mode: str  # loglik | generate
    predicted: str = ""
    correct: bool = False
    gold_logprob: float | None = None
    margin: float | None = None
    output: str = _text()  # generated continuation in generate mode


class Pair(SQLModel, table=True):
    __table_args__ = (Index("ix_pair_round_status", "round_id", "status"),)
    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", ondelete="CASCADE")
    level: str  # question | rationale
    rule: str  # arte | margin | baseline | ranked (+label-balanced)
    prompt: str = _text()  # chat-templated prompt, byte-identical to generation (or erased)
    chosen: str = _text()
    rejected: str = _text()
    chosen_draft_id: int | None = Field(default=None, foreign_key="draft.id", ondelete="SET NULL")
    rejected_draft_id: int | None = Field(default=None, foreign_key="draft.id", ondelete="SET NULL")
    chosen_score: float | None = None
    rejected_score: float | None = None
    margin: float = 0.0
    rank: int = 0  # curriculum order (easy → hard) for the ranked rule
    source: str = "auto"  # auto | human
    status: str = "proposed"  # proposed | approved | overridden | edited | rejected
    version: int = 1  # optimistic concurrency: every decision bumps it
    annotator: str | None = None
    note: str = ""
    updated_at: datetime = Field(default_factory=utcnow)


class AnnotationEvent(SQLModel, table=True):
    """Append-only audit log of every decision on a pair (never updated or deleted)."""

    id: int | None = Field(default=None, primary_key=True)
    pair_id: int = Field(foreign_key="pair.id", ondelete="CASCADE", index=True)
    annotator: str
    action: str  # approve | swap | edit | reject | undo | bulk-approve | bulk-reject | create
    before: dict[str, Any] = _json()
    after: dict[str, Any] = _json()
    note: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    """A job: the database, not the queue, is the record of what ran."""

    __table_args__ = (Index("ix_run_status", "status"),)
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", ondelete="CASCADE", index=True)
    round_id: int | None = Field(default=None, foreign_key="round.id", ondelete="CASCADE")
    parent_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    kind: str  # draft | score | pairs | align | regenerate | distill | evaluate | check | round
    config: dict[str, Any] = _json()
    status: str = "queued"  # queued | running | succeeded | failed | cancelled | interrupted
    progress_done: int = 0
    progress_total: int = 0
    message: str = ""  # what it is doing now
    cancel_requested: bool = False
    attempts: int = 0
    worker: str | None = None  # lease owner (host:pid)
    lease: int = 0  # the lease's generation: every claim takes a new one; writes check it
    heartbeat_at: datetime | None = None
    checkpoint: str | None = None
    log_path: str | None = None
    error: str | None = _text(None)
    seed: int = 0
    provenance: dict[str, Any] = _json()  # package versions, git revision, model/adapter hashes
    result: dict[str, Any] = _json()
    requested_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Metric(SQLModel, table=True):
    __table_args__ = (Index("ix_metric_run_name_step", "run_id", "name", "step"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE")
    step: int
    name: str
    value: float
    created_at: datetime = Field(default_factory=utcnow)


class Evaluation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", ondelete="CASCADE", index=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    model: str  # "student-before" | "student-after" | a model ref
    model_ref: str = ""
    adapter_hash: str | None = None
    split: str = "test"
    shots: int = 0
    mode: str = "loglik"
    accuracy: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    created_at: datetime = Field(default_factory=utcnow)


class SignalCheck(SQLModel, table=True):
    """Is there signal? The student against chance, score reliability, label confound (per round)."""

    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", ondelete="CASCADE", index=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    level: str  # ok | warn | stop
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] = _json()
    overridden_by: str | None = None  # a researcher who chose to go on despite the verdict
    created_at: datetime = Field(default_factory=utcnow)


class Experiment(SQLModel, table=True):
    """Arms compared on tasks and seeds; its studies hold each task's shared first round."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    spec: dict[str, Any] = _json()  # ExperimentSpec as a dict: tasks, arms, seeds, settings
    estimate: dict[str, Any] = _json()  # the compute estimate made before it ran
    created_at: datetime = Field(default_factory=utcnow)


class ItemResult(SQLModel, table=True):
    """One held-out test item as an arm's student answered it: the unit of paired statistics."""

    __table_args__ = (
        UniqueConstraint("experiment_id", "arm", "task", "seed", "mode", "shots", "item"),
    )
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", ondelete="CASCADE", index=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    arm: str
    task: str  # task reference
    seed: int
    mode: str  # loglik | cot
    shots: int
    item: int  # the example's index in its task
    correct: bool
    predicted: str = ""


class Cost(SQLModel, table=True):
    """What one step of an experiment spent: time, tokens, memory (and GPU time on a GPU)."""

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", ondelete="CASCADE", index=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    arm: str | None = None  # None: a step the arms share (drafts, scores, pairs)
    stage: str
    seed: int
    task: str | None = None  # None: pooled over tasks
    seconds: float
    tokens_generated: int = 0
    tokens_scored: int = 0  # tokens read by forward passes (prompts, scoring, training)
    peak_rss_mb: float = 0.0
    gpu_seconds: float | None = None
    created_at: datetime = Field(default_factory=utcnow)


ALL_TABLES = (
    Study,
    Round,
    Draft,
    ProbeResult,
    Pair,
    AnnotationEvent,
    Run,
    Metric,
    Evaluation,
    SignalCheck,
    Experiment,
    ItemResult,
    Cost,
)
