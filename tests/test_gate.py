"""The signal gate: a stop verdict holds compute stages back until a researcher overrides it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from seeding import seed_study
from sqlmodel import select

from teachlab.db import Run, SignalCheck, read_session, write_session
from teachlab.errors import ConflictError
from teachlab.settings import get_settings
from teachlab.stages import STAGES
from teachlab.stages.gate import ensure_may_launch, gate_for

# The stages whose work is wasted when draft scores carry no signal ("check" and "evaluate"
# measure rather than spend, so they always run).
SPENDS = [s.name for s in STAGES.values() if s.spends]

RESULT = {
    "metric": "margin",
    "chance": {
        "chance_rate": 0.5,
        "zero_shot": {"accuracy": 0.5, "ci_low": 0.3, "ci_high": 0.7},
        "few_shot": {"accuracy": 0.55, "ci_low": 0.32, "ci_high": 0.76},
    },
    "reliability": {"reliability": 0.12, "reliability_ci": [-0.3, 0.5]},
    "label_share": 0.42,
}


def _check(round_id: int, level: str) -> int:
    with write_session() as s:
        row = SignalCheck(
            round_id=round_id, level=level, reasons=[f"reason for {level}"], result=RESULT
        )
        s.add(row)
        s.flush()
        return row.id  # type: ignore[return-value]


def test_a_majority_baseline_is_named_beside_the_figures(db_path: Path) -> None:
    seeded = seed_study(finished_rounds=0)
    chance = {**RESULT["chance"], "chance_rate": 0.75, "baseline": "majority"}  # type: ignore[dict-item]
    with write_session() as s:
        s.add(
            SignalCheck(
                round_id=seeded.current,
                level="stop",
                reasons=[],
                result={**RESULT, "chance": {**chance, "majority_label": "false"}},
            )
        )
    text = gate_for(seeded.current).markdown()
    assert "few-shot 0.55 vs chance 0.75 by always answering 'false' (95% CI 0.32–0.76)" in text


def test_without_a_check_nothing_is_held_and_the_page_says_to_run_one(db_path: Path) -> None:
    seeded = seed_study(finished_rounds=0)
    with write_session() as s:  # the seeded "warn" check: remove it to see a round without one
        for row in s.exec(select(SignalCheck)):
            s.delete(row)
    gate = gate_for(seeded.current)
    assert gate.level is None and not gate.blocks
    assert "not run yet" in gate.markdown()
    for kind in SPENDS:
        assert ensure_may_launch(seeded.current, STAGES[kind]).level is None


def test_stop_holds_spending_stages_and_the_newest_check_decides(db_path: Path) -> None:
    seeded = seed_study(finished_rounds=0)
    first = _check(seeded.current, "stop")
    gate = gate_for(seeded.current)
    assert gate.blocks and gate.check_id == first
    text = gate.markdown()
    assert "⛔ **stop**" in text and "held back" in text and "- reason for stop" in text
    assert "few-shot 0.55 vs chance 0.50 (95% CI 0.32–0.76)" in text
    assert "reliability of margin scores 0.12 (CI -0.30–0.50)" in text
    assert "answer label explains 42%" in text
    for kind in SPENDS:
        with pytest.raises(ConflictError, match=r"says stop \(reason for stop\).*--override"):
            ensure_may_launch(seeded.current, STAGES[kind])
    for kind in ("check", "evaluate"):  # measuring is never held back
        assert ensure_may_launch(seeded.current, STAGES[kind]).blocks
    _check(seeded.current, "warn")  # a new check that passes lifts the hold
    assert not gate_for(seeded.current).blocks
    ensure_may_launch(seeded.current, STAGES["round"])


def test_an_override_is_recorded_with_the_researchers_name(db_path: Path) -> None:
    seeded = seed_study(finished_rounds=0)
    check_id = _check(seeded.current, "stop")
    gate = ensure_may_launch(seeded.current, STAGES["align"], override_by="maria")
    assert not gate.blocks and gate.overridden_by == "maria"
    assert "overridden by maria" in gate.markdown()
    with read_session() as s:
        row = s.get(SignalCheck, check_id)
        assert row is not None and row.level == "stop" and row.overridden_by == "maria"
        assert row.reasons == ["reason for stop"]  # the verdict itself is kept for the record
    ensure_may_launch(seeded.current, STAGES["distill"])  # one override covers the round's check


def test_the_cli_refuses_a_held_stage_with_a_way_out(db_path: Path) -> None:
    seeded = seed_study(finished_rounds=0)
    _check(seeded.current, "stop")
    env = {**os.environ, "TEACHLAB_STORAGE": str(get_settings().storage)}
    done = subprocess.run(
        [sys.executable, "-m", "teachlab", "run", "stage", "score", "--study", seeded.name],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "says stop (reason for stop)" in done.stderr and "--override" in done.stderr
    with read_session() as s:
        assert not s.exec(select(Run).where(Run.kind == "score", Run.status == "queued")).all()


def test_the_cli_shows_the_checks_figures_before_a_stage_runs(db_path: Path) -> None:
    seeded = seed_study(finished_rounds=0)
    _check(seeded.current, "warn")
    env = {**os.environ, "TEACHLAB_STORAGE": str(get_settings().storage)}
    done = subprocess.run(
        [sys.executable, "-m", "teachlab", "run", "stage", "pairs", "--study", seeded.name],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    first = next(line for line in done.stderr.splitlines() if line.startswith("Signal check"))
    assert first.startswith("Signal check of round 0: warn — student few-shot 0.55 vs chance 0.50")
    assert "  - reason for warn" in done.stderr
