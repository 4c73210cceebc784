"""Human review of preference pairs: store, decide, undo, bulk, queue and the audit trail.

Every decision is an optimistic-concurrency update (``version`` must be the one the annotator
saw) plus an append-only ``AnnotationEvent`` in the same transaction; nothing here ever updates
or deletes an event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from teachlab.db import AnnotationEvent, Pair, read_session, write_session
from teachlab.db.tables import utcnow
from teachlab.errors import ConfigError, ConflictError, NotFoundError, PermissionDenied
from teachlab.pairs import PairSpec

DECISIONS = ("approve", "swap", "edit", "reject", "reopen")
BULK = ("approve", "reject")
STATUS_AFTER = {
    "approve": "approved",
    "swap": "overridden",
    "edit": "edited",
    "reject": "rejected",
    "reopen": "proposed",
}
TRAINED_STATUSES = ("approved", "overridden", "edited")
ORDERS = ("margin", "rank", "id")
# What a decision changes and an undo restores (the audit rows also record the version).
STATE_FIELDS = (
    "status",
    "source",
    "chosen",
    "rejected",
    "chosen_draft_id",
    "rejected_draft_id",
    "chosen_score",
    "rejected_score",
    "margin",
)
# Event actions that changed a pair's content or status (so an undo can revert them).
_UNDOABLE = (*DECISIONS, "bulk-approve", "bulk-reject")


def _state(pair: Pair) -> dict[str, Any]:
    return {name: getattr(pair, name) for name in STATE_FIELDS}


def _who(annotator: str | None) -> str:
    name = (annotator or "").strip()
    if not name:
        raise PermissionDenied(
            "Decisions need the annotator's name for the audit trail, and none was given; "
            "sign in (or pass --annotator on the command line) and try again."
        )
    return name


def _get(session: Session, pair_id: int) -> Pair:
    pair = session.get(Pair, pair_id)
    if pair is None:
        raise NotFoundError(f"Pair {pair_id} does not exist; reload the review queue.")
    return pair


def _conflict(pair: Pair, expected_version: int) -> ConflictError:
    when = f"{pair.updated_at:%H:%M} UTC" if pair.updated_at else "an unknown time"
    return ConflictError(
        f"Pair {pair.id} was changed by {pair.annotator or 'someone'} at {when} since you "
        f"opened it (version {expected_version}, now {pair.version}); reload to see the new "
        "version, then decide again."
    )


def _change(
    session: Session,
    pair: Pair,
    expected_version: int,
    who: str,
    action: str,
    after: dict[str, Any],
    note: str,
) -> None:
    """Update the pair if still at ``expected_version`` and append its audit row."""
    before = {**_state(pair), "version": pair.version}
    result = session.exec(
        update(Pair)
        .where(col(Pair.id) == pair.id, col(Pair.version) == expected_version)
        .values(
            **after,
            version=Pair.version + 1,
            annotator=who,
            note=note,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        # Only reachable without BEGIN IMMEDIATE, but it is the check that makes a stale
        # decision impossible, so it stays even though the version was compared above.
        session.refresh(pair)
        raise _conflict(pair, expected_version)
    session.add(
        AnnotationEvent(
            pair_id=pair.id,  # type: ignore[arg-type]
            annotator=who,
            action=action,
            before=before,
            after={**after, "version": expected_version + 1},
            note=note,
        )
    )
    session.flush()
    session.refresh(pair)


def _decided(
    state: dict[str, Any], action: str, chosen: str | None, rejected: str | None
) -> dict[str, Any]:
    after = {**state, "status": STATUS_AFTER[action]}
    if action == "swap":
        for a, b in (("chosen", "rejected"), ("chosen_draft_id", "rejected_draft_id")):
            after[a], after[b] = state[b], state[a]
        after["chosen_score"], after["rejected_score"] = (
            state["rejected_score"],
            state["chosen_score"],
        )
        # The margin keeps meaning chosen minus rejected score: negative = a human overrode
        # the student.
        after["margin"] = -state["margin"]
        after["source"] = "human"
    elif action == "edit":
        new_chosen = state["chosen"] if chosen is None else chosen
        new_rejected = state["rejected"] if rejected is None else rejected
        if not new_chosen.strip() or not new_rejected.strip():
            raise ConfigError("An edited pair needs a non-empty chosen and rejected text.")
        if new_chosen == new_rejected:
            raise ConfigError(
                "After this edit the chosen and rejected texts are identical, which teaches "
                "nothing; change one of them or reject the pair."
            )
        if (new_chosen, new_rejected) == (state["chosen"], state["rejected"]):
            raise ConfigError("The edit changes neither text; approve the pair instead.")
        after |= {"chosen": new_chosen, "rejected": new_rejected, "source": "human"}
    return after


def decide(
    pair_id: int,
    action: str,
    annotator: str,
    expected_version: int,
    note: str = "",
    chosen: str | None = None,
    rejected: str | None = None,
) -> Pair:
    """Approve, swap, edit, reject or reopen a pair that is still at ``expected_version``."""
    who = _who(annotator)
    if action not in DECISIONS:
        raise ConfigError(f"Unknown decision {action!r}; choose one of {', '.join(DECISIONS)}.")
    if action != "edit" and (chosen is not None or rejected is not None):
        raise ConfigError(f"New texts are only taken by 'edit', not by {action!r}.")
    with write_session() as session:
        pair = _get(session, pair_id)
        if pair.version != expected_version:
            raise _conflict(pair, expected_version)
        after = _decided(_state(pair), action, chosen, rejected)
        _change(session, pair, expected_version, who, action, after, note)
        return pair


def undo(
    pair_id: int,
    annotator: str,
    expected_version: int,
    note: str = "",
) -> Pair:
    """Restore the pair as it was before its latest decision not yet undone.

    Undos stack: each one cancels the newest remaining decision, and is itself a new event.
    """
    who = _who(annotator)
    with write_session() as session:
        pair = _get(session, pair_id)
        if pair.version != expected_version:
            raise _conflict(pair, expected_version)
        events = session.exec(
            select(AnnotationEvent)
            .where(AnnotationEvent.pair_id == pair_id)
            .order_by(col(AnnotationEvent.id).desc())
        ).all()
        pending, target = 0, None
        for event in events:
            if event.action == "undo":
                pending += 1
            elif event.action in _UNDOABLE:
                if pending == 0:
                    target = event
                    break
                pending -= 1
        if target is None:
            raise NotFoundError(f"Pair {pair_id} has no decision left to undo.")
        after = {name: target.before[name] for name in STATE_FIELDS}
        note = note or f"undo of {target.action} by {target.annotator} (event {target.id})"
        _change(session, pair, expected_version, who, "undo", after, note)
        return pair


def _key(level: str, a: int | None, b: int | None) -> tuple[str, frozenset[int | None]]:
    # Unordered: a pair a human swapped must not come back as a new proposal on resume.
    return (level, frozenset((a, b)))


def store_pairs(
    round_id: int,
    specs: Iterable[PairSpec],
    *,
    writer: Callable[[], AbstractContextManager[Session]] = write_session,
) -> int:
    """Insert automatic pairs (proposed, version 1); returns how many were new.

    Idempotent: a pair over the same two drafts at the same level is never stored twice, in
    either order, so a resumed pair stage skips what is stored and keeps human decisions. No
    audit event is written: the row itself records the automatic proposal, and the first
    decision's ``before`` keeps that state for undo. ``writer``: the session to write in (a
    stage passes its run's fenced one).
    """
    with writer() as session:
        rows = session.exec(
            select(Pair.level, Pair.chosen_draft_id, Pair.rejected_draft_id).where(
                Pair.round_id == round_id
            )
        ).all()
        seen = {_key(level, a, b) for level, a, b in rows if a is not None and b is not None}
        added = 0
        for spec in specs:
            key = _key(spec.level, spec.chosen_id, spec.rejected_id)
            if key in seen:
                continue
            seen.add(key)
            session.add(
                Pair(
                    round_id=round_id,
                    level=spec.level,
                    rule=spec.rule,
                    prompt=spec.prompt,
                    chosen=spec.chosen_text,
                    rejected=spec.rejected_text,
                    chosen_draft_id=spec.chosen_id,
                    rejected_draft_id=spec.rejected_id,
                    chosen_score=spec.chosen_score,
                    rejected_score=spec.rejected_score,
                    margin=spec.margin,
                    rank=spec.rank,
                )
            )
            added += 1
        return added


def _filtered(
    round_id: int,
    status: str | None,
    level: str | None,
    min_margin: float | None = None,
    max_margin: float | None = None,
) -> Any:
    query = select(Pair).where(Pair.round_id == round_id)
    if status is not None:
        query = query.where(Pair.status == status)
    if level is not None:
        query = query.where(Pair.level == level)
    if min_margin is not None:
        query = query.where(col(Pair.margin) >= min_margin)
    if max_margin is not None:
        query = query.where(col(Pair.margin) <= max_margin)
    return query


def bulk(
    round_id: int,
    action: str,
    annotator: str,
    *,
    min_margin: float | None = None,
    max_margin: float | None = None,
    status: str | None = "proposed",
    level: str | None = None,
    note: str = "",
) -> int:
    """Approve or reject every pair matching the filter, one event each, in one transaction."""
    who = _who(annotator)
    if action not in BULK:
        raise ConfigError(f"Bulk decisions are {' or '.join(BULK)}, not {action!r}.")
    with write_session() as session:
        query = _filtered(round_id, status, level, min_margin, max_margin)
        pairs = session.exec(query.order_by(col(Pair.id))).all()
        for pair in pairs:
            after = {**_state(pair), "status": STATUS_AFTER[action]}
            _change(session, pair, pair.version, who, f"bulk-{action}", after, note)
        return len(pairs)


def count_matching(
    round_id: int,
    *,
    min_margin: float | None = None,
    max_margin: float | None = None,
    status: str | None = "proposed",
    level: str | None = None,
) -> int:
    """How many pairs ``bulk`` would decide with the same filter."""
    query = _filtered(round_id, status, level, min_margin, max_margin)
    with read_session() as session:
        return len(session.exec(query).all())


def queue(
    round_id: int,
    *,
    status: str | None = None,
    level: str | None = None,
    order: str = "margin",
    limit: int | None = None,
) -> list[Pair]:
    """The round's pairs, least certain (smallest |margin|) first by default (Hybrid Preferences)."""
    if order not in ORDERS:
        raise ConfigError(f"Unknown queue order {order!r}; choose one of {', '.join(ORDERS)}.")
    keys = {
        "margin": (func.abs(Pair.margin), col(Pair.id)),
        "rank": (col(Pair.rank), col(Pair.id)),
        "id": (col(Pair.id),),
    }[order]
    query = _filtered(round_id, status, level).order_by(*keys)
    if limit is not None:
        query = query.limit(limit)
    with read_session() as session:
        return list(session.exec(query).all())


