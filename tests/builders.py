"""Composable builders for test data: studies, rounds, drafts, probe results, pairs, runs,
metrics, evaluations and signal checks in the test's own database.

Each builder writes its rows in its own ``write_session()`` and returns the stored row (ids
set); a test states only what matters to it and the defaults fill in the rest::

    r0 = round_(study(config={"scorer": "loglik"}))
    q = draft(r0, "question", input="What is 2+2?", target="4")
    ra = draft(r0, "rationale", parent=q, answer="4", score=0.75)
    probe_results(r0, "TTTF", draft=ra)
    pair(r0, ra, rb, margin=0.5)

Builders take rows or plain ids wherever they need a row's id. ``two_round_study`` is the
scenario the pages' read queries and served pages are tested on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import SQLModel, func, select

from teachlab.db import read_session, write_session
from teachlab.db.tables import (
    Draft,
    Evaluation,
    Metric,
    Pair,
    ProbeResult,
    Round,
    Run,
    SignalCheck,
    Study,
    utcnow,
)

Row = TypeVar("Row", bound=SQLModel)


@contextmanager
def use_storage(folder: Path) -> Iterator[Path]:
    """Point the process's store (and every other storage path) at another folder for a while,
    for tests that compare two databases; the test's own storage comes back afterwards."""
    from teachlab.db import init_db
    from teachlab.settings import get_settings

    before = os.environ.get("TEACHLAB_STORAGE")
    os.environ["TEACHLAB_STORAGE"] = str(folder)
    get_settings.cache_clear()
    try:
        init_db()
        yield folder
    finally:
        if before is None:
            os.environ.pop("TEACHLAB_STORAGE", None)
        else:
            os.environ["TEACHLAB_STORAGE"] = before
        get_settings.cache_clear()


# ---------------------------------------------------------------- rows


def _id(row: Any) -> Any:
    """The id of a stored row, or the value itself when it is already an id (or None)."""
    return getattr(row, "id", row)


def _row(model: type[Row], row: Row | int) -> Row:
    """A stored row given as itself or by its id."""
    if isinstance(row, model):
        return row
    with read_session() as s:
        found = s.get(model, row)
    assert found is not None, f"no {model.__name__} #{row}"
    return found


def add(*rows: Row) -> list[Row]:
    """Store ``rows`` in one write session, in order; return them with their ids set."""
    with write_session() as s:
        for row in rows:
            s.add(row)
            s.flush()
    return list(rows)


def update(model: type[Row], row_id: int, **fields: Any) -> Row:
    """Set ``fields`` on the stored row ``model`` #``row_id`` and return it."""
    with write_session() as s:
        row = s.get(model, row_id)
        assert row is not None, f"no {model.__name__} #{row_id}"
        for name, value in fields.items():
            setattr(row, name, value)
        s.add(row)
    return row


def study(
    name: str = "s",
    *,
    task_ref: str = "bigbench:x",
    teacher: str = "t",
    student: str = "st",
    **fields: Any,
) -> Study:
    """A study row as it is stored (no splits or rounds made: see ``round_``)."""
    (row,) = add(Study(name=name, task_ref=task_ref, teacher=teacher, student=student, **fields))
    return row


def round_(of: Study | int, index: int = 0, **fields: Any) -> Round:
    """Round ``index`` of a study, with the study's teacher and student unless ``fields`` say."""
    owner = _row(Study, of)
    models = {"teacher": owner.teacher, "student": owner.student}
    (row,) = add(Round(study_id=owner.id, index=index, **(models | fields)))  # type: ignore[arg-type]
    return row


def draft(
    rnd: Round | int,
    kind: str = "question",
    *,
    key: str | None = None,
    parent: Draft | int | None = None,
    **fields: Any,
) -> Draft:
    """A question or (with ``parent``, its question) a rationale draft of a round; ``key`` (the
    idem_key) defaults to "<kind>-<n>", the next one of its kind in the round and phase."""
    round_id = _id(rnd)
    with write_session() as s:
        if key is None:
            phase = fields.get("phase", "draft")
            same = select(func.count()).select_from(Draft)
            same = same.where(Draft.round_id == round_id, Draft.kind == kind, Draft.phase == phase)
            key = f"{kind}-{s.exec(same).one() + 1}"
        row = Draft(round_id=round_id, kind=kind, idem_key=key, parent_id=_id(parent), **fields)
        s.add(row)
        s.flush()
    return row


