"""A study after it is made: edit what is safe, archive and bring back, delete with its rows and
run folders once confirmed by name; another study is never touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import update
from seeding import Seeded, running_run, seed_study
from sqlmodel import func, select

from teachlab import review, studies
from teachlab.db import (
    AnnotationEvent,
    Draft,
    Metric,
    Pair,
    ProbeResult,
    Round,
    Run,
    Study,
    read_session,
)
from teachlab.errors import ConfigError
from teachlab.settings import get_settings


@pytest.fixture
def two(db_path: Path) -> tuple[Seeded, Seeded]:
    return seed_study("kept"), seed_study("doomed", seed=1)


def counts() -> dict[str, int]:
    with read_session() as s:
        return {
            m.__name__: int(s.exec(select(func.count()).select_from(m)).one())
            for m in (Study, Round, Draft, ProbeResult, Pair, AnnotationEvent, Run, Metric)
        }


def test_safe_settings_change_and_the_rest_are_refused(two: tuple[Seeded, Seeded]) -> None:
    kept, _ = two
    before = studies.get_study(kept.study).config
    edited = studies.edit_study(
        kept.study, name="kept-2", description="now <b>bold</b>", settings={"dpo_lr": 1e-4}
    )
    assert (edited.name, edited.description) == ("kept-2", "now <b>bold</b>")
    assert edited.config == {**before, "dpo_lr": 1e-4}
    with pytest.raises(ConfigError, match="n_probe cannot change after a study is made"):
        studies.edit_study(kept.study, settings={"n_probe": 4, "dpo_lr": 1.0})
    with pytest.raises(ConfigError, match=r"dpo_lr=5\.0 is out of range"):
        studies.edit_study(kept.study, settings={"dpo_lr": 5.0})
    with pytest.raises(ConfigError, match="'doomed' exists already"):
        studies.edit_study(kept.study, name="doomed")
    assert studies.get_study(kept.study).config == {**before, "dpo_lr": 1e-4}


def test_a_study_with_a_run_going_is_not_edited_or_deleted(two: tuple[Seeded, Seeded]) -> None:
    _, doomed = two
    run_id = running_run(doomed.study, doomed.current, "draft", total=3)
    before = counts()
    with pytest.raises(ConfigError, match=f"Run #{run_id} \\(draft\\) of this study is running"):
        studies.edit_study(doomed.study, settings={"eval_shots": 1})
    with pytest.raises(ConfigError, match="cancel it before deleting"):
        studies.delete_study(doomed.study, "doomed")
    assert counts() == before
    update(Run, run_id, status="cancelled")
    studies.delete_study(doomed.study, "doomed")


def test_archiving_hides_nothing_it_stored_and_comes_back(two: tuple[Seeded, Seeded]) -> None:
    kept, _ = two
    before = counts()
    assert studies.archive_study(kept.study).archived is True
    assert [s.archived for s in studies.list_studies()] == [True, False]
    assert counts() == before
    assert studies.archive_study(kept.study, False).archived is False


def test_delete_needs_the_name_and_removes_the_study_and_its_folders_only(
    two: tuple[Seeded, Seeded],
) -> None:
    kept, doomed = two
    first = review.queue(doomed.current, status="proposed")[0]
    review.decide(first.id, "approve", "ann", first.version)  # type: ignore[arg-type]
    runs_dir = get_settings().runs_dir
    folders = [runs_dir / f"run-{i:05d}" for i in doomed.runs.values()]
    for folder in folders:
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "weights.bin").write_bytes(b"w")
    kept_folder = runs_dir / f"run-{next(iter(kept.runs.values())):05d}"
    kept_folder.mkdir(parents=True)
    before = counts()

    with pytest.raises(ConfigError, match="type its name 'doomed' to confirm"):
        studies.delete_study(doomed.study, "kept")
    assert counts() == before

    plan = studies.footprint(doomed.study)
    assert plan.rounds == len(doomed.rounds) and plan.decisions >= 1
    assert sorted(plan.run_folders) == sorted(str(f) for f in folders)
    gone = studies.delete_study(doomed.study, "doomed")
    assert gone == plan
    after = counts()
    assert after["Study"] == before["Study"] - 1
    assert after["Round"] == before["Round"] - plan.rounds
    assert after["Draft"] == before["Draft"] - plan.drafts
    assert after["Pair"] == before["Pair"] - plan.pairs
    assert after["AnnotationEvent"] == before["AnnotationEvent"] - plan.decisions
    assert after["Run"] == before["Run"] - plan.runs
    assert not any(f.exists() for f in folders) and kept_folder.exists()
    # The other study is whole.
    assert studies.footprint(kept.study).rounds == len(kept.rounds)
    assert [s.name for s in studies.list_studies()] == ["kept"]
