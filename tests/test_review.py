"""The review service on a real SQLite file: decisions, audit trail, concurrency, selection."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
from builders import draft, round_, study
from sqlalchemy import event
from sqlmodel import select

from teachlab import review
from teachlab.db import AnnotationEvent, Pair, Store, init_db, read_session
from teachlab.errors import ConfigError, ConflictError, NotFoundError, PermissionDenied
from teachlab.pairs import PairSpec
from teachlab.settings import get_settings


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEACHLAB_STORAGE", str(tmp_path / "storage"))
    get_settings.cache_clear()
    path = init_db().path
    yield path
    get_settings.cache_clear()


def make_round(db: Path, n_drafts: int = 8) -> tuple[int, list[int]]:
    rnd = round_(study())
    drafts = [draft(rnd, raw_output=f"draft {i}") for i in range(n_drafts)]
    return rnd.id, [d.id for d in drafts]  # type: ignore[return-value]


def spec(chosen: int, rejected: int, margin: float, level: str = "question") -> PairSpec:
    return PairSpec(
        level=level,
        rule="arte",
        group="g",
        prompt="the prompt",
        chosen_id=chosen,
        rejected_id=rejected,
        chosen_text=f"text {chosen}",
        rejected_text=f"text {rejected}",
        chosen_score=0.5 + margin / 2,
        rejected_score=0.5 - margin / 2,
        margin=margin,
    )


@pytest.fixture
def pairs(db: Path) -> tuple[int, list[Pair]]:
    """A round with four stored pairs of margins 0.1, 0.2, 0.4, 0.8 over distinct drafts."""
    round_id, d = make_round(db)
    specs = [spec(d[0], d[1], 0.8), spec(d[2], d[3], 0.1), spec(d[4], d[5], 0.4)]
    specs.append(spec(d[6], d[7], 0.2, level="rationale"))
    assert review.store_pairs(round_id, specs) == 4
    return round_id, review.queue(round_id, order="id")


def events(db: Path) -> list[dict[str, Any]]:
    with read_session() as s:
        rows = s.exec(select(AnnotationEvent).order_by(AnnotationEvent.id)).all()
        return [row.model_dump() for row in rows]


def row(db: Path, pair_id: int) -> Pair:
    with read_session() as s:
        pair = s.get(Pair, pair_id)
        assert pair is not None
        return pair


# ---- store ----------------------------------------------------------------------------


def test_store_pairs_is_idempotent_even_after_a_swap(db: Path) -> None:
    round_id, d = make_round(db)
    specs = [spec(d[0], d[1], 0.5), spec(d[2], d[3], 0.3), spec(d[0], d[1], 0.5)]
    assert review.store_pairs(round_id, specs) == 2  # the duplicate spec skipped
    stored = review.queue(round_id, order="id")
    assert [(p.status, p.source, p.version) for p in stored] == [("proposed", "auto", 1)] * 2
    assert stored[0].chosen == f"text {d[0]}" and stored[0].chosen_draft_id == d[0]
    review.decide(stored[0].id, "swap", "alice", 1)
    # A resumed pair stage proposes the same pairs again: nothing new, the swap survives.
    assert review.store_pairs(round_id, specs) == 0
    assert review.progress(round_id) == (1, 2)
    assert row(db, stored[0].id).chosen_draft_id == d[1]
    # The same drafts at the other level are a different pair.
    assert review.store_pairs(round_id, [spec(d[0], d[1], 0.5, "rationale")]) == 1
    assert events(db) and all(e["action"] == "swap" for e in events(db))  # no create events


# ---- decisions and the audit trail ----------------------------------------------------


def test_approve_reject_and_reopen_change_status_and_log(db: Path, pairs: Any) -> None:
    _, (p, *_rest) = pairs
    approved = review.decide(p.id, "approve", "alice", 1, note="looks right")
    assert (approved.status, approved.source, approved.version) == ("approved", "auto", 2)
    assert (approved.annotator, approved.note) == ("alice", "looks right")
    rejected = review.decide(p.id, "reject", "bob", 2)
    assert (rejected.status, rejected.version, rejected.annotator) == ("rejected", 3, "bob")
    reopened = review.decide(p.id, "reopen", "bob", 3)
    assert reopened.status == "proposed"
    trail = review.history(p.id)
    assert [(e.action, e.annotator) for e in trail] == [
        ("approve", "alice"),
        ("reject", "bob"),
        ("reopen", "bob"),
    ]
    first = trail[0]
    assert first.before["status"] == "proposed" and first.before["version"] == 1
    assert first.after["status"] == "approved" and first.after["version"] == 2
    assert first.note == "looks right" and first.created_at is not None
    assert trail[1].before["status"] == "approved"


def test_swap_exchanges_texts_drafts_and_scores(db: Path, pairs: Any) -> None:
    _, (p, *_rest) = pairs
    swapped = review.decide(p.id, "swap", "alice", 1)
    assert (swapped.chosen, swapped.rejected) == (p.rejected, p.chosen)
    assert (swapped.chosen_draft_id, swapped.rejected_draft_id) == (
        p.rejected_draft_id,
        p.chosen_draft_id,
    )
    assert (swapped.chosen_score, swapped.rejected_score) == (p.rejected_score, p.chosen_score)
    assert swapped.margin == pytest.approx(-p.margin)
    assert (swapped.status, swapped.source) == ("overridden", "human")
    (event,) = review.history(p.id)
    assert event.before["chosen"] == p.chosen and event.after["chosen"] == p.rejected
    assert event.after["chosen_draft_id"] == p.rejected_draft_id


def test_edit_replaces_text_and_refuses_pointless_edits(db: Path, pairs: Any) -> None:
    _, (p, *_rest) = pairs
    edited = review.decide(p.id, "edit", "alice", 1, chosen="a better question")
    assert (edited.chosen, edited.rejected) == ("a better question", p.rejected)
    assert (edited.status, edited.source, edited.version) == ("edited", "human", 2)
    assert edited.chosen_draft_id == p.chosen_draft_id  # provenance kept
    (event,) = review.history(p.id)
    assert (event.before["chosen"], event.after["chosen"]) == (p.chosen, "a better question")
    for texts in ({"rejected": "a better question"}, {"chosen": "  "}, {}):
        with pytest.raises(ConfigError):
            review.decide(p.id, "edit", "alice", 2, **texts)
    with pytest.raises(ConfigError, match="only taken by 'edit'"):
        review.decide(p.id, "approve", "alice", 2, chosen="x")
    assert row(db, p.id).version == 2 and len(events(db)) == 1


def test_annotator_action_and_pair_are_checked(db: Path, pairs: Any) -> None:
    _, (p, *_rest) = pairs
    for who in ("", "   ", None):
        with pytest.raises(PermissionDenied):
            review.decide(p.id, "approve", who, 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        review.decide(p.id, "delete", "alice", 1)
    with pytest.raises(NotFoundError):
        review.decide(9999, "approve", "alice", 1)
    assert events(db) == [] and row(db, p.id).version == 1


def test_undo_restores_the_state_before_each_decision_in_turn(db: Path, pairs: Any) -> None:
    _, (p, *_rest) = pairs
    review.decide(p.id, "swap", "alice", 1)
    review.decide(p.id, "edit", "alice", 2, rejected="worse text")
    first = review.undo(p.id, "bob", 3)  # undoes the edit: back to the swap
    assert (first.status, first.rejected, first.version) == ("overridden", p.chosen, 4)
    assert first.chosen_draft_id == p.rejected_draft_id
    second = review.undo(p.id, "bob", 4)  # undoes the swap: back to the proposal
    assert (second.status, second.source) == ("proposed", "auto")
    assert (second.chosen, second.rejected, second.margin) == (p.chosen, p.rejected, p.margin)
    assert second.chosen_draft_id == p.chosen_draft_id and second.version == 5
    with pytest.raises(NotFoundError, match="no decision left"):
        review.undo(p.id, "bob", 5)
    trail = review.history(p.id)
    assert [e.action for e in trail] == ["swap", "edit", "undo", "undo"]
    assert trail[2].note == f"undo of edit by alice (event {trail[1].id})"
    assert trail[3].after["status"] == "proposed" and trail[3].before["status"] == "overridden"
    with pytest.raises(ConflictError):
        review.undo(p.id, "bob", 3)  # stale undo


def test_a_stale_decision_is_refused_and_changes_nothing(db: Path, pairs: Any) -> None:
    _, (p, *_rest) = pairs
    review.decide(p.id, "approve", "alice", 1)
    before_row, before_events = row(db, p.id), events(db)
    with pytest.raises(ConflictError) as info:
        review.decide(p.id, "reject", "bob", 1)  # bob opened version 1
    message = str(info.value)
    assert f"Pair {p.id} was changed by alice at " in message
    assert "reload to see the new version, then decide again" in message
    assert row(db, p.id).model_dump() == before_row.model_dump()
    assert events(db) == before_events


def test_two_annotators_deciding_at_once_exactly_one_wins(db: Path, pairs: Any) -> None:
    _, pair_rows = pairs
    p = pair_rows[0]
    n = 6
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def annotate(i: int) -> None:
        barrier.wait()
        try:
            review.decide(p.id, "approve" if i % 2 else "reject", f"annotator{i}", 1)
            result = "won"
        except ConflictError:
            result = "conflict"
        except Exception as error:  # "database is locked" would land here
            result = f"error: {error}"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=annotate, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["conflict"] * (n - 1) + ["won"]
    final = row(db, p.id)
    assert final.version == 2
    (event,) = review.history(p.id)
    assert event.annotator == final.annotator and event.after["status"] == final.status


# ---- bulk, queue, progress ------------------------------------------------------------


def test_bulk_by_margin_filter_logs_one_event_per_pair(db: Path, pairs: Any) -> None:
    round_id, rows = pairs  # margins 0.8, 0.1, 0.4 (question) and 0.2 (rationale)
    n = review.bulk(round_id, "approve", "carol", max_margin=0.4, level="question")
    assert n == 2
    statuses = {p.margin: p.status for p in review.queue(round_id)}
    assert statuses == {0.1: "approved", 0.4: "approved", 0.8: "proposed", 0.2: "proposed"}
    assert review.bulk(round_id, "reject", "carol", min_margin=0.15) == 2
    statuses = {p.margin: p.status for p in review.queue(round_id)}
    assert statuses == {0.1: "approved", 0.4: "approved", 0.8: "rejected", 0.2: "rejected"}
    actions = [(e["action"], e["annotator"]) for e in events(db)]
    assert actions == [("bulk-approve", "carol")] * 2 + [("bulk-reject", "carol")] * 2
    assert review.progress(round_id) == (4, 4)
    with pytest.raises(ConfigError):
        review.bulk(round_id, "swap", "carol")
    with pytest.raises(PermissionDenied):
        review.bulk(round_id, "approve", "")
    # A decision made on the version seen before the bulk is now stale.
    with pytest.raises(ConflictError, match="carol"):
        review.decide(rows[1].id, "reject", "alice", 1)


def test_queue_shows_uncertain_pairs_first_and_filters(db: Path, pairs: Any) -> None:
    round_id, rows = pairs
    assert [p.margin for p in review.queue(round_id)] == [0.1, 0.2, 0.4, 0.8]
    review.decide(rows[0].id, "swap", "alice", 1)  # margin becomes -0.8
    assert [p.margin for p in review.queue(round_id)] == [0.1, 0.2, 0.4, -0.8]
    assert [p.margin for p in review.queue(round_id, level="rationale")] == [0.2]
    assert [p.id for p in review.queue(round_id, status="overridden")] == [rows[0].id]
    assert len(review.queue(round_id, limit=2)) == 2
    assert review.progress(round_id) == (1, 4)
    with pytest.raises(ConfigError):
        review.queue(round_id, order="random")


# ---- what DPO trains on ---------------------------------------------------------------


def test_training_pairs_with_and_without_unreviewed(db: Path, pairs: Any) -> None:
    round_id, rows = pairs
    swapped, rejected, edited, untouched = rows
    review.decide(swapped.id, "swap", "alice", 1)
    review.decide(rejected.id, "reject", "alice", 1)
    review.decide(edited.id, "edit", "alice", 1, chosen="human text")
    reviewed = review.training_pairs(round_id, use_unreviewed=False)
    assert [p.id for p in reviewed] == [swapped.id, edited.id]
    by_id = {p.id: p for p in reviewed}
    assert by_id[swapped.id].chosen == swapped.rejected  # the human's order wins
    assert by_id[edited.id].chosen == "human text"  # the human's text wins
    everything = review.training_pairs(round_id, use_unreviewed=True)
    assert [p.id for p in everything] == [swapped.id, edited.id, untouched.id]
    review.decide(untouched.id, "approve", "alice", 1)
    assert len(review.training_pairs(round_id, use_unreviewed=False)) == 3


def test_training_pairs_follow_the_curriculum_rank(db: Path) -> None:
    round_id, d = make_round(db)
    specs = [
        PairSpec("question", "ranked", "g", "p", d[0], d[1], "a", "b", 0.9, 0.6, 0.3, rank=2),
        PairSpec("question", "ranked", "g", "p", d[0], d[2], "a", "c", 0.9, 0.1, 0.8, rank=1),
    ]
    review.store_pairs(round_id, specs)
    ranks = [p.rank for p in review.training_pairs(round_id, use_unreviewed=True)]
    assert ranks == [1, 2]


# ---- the audit log is append-only -----------------------------------------------------


def test_the_audit_log_only_grows(db: Path, pairs: Any) -> None:
    round_id, rows = pairs
    p = rows[0]
    steps = [
        lambda: review.decide(p.id, "approve", "alice", 1),
        lambda: review.decide(p.id, "swap", "bob", 2),
        lambda: review.undo(p.id, "bob", 3),
        lambda: review.bulk(round_id, "reject", "carol"),
        lambda: review.decide(p.id, "edit", "alice", 4, chosen="new"),
        lambda: review.decide(p.id, "reject", "bob", 1),  # stale: refused
    ]
    statements: list[str] = []

    def spy(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.append(sql)

    engine = Store(db).engine()
    event.listen(engine, "before_cursor_execute", spy)
    seen: list[dict[str, Any]] = []
    for step in steps:
        with contextlib.suppress(ConflictError):
            step()
        now = events(db)
        assert now[: len(seen)] == seen  # earlier rows untouched
        assert len(now) >= len(seen)
        seen = now
    event.remove(engine, "before_cursor_execute", spy)
    assert len(seen) == 2 + 1 + 3 + 1  # approve, swap, undo, three bulk rejects, edit
    assert any(sql.startswith("INSERT INTO annotationevent") for sql in statements)
    touched = [s for s in statements if s.startswith(("UPDATE annotationevent", "DELETE"))]
    assert touched == []


# ---- agreement ------------------------------------------------------------------------


def test_cohen_kappa_matches_a_hand_computed_table() -> None:
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5·0.6 + 0.5·0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert review.cohen_kappa(a, b) == pytest.approx(0.4)
    assert review.cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    assert review.cohen_kappa(["x", "y"], ["y", "x"]) == pytest.approx(-1.0)
    assert review.cohen_kappa([], []) is None
    assert review.cohen_kappa(["x", "x"], ["x", "x"]) is None  # chance agreement is 1


def test_agreement_of_two_annotators_uses_their_last_verdicts(db: Path, pairs: Any) -> None:
    round_id, rows = pairs
    version = {p.id: 1 for p in rows}

    def act(p: Pair, action: str, who: str) -> None:
        version[p.id] = review.decide(p.id, action, who, version[p.id]).version

    act(rows[0], "approve", "alice")
    act(rows[0], "approve", "bob")
    act(rows[1], "reject", "alice")
    act(rows[1], "approve", "bob")
    act(rows[1], "reject", "bob")  # bob changes his mind: his last verdict counts
    act(rows[2], "approve", "alice")
    act(rows[2], "reject", "bob")
    act(rows[3], "approve", "alice")  # only alice: not shared
    result = review.agreement(round_id, "alice", "bob")
    # alice: approve, reject, approve; bob: approve, reject, reject
    # p_o = 2/3; p_e = (2/3)(1/3) + (1/3)(2/3) = 4/9; kappa = (2/3 - 4/9) / (5/9) = 0.4
    assert (result.n, result.observed) == (3, pytest.approx(2 / 3))
    assert result.kappa == pytest.approx(0.4)
