"""IRT probe selection: the pool never touches seed or test items; the choice is stored once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from teachlab.errors import DataError
from teachlab.jobs import LocalContext
from teachlab.rounds import current_round, load_round
from teachlab.score.scorer import ProbeOutcome
from teachlab.stages.probes import candidate_pool, ensure_probes, response_rows
from teachlab.studies import create_study, get_study
from teachlab.tasks import Example, Task


def make_task(n: int = 60) -> Task:
    examples = tuple(
        Example(input=f"question {i}?", target="yes" if i % 2 else "no", choices=("yes", "no"))
        for i in range(n)
    )
    return Task(name="t", description="Answer.", examples=examples, source="test")


def test_pool_excludes_seed_and_test_and_is_deterministic() -> None:
    task = make_task()
    splits = {"seed": [0, 1, 2], "probe": [3, 4], "test": list(range(10, 30))}
    pool = candidate_pool(task, splits, n_probe=8, seed=4)
    assert len(pool) == 24 and not set(pool) & {0, 1, 2, *range(10, 30)}
    assert pool == candidate_pool(task, splits, n_probe=8, seed=4)
    with pytest.raises(DataError, match="lower n_probe"):
        candidate_pool(task, splits, n_probe=50, seed=4)


def test_response_rows_have_one_subject_per_model_and_shot_count() -> None:
    task = make_task()
    seen: list[tuple[str, int]] = []

    class FakeScorer:  # pure logic: which demonstrations each subject gets
        def __init__(self, ref: str) -> None:
            self.ref = ref

        def score(self, demos: list) -> list[ProbeOutcome]:
            seen.append((self.ref, len(demos)))
            return [ProbeOutcome(i, "yes", i < len(demos) + 1, None, None) for i in range(5)]

    rows = response_rows(FakeScorer, task, [0, 1, 2], ["a", "b"], range(4))
    assert rows.shape == (8, 5)
    assert seen == [(r, k) for r in ("a", "b") for k in range(4)]
    assert np.array_equal(rows[3], [1, 1, 1, 1, 0])


def test_random_selection_leaves_the_study_alone(storage: Path, tmp_path: Path) -> None:
    import json

    path = tmp_path / "t.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"input": e.input, "target": e.target, "choices": list(e.choices)})
            for e in make_task().examples
        )
    )
    study = create_study("s", f"file:{path}", config={"n_probe": 8, "n_test": 20})
    same = ensure_probes(LocalContext(), load_round(current_round(study.id).id)).study  # type: ignore[arg-type]
    assert same.splits == get_study(study.id).splits  # type: ignore[arg-type]


@pytest.mark.slow
def test_irt_selection_on_the_bundled_models_is_stored_once(storage: Path, tmp_path: Path) -> None:
    from tests.conftest import bigbench_available

    if not bigbench_available("sports_understanding"):
        pytest.skip("run `teachlab data fetch` first")
    study = create_study(
        "irt",
        "bigbench:sports_understanding",
        config={"n_probe": 6, "n_test": 10, "probe_selection": "irt"},
    )
    loaded = load_round(current_round(study.id).id)  # type: ignore[arg-type]
    chosen = ensure_probes(LocalContext(), loaded).study
    info = chosen.splits["probe_selection"]
    assert info["method"] == "irt" and len(chosen.splits["probe"]) == 6
    assert set(chosen.splits["probe"]) <= set(info["pool"])
    assert not set(chosen.splits["probe"]) & (
        set(chosen.splits["seed"]) | set(chosen.splits["test"])
    )
    assert len(info["subjects"]) == 8  # student and teacher at 0..3 shots
    again = ensure_probes(LocalContext(), load_round(loaded.id)).study
    assert again.splits == chosen.splits  # not refitted