def rationale(question: Draft, text: str, answer: str | None = None, **fields: Any) -> Draft:
    """A rationale draft for ``question`` (in its round and phase) answering ``answer``."""
    fields = {"phase": question.phase} | fields
    return draft(
        question.round_id, "rationale", parent=question, rationale=text, answer=answer, **fields
    )


def probe_results(
    rnd: Round | int,
    marks: str,
    *,
    draft: Draft | int | None = None,
    indices: Sequence[int] | None = None,
    mode: str = "loglik",
    predicted: Sequence[str] | None = None,
    gold_logprobs: Sequence[float | None] | None = None,
    margins: Sequence[float | None] | None = None,
) -> list[ProbeResult]:
    """The student's results on the probe items with ``draft`` as its demonstration (None: the
    zero-shot baseline), one per mark: "T" right, "F" wrong ("TTFT"). The items are ``indices``
    (0, 1, … by default); unless given per item, the student answers "yes" when right and
    "maybe" when wrong, with gold log-prob -0.1·(k+1) and margin +0.5 or -0.5."""
    n = len(marks)
    indices = list(range(n)) if indices is None else indices
    right = [m == "T" for m in marks]
    predicted = predicted or ["yes" if r else "maybe" for r in right]
    gold_logprobs = gold_logprobs or [-0.1 * (k + 1) for k in range(n)]
    margins = margins or [0.5 if r else -0.5 for r in right]
    rows = [
        ProbeResult(
            draft_id=_id(draft),
            round_id=_id(rnd),
            probe_index=i,
            mode=mode,
            predicted=p,
            correct=r,
            gold_logprob=g,
            margin=m,
        )
        for i, r, p, g, m in zip(indices, right, predicted, gold_logprobs, margins, strict=True)
    ]
    return add(*rows)


def _side(pick: Draft | str | None, side: str) -> dict[str, Any]:
    if isinstance(pick, Draft):
        text = pick.rationale if pick.rationale is not None else pick.raw_output
        return {side: text, f"{side}_draft_id": pick.id, f"{side}_score": pick.score}
    return {} if pick is None else {side: pick}


def pair(
    rnd: Round | int,
    win: Draft | str | None = None,
    lose: Draft | str | None = None,
    **fields: Any,
) -> Pair:
    """A pair preferring ``win`` over ``lose``: drafts (their ids, texts and scores) or plain
    texts. The level is the drafts' kind ("rationale" without drafts), the rule "arte";
    ``fields`` set any other column or override these (a person's edited text, say)."""
    drafts = [d for d in (win, lose) if isinstance(d, Draft)]
    base = {"level": drafts[0].kind if drafts else "rationale", "rule": "arte"}
    base |= _side(win, "chosen") | _side(lose, "rejected")
    (row,) = add(Pair(round_id=_id(rnd), **(base | fields)))
    return row


def run(of: Round | Study | int, kind: str = "draft", **fields: Any) -> Run:
    """A run of stage ``kind`` on a round (a row or its id), or on a study outside any round."""
    if isinstance(of, Study):
        owner = {"study_id": of.id}
    else:
        rnd = _row(Round, of)
        owner = {"study_id": rnd.study_id, "round_id": rnd.id}
    (row,) = add(Run(kind=kind, **(owner | fields)))
    return row


def metrics(
    of: Run | int, curves: Mapping[str, Sequence[float]], *, first_step: int = 1
) -> list[Metric]:
    """A run's logged metrics, step by step as a trainer logs them: ``curves[name][k]`` at step
    ``first_step + k``."""
    steps = max((len(values) for values in curves.values()), default=0)
    rows = [
        Metric(run_id=_id(of), step=first_step + k, name=name, value=values[k])
        for k in range(steps)
        for name, values in curves.items()
        if k < len(values)
    ]
    return add(*rows)


def evaluation(
    rnd: Round | int, model: str = "student-after", accuracy: float = 0.5, **fields: Any
) -> Evaluation:
    """A test-set evaluation of a round's student (``model`` "student-before" or
    "student-after"), on 40 items unless ``n`` says."""
    (row,) = add(
        Evaluation(round_id=_id(rnd), model=model, accuracy=accuracy, **({"n": 40} | fields))
    )
    return row


def signal_check(
    rnd: Round | int, level: str = "ok", reasons: Sequence[str] = (), **fields: Any
) -> SignalCheck:
    """A round's signal check verdict (ok, warn or stop) with its reasons."""
    (row,) = add(SignalCheck(round_id=_id(rnd), level=level, reasons=list(reasons), **fields))
    return row


# ---------------------------------------------------------------- task files


