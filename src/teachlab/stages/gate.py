"""The signal gate: a round's latest signal check, shown before compute is spent on the round.

A "stop" verdict holds back the stages that spend compute on the student's preferences until
the researcher overrides it (recorded with their name) or a new check says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select

from teachlab.db import Round, SignalCheck, read_session, write_session
from teachlab.errors import ConflictError, NotFoundError
from teachlab.jobs.context import Stage

ICON = {"ok": "✅", "warn": "⚠️", "stop": "⛔"}


@dataclass(frozen=True)
class Gate:
    round_index: int
    check_id: int | None = None
    level: str | None = None  # ok | warn | stop; None before any check
    reasons: list[str] = field(default_factory=list)
    overridden_by: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> bool:
        return self.level == "stop" and not self.overridden_by

    def figures(self) -> str:
        """One line of the check's numbers: the student against chance, reliability, labels."""
        chance = self.result.get("chance") or {}
        parts = []
        block = chance.get("few_shot") or chance.get("zero_shot")
        rate = chance.get("chance_rate")
        if block and rate is not None:
            shots = "few-shot" if chance.get("few_shot") else "zero-shot"
            by = (
                f" by always answering '{chance['majority_label']}'"
                if chance.get("baseline") == "majority"
                else ""
            )
            parts.append(
                f"student {shots} {block['accuracy']:.2f} vs chance {rate:.2f}{by} "
                f"(95% CI {block['ci_low']:.2f}–{block['ci_high']:.2f})"
            )
        rel = self.result.get("reliability") or {}
        if rel.get("reliability") is not None:
            low, high = rel.get("reliability_ci") or (None, None)
            ci = f" (CI {low:.2f}–{high:.2f})" if low is not None and high is not None else ""
            metric = self.result.get("metric", "accuracy")
            parts.append(f"split-half reliability of {metric} scores {rel['reliability']:.2f}{ci}")
        if self.result.get("label_share") is not None:
            parts.append(f"answer label explains {100 * self.result['label_share']:.0f}%")
        return " · ".join(parts)

    def markdown(self) -> str:
        """The verdict as the pages show it (reasons are the check's own sentences)."""
        if self.level is None:
            return (
                f"**Signal check** (round {self.round_index}): not run yet. Launch the **check** "
                "stage first (about a minute): it tells whether the student is above chance and "
                "whether draft scores are reliable enough to learn preferences from."
            )
        head = (
            f"**Signal check** (round {self.round_index}): {ICON.get(self.level, '')} "
            f"**{self.level}**"
        )
        if self.overridden_by:
            head += f" — overridden by {self.overridden_by}"
        elif self.blocks:
            head += " — compute stages are held back until you override it or a new check passes"
        parts = [head, self.figures()]
        parts.append("\n".join(f"- {r}" for r in self.reasons) or "- no problems found")
        return "\n\n".join(p for p in parts if p)


def latest_check(round_id: int) -> SignalCheck | None:
    """The round's newest signal check (None before any)."""
    with read_session() as session:
        return session.exec(
            select(SignalCheck)
            .where(SignalCheck.round_id == round_id)
            .order_by(col(SignalCheck.id).desc())
        ).first()


def override(check_id: int, researcher: str) -> SignalCheck:
    """Record that a researcher chose to go on despite the verdict."""
    with write_session() as session:
        row = session.get(SignalCheck, check_id)
        if row is None:
            raise NotFoundError(f"Signal check #{check_id} does not exist.")
        row.overridden_by = researcher
        session.add(row)
        return row


def gate_for(round_id: int) -> Gate:
    with read_session() as session:
        rnd = session.get(Round, round_id)
        if rnd is None:
            raise NotFoundError(f"Round #{round_id} does not exist.")
        round_index = rnd.index
    row = latest_check(round_id)
    if row is None:
        return Gate(round_index)
    return Gate(
        round_index,
        check_id=row.id,
        level=row.level,
        reasons=list(row.reasons),
        overridden_by=row.overridden_by,
        result=dict(row.result),
    )


def ensure_may_launch(round_id: int, stage: Stage, *, override_by: str | None = None) -> Gate:
    """Refuse a stage that spends compute while the round's check says stop, unless the
    researcher overrides. Stages that measure rather than spend (check, evaluate) always run.

    An override is recorded on the check (who went ahead) before the run is queued.
    """
    gate = gate_for(round_id)
    if not stage.spends or not gate.blocks:
        return gate
    if override_by:
        assert gate.check_id is not None  # blocks implies a stored check
        override(gate.check_id, override_by)
        return gate_for(round_id)
    reasons = "; ".join(gate.reasons) or "no reason recorded"
    raise ConflictError(
        f"The signal check of round {gate.round_index} says stop ({reasons}). Fix what it names and "
        "run the check again, or go ahead anyway: tick 'Go ahead despite the signal check' on "
        "the Runs page, or pass --override on the command line."
    )
