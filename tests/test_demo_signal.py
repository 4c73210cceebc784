"""The demo study is where the bundled pair has a signal: its own check passes on real models.

The signal check runs exactly as `teachlab demo` runs it before any draft exists: the bundled
student on the demo study's probe set, zero- and few-shot against chance, then task examples as
demonstrations on two probe halves (docs/signal-check.md has the table over tasks).
"""

from __future__ import annotations

import pytest
from sqlmodel import select

from teachlab.config import StudyConfig
from teachlab.db import Round, SignalCheck, read_session
from teachlab.jobs import runs
from teachlab.jobs.context import LocalContext
from teachlab.stages import check
from teachlab.studies import DEMO_CONFIG, DEMO_TASK, create_demo_study
from tests.conftest import bigbench_available

DEMO_TASK_NAME = DEMO_TASK.split(":", 1)[1]


def test_demo_settings_are_valid_and_drafting_is_scaffolded() -> None:
    cfg = StudyConfig.from_dict(DEMO_CONFIG)
    assert cfg.scaffold and cfg.prefill and cfg.pair_metric == "margin"
    assert cfg.n_probe >= 24  # fewer probes made the reliability estimate too noisy to pass


@pytest.mark.slow
@pytest.mark.skipif(not bigbench_available(DEMO_TASK_NAME), reason="run `teachlab data fetch`")
def test_the_demo_study_passes_its_signal_check() -> None:
    study = create_demo_study()
    with read_session() as s:
        rnd = s.exec(select(Round).where(Round.study_id == study.id)).one()
    run = runs.create_run(study.id, "check", round_id=rnd.id)  # type: ignore[arg-type]
    out = check.stage_check(LocalContext(), run)  # type: ignore[arg-type]
    with read_session() as s:
        row = s.exec(select(SignalCheck)).one()
    result = row.result
    assert out["metric"] == "margin" and out["source"] == "task examples"
    assert row.level == "ok", row.reasons
    chance = result["chance"]
    few = chance["few_shot"]
    # Clearly above chance: the whole exact 95% interval clears the baseline.
    assert few["above_chance"] and few["ci_low"] > chance["chance_rate"]
    rel = result["reliability"]
    assert rel["reliability"] >= 0.3 and rel["reliability_ci"][0] > 0
    assert rel["n_drafts"] == check.SAMPLE_DEMOS and rel["n_splits"] == 100