@dataclass(frozen=True)
class TaskFile:
    path: Path

    @property
    def ref(self) -> str:
        """The task reference a study stores for this file."""
        return f"file:{self.path}"

    @property
    def fingerprint(self) -> str:
        """The fingerprint a study's splits record for the task (the round loader checks it)."""
        from teachlab.tasks import load_task_file

        return load_task_file(self.path).fingerprint()


def task_file(
    folder: Path, rows: Iterable[Mapping[str, Any]], name: str = "task.jsonl"
) -> TaskFile:
    """A JSONL task file of ``rows`` ({"input", "target", "choices"}) in ``folder``."""
    path = folder / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return TaskFile(path)


def parity_rows(n: int, question: str = "Is {} even?") -> list[dict[str, Any]]:
    """A binary yes/no task: is the number even? (labels 'yes'/'no', chance 0.5)."""
    return [
        {"input": question.format(i), "target": "no" if i % 2 else "yes", "choices": ["yes", "no"]}
        for i in range(n)
    ]


# ---------------------------------------------------------------- the pages' scenario

PAYLOAD = "<script>alert(1)</script><img src=x onerror=alert(2)>"
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def two_round_study(folder: Path) -> dict[str, Any]:
    """Study "s1" on a 12-item parity task (folder/task.jsonl): round 0 (done) with drafts of
    every status (a rejected one holding ``PAYLOAD``), two scored rationales and the zero-shot
    baseline on probes 0–3, a proposed and an approved pair, a finished draft run and a running
    align run with metrics, evaluations and a "warn" signal check; round 1 (open) with one
    question. Returns the ids by name."""
    task = task_file(folder, parity_rows(12))
    s1 = study(
        "s1",
        task_ref=task.ref,
        config={"scorer": "loglik"},
        guidelines="Prefer *correct* targets.",
        splits={"probe": [0, 1, 2, 3], "task_fingerprint": task.fingerprint},
    )
    r0, r1 = round_(s1, 0, status="done"), round_(s1, 1)
    q1 = draft(
        r0,
        input="What is 2+2?",
        target="4",
        raw_output="<input>What is 2+2?</input>",
        score=0.5,
        template_version="q-v1",
        sampling={"temperature": 0.7},
        prompt="PROMPT-Q",
    )
    bad = draft(r0, status="rejected", reason="no <input> tag", raw_output=PAYLOAD, flags=["long"])
    dup = draft(
        r0, status="duplicate", input="What is 2+2?", target="4", reason="near-duplicate of #1"
    )
    ra = rationale(q1, "2+2 is 4.", "4", strategy="expert", score=0.75, margin_score=0.4)
    rb = rationale(q1, "It is 5.", "5", strategy="plain", score=0.25, margin_score=-0.2)
    draft(r1, input="Next?", target="x", score=0.9)
    probe_results(r0, "TTTF", draft=ra)
    probe_results(r0, "TFFF", draft=rb)
    probe_results(r0, "TFTF")  # the zero-shot baseline
    pair_r = pair(r0, ra, rb, prompt="P", margin=0.5)
    pair_q = pair(
        r0,
        "a",
        "b",
        level="question",
        prompt="P",
        margin=0.1,
        status="approved",
        source="human",
        annotator="ann",
    )
    draft_run = run(
        r0,
        "draft",
        status="succeeded",
        started_at=NOW - timedelta(minutes=10),
        finished_at=NOW - timedelta(minutes=7),
        progress_done=5,
        progress_total=5,
    )
    align = run(
        r0,
        "align",
        status="running",
        started_at=NOW - timedelta(seconds=60),
        progress_done=3,
        progress_total=10,
        message="step 3",
        worker="localhost:4242",
        heartbeat_at=utcnow(),  # its executor is alive: the run blocks another launch
    )
    curves = {"loss": [0.6, 0.5, 0.4], "rewards/margins": [0.2, 0.4, 0.6], "grad_norm": [1.0] * 3}
    metrics(align, curves)
    evaluation(r0, "student-before", 0.4, ci_low=0.25, ci_high=0.55)
    evaluation(r0, "student-after", 0.5, ci_low=0.35, ci_high=0.65)
    signal_check(r0, "warn", ["student near chance"])
    rows = {"study": s1, "r0": r0, "r1": r1, "q1": q1, "bad": bad, "dup": dup, "ra": ra, "rb": rb}
    rows |= {"pair_r": pair_r, "pair_q": pair_q, "draft_run": draft_run, "align": align}
    return {name: row.id for name, row in rows.items()}
