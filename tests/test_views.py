"""The pages' read queries on a real SQLite file with hand-inserted rows: filters, per-probe
detail beside gold answers, baseline, ETA, log tail, progress rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from builders import NOW, two_round_study

from teachlab import views
from teachlab.db import Draft, Run, write_session
from teachlab.errors import NotFoundError
from teachlab.settings import get_settings


@pytest.fixture
def data(db_path: Path, tmp_path: Path) -> dict[str, Any]:
    return two_round_study(tmp_path)


def test_drafts_frame_filters_by_status_kind_strategy_and_flag(data: dict[str, Any]) -> None:
    r0 = data["r0"]
    everything = views.drafts_frame(r0)
    assert list(everything["id"]) == sorted(
        [data[k] for k in ("q1", "bad", "dup", "ra", "rb")], reverse=True
    )
    assert list(views.drafts_frame(r0, views.DraftFilter(status="rejected"))["id"]) == [data["bad"]]
    assert set(views.drafts_frame(r0, views.DraftFilter(kind="rationale"))["id"]) == {
        data["ra"],
        data["rb"],
    }
    assert list(views.drafts_frame(r0, views.DraftFilter(strategy="plain"))["id"]) == [data["rb"]]
    assert list(views.drafts_frame(r0, views.DraftFilter(flag="long"))["id"]) == [data["bad"]]
    assert views.drafts_frame(r0, views.DraftFilter(status="ok", flag="long")).empty
    assert views.draft_filter_options(r0) == {"strategy": ["expert", "plain"], "flag": ["long"]}


def test_parse_rate_counts_rejected_outputs_per_round_and_kind(data: dict[str, Any]) -> None:
    rates = {(r.round_index, r.kind): r for r in views.parse_rates(data["study"])}
    q0 = rates[(0, "question")]
    assert (q0.total, q0.ok, q0.rejected, q0.duplicate) == (3, 1, 1, 1)
    assert q0.rate == pytest.approx(2 / 3)
    assert rates[(0, "rationale")].rate == 1.0
    assert rates[(1, "question")].total == 1


def test_draft_detail_puts_student_answers_beside_gold_and_baseline(data: dict[str, Any]) -> None:
    detail = views.draft_detail(data["ra"])
    assert detail.parent is not None and detail.parent.id == data["q1"]
    assert detail.mode == "loglik" and detail.baseline == 0.5
    assert [p.probe_index for p in detail.probes] == [0, 1, 2, 3]
    first, last = detail.probes[0], detail.probes[3]
    assert (first.input, first.gold, first.predicted, first.correct) == (
        "Is 0 even?",
        "yes",
        "yes",
        True,
    )
    assert (last.gold, last.correct, last.baseline_correct) == ("no", False, False)
    assert detail.probes[1].baseline_correct is False and detail.probes[1].correct is True
    frame = views.probe_frame(detail.probes)
    assert list(frame["gold"]) == ["yes", "no", "yes", "no"]
    question = views.draft_detail(data["q1"])
    assert [c.id for c in question.children] == [data["ra"], data["rb"]]
    with pytest.raises(NotFoundError):
        views.draft_detail(99999)


def test_missing_task_data_still_shows_predictions_with_a_note(
    data: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "task.jsonl").unlink()
    views.common._examples.cache_clear()
    detail = views.draft_detail(data["rb"])
    assert [p.predicted for p in detail.probes] == ["yes", "maybe", "maybe", "maybe"]
    assert all(p.gold == "" for p in detail.probes)
    assert detail.notes and "not available" in detail.notes[0]


def test_baseline_scores_and_values(data: dict[str, Any]) -> None:
    base = views.baseline(data["r0"])
    assert base is not None and (base.accuracy, base.n, base.mode) == (0.5, 4, "loglik")
    assert base.margin == pytest.approx(0.0)
    assert views.baseline(data["r1"]) is None
    values = views.score_values(data["r0"])
    assert sorted(values["rationale"]) == [0.25, 0.75] and values["question"] == [0.5]
    frame = views.scores_frame(data["r0"])
    assert list(frame["id"]) == [data["ra"], data["q1"], data["rb"]]  # best first
    assert frame["question"].iloc[0] == "What is 2+2?"


def test_pair_detail_shows_each_sides_student_answers(data: dict[str, Any]) -> None:
    detail = views.pair_detail(data["pair_r"])
    assert detail.chosen is not None and detail.rejected is not None
    assert detail.chosen.marks == "✓✓✓✗" and detail.rejected.marks == "✓✗✗✗"
    assert detail.chosen.answer == "4" and detail.rejected.answer == "5"
    assert detail.baseline == 0.5
    question_side = views.pair_detail(data["pair_q"])
    assert question_side.chosen is None  # no drafts behind a hand-made pair


def test_eta_from_elapsed_time_and_progress() -> None:
    assert views.eta_seconds(3, 10, 60.0) == pytest.approx(140.0)
    assert views.eta_seconds(0, 10, 60.0) is None  # no pace yet
    assert views.eta_seconds(10, 10, 60.0) is None
    assert views.eta_seconds(3, 0, 60.0) is None


def test_run_status_and_latest_active_run(data: dict[str, Any]) -> None:
    status = views.run_status(data["align"], now=NOW)
    assert status.fraction == pytest.approx(0.3)
    assert status.elapsed_s == pytest.approx(60.0)
    assert status.eta_s == pytest.approx(140.0)
    done = views.run_status(data["draft_run"], now=NOW)
    assert done.elapsed_s == pytest.approx(180.0) and done.eta_s is None
    latest = views.latest_run(data["study"])
    assert latest is not None and latest.id == data["align"]  # the active one, not the newest id


def test_metrics_rows_keep_only_curve_metrics_in_step_order(data: dict[str, Any]) -> None:
    rows = views.metrics_rows(data["align"])
    assert {r["name"] for r in rows} == {"loss", "rewards/margins"}
    assert [r["step"] for r in rows if r["name"] == "loss"] == [1, 2, 3]
    assert all(r["kind"] == "align" for r in rows)
    assert views.metrics_count(data["align"]) == 9


def test_log_tail_reads_the_last_lines_only_inside_the_runs_folder(
    db_path: Path, tmp_path: Path
) -> None:
    runs_dir = get_settings().runs_dir
    log = runs_dir / "run-00001" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(100)), encoding="utf-8")
    run = Run(id=1, study_id=1, kind="draft", provenance={"log": str(log)})
    tail = views.log_tail(run, lines=40)
    assert tail.splitlines()[0] == "line 60" and tail.splitlines()[-1] == "line 99"
    outside = tmp_path / "secret.txt"
    outside.write_text("secret", encoding="utf-8")
    assert (
        views.log_tail(Run(id=2, study_id=1, kind="draft", provenance={"log": str(outside)})) == ""
    )
    assert views.log_tail(Run(id=3, study_id=1, kind="draft")) == ""


def test_progress_rows_across_rounds(data: dict[str, Any]) -> None:
    sid = data["study"]
    evals = views.evaluation_rows(sid)
    assert {(e["model"], e["accuracy"]) for e in evals} == {
        ("student-before", 0.4),
        ("student-after", 0.5),
    }
    assert [r["value"] for r in views.dpo_margin_rows(sid)] == pytest.approx([0.2, 0.4, 0.6])
    scores = views.score_rows(sid)
    assert {(r["round"], r["kind"]) for r in scores} == {
        (0, "question"),
        (0, "rationale"),
        (1, "question"),
    }
    counts = {(r["source"], r["status"]): r["count"] for r in views.pair_count_rows(sid)}
    assert counts == {("auto", "proposed"): 1, ("human", "approved"): 1}
    times = views.stage_time_rows(sid)
    assert [(t["kind"], t["seconds"]) for t in times] == [
        ("draft", 180.0)
    ]  # running align excluded
    assert views.signal_checks(sid) == [
        {"round": 0, "level": "warn", "reasons": ["student near chance"]}
    ]


def test_round_options_newest_first_and_cli_command(data: dict[str, Any]) -> None:
    assert views.round_options(data["study"]) == [
        ("Round 1 (open)", data["r1"]),
        ("Round 0 (done)", data["r0"]),
    ]
    assert views.cli_command("s1", "score") == "teachlab run stage score --study s1"
    assert views.cli_command("my study", "round") == "teachlab round run --study 'my study'"
    frame = views.runs_frame(data["study"])
    assert list(frame["id"]) == [data["align"], data["draft_run"]]
    assert list(frame["progress"]) == ["3/10", "5/5"]


def test_draft_view_says_which_parts_teachlab_wrote(db_path: Path) -> None:
    from seeding import seed_study

    from pages.drafts import draft_html

    seeded = seed_study(finished_rounds=0)
    draft_id = seeded.drafts[seeded.current][0]
    with write_session() as s:
        d = s.get(Draft, draft_id)
        d.sampling = {**(d.sampling or {}), "scaffold": True}  # type: ignore[union-attr]
        d.flags = [*(d.flags or []), "answer-chosen"]  # type: ignore[union-attr]
        s.add(d)
    html = draft_html(views.draft_detail(draft_id))
    assert "[scaffolded: TeachLab wrote the tags and the &#x27;Options:&#x27; cue" in html
    assert "[answer chosen among the options by the teacher&#x27;s likelihood]" in html