def progress(round_id: int) -> tuple[int, int]:
    """(reviewed, total): reviewed = any status but proposed."""
    with read_session() as session:
        rows = session.exec(
            select(Pair.status, func.count()).where(Pair.round_id == round_id).group_by(Pair.status)
        ).all()
    total = sum(n for _, n in rows)
    return total - sum(n for s, n in rows if s == "proposed"), total


def decided_by(round_id: int, annotator: str) -> int:
    """How many of the round's pairs ``annotator`` has decided (bulk decisions included)."""
    with read_session() as session:
        return int(
            session.exec(
                select(func.count(func.distinct(AnnotationEvent.pair_id)))
                .join(Pair, col(Pair.id) == col(AnnotationEvent.pair_id))
                .where(Pair.round_id == round_id, AnnotationEvent.annotator == annotator)
            ).one()
        )


def history(pair_id: int) -> list[AnnotationEvent]:
    """Every event on a pair, oldest first."""
    with read_session() as session:
        return list(
            session.exec(
                select(AnnotationEvent)
                .where(AnnotationEvent.pair_id == pair_id)
                .order_by(col(AnnotationEvent.id))
            ).all()
        )


def training_pairs(round_id: int, use_unreviewed: bool) -> list[Pair]:
    """The pairs DPO trains on, in curriculum order (rank, then id).

    Human-decided pairs (approved, swapped, edited) always count, with the human's texts since
    a decision changes the row itself; unreviewed proposals only when ``use_unreviewed``;
    rejected ones never.
    """
    statuses = (*TRAINED_STATUSES, "proposed") if use_unreviewed else TRAINED_STATUSES
    with read_session() as session:
        return list(
            session.exec(
                select(Pair)
                .where(Pair.round_id == round_id, col(Pair.status).in_(statuses))
                .order_by(col(Pair.rank), col(Pair.id))
            ).all()
        )


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when undefined.

    Undefined for no items, or when chance agreement is 1 (both raters used one same label).
    """
    if len(a) != len(b):
        raise ValueError("Both raters must label the same items.")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    expected = sum((list(a).count(label) / n) * (list(b).count(label) / n) for label in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


@dataclass(frozen=True, slots=True)
class Agreement:
    annotators: tuple[str, str]
    n: int  # pairs both decided
    observed: float | None  # raw agreement (shown, but kappa is the figure to report)
    kappa: float | None


_VERDICT = {"bulk-approve": "approve", "bulk-reject": "reject"}


def agreement(round_id: int, first: str, second: str) -> Agreement:
    """Agreement of two annotators over the pairs both decided, from each one's last decision.

    Verdicts are approve | swap | edit | reject (bulk decisions count as approve/reject);
    undo and reopen are not verdicts.
    """
    with read_session() as session:
        events = session.exec(
            select(AnnotationEvent)
            .join(Pair, col(Pair.id) == AnnotationEvent.pair_id)
            .where(Pair.round_id == round_id, col(AnnotationEvent.annotator).in_((first, second)))
            .order_by(col(AnnotationEvent.id))
        ).all()
    last: dict[tuple[str, int], str] = {}
    for e in events:
        verdict = _VERDICT.get(e.action, e.action)
        if verdict in ("approve", "swap", "edit", "reject"):
            last[(e.annotator, e.pair_id)] = verdict
    shared = sorted({p for w, p in last if w == first} & {p for w, p in last if w == second})
    a = [last[(first, p)] for p in shared]
    b = [last[(second, p)] for p in shared]
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / len(a) if a else None
    return Agreement((first, second), len(shared), observed, cohen_kappa(a, b))
