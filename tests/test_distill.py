"""Why a round has nothing to distil, said so that the researcher knows what to change."""

from __future__ import annotations

from pathlib import Path

from builders import draft, round_, study

from teachlab.stages.distill import _nothing_to_distil, tailored_examples


def test_no_regenerate_yet_says_to_run_it(db_path: Path) -> None:
    rnd = round_(study("s"))
    assert tailored_examples(rnd.id, "d") == []  # type: ignore[arg-type]
    assert _nothing_to_distil(rnd.id) == (  # type: ignore[arg-type]
        "No tailored examples to distil on: run the regenerate stage first."
    )


def test_unparseable_tailored_questions_are_named_with_what_to_change(db_path: Path) -> None:
    rnd = round_(study("s"))
    for reason in ("Question_4: no <input>…</input>", "Question_5: unclosed final block"):
        draft(rnd, phase="tailored", status="rejected", reason=reason)
    message = _nothing_to_distil(rnd.id)  # type: ignore[arg-type]
    assert "wrote 2 tailored questions and none was usable" in message
    assert "no <input>…</input>" in message and "unclosed final block" in message
    assert "scaffold = true" in message and "run the regenerate stage first" not in message
