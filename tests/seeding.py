"""A realistic study for the browser tests and the latency benchmark: a real task, two rounds of
question and rationale drafts with probe results, pairs from the pair rules, runs and metrics.

Everything goes through the project's own entry points where one exists (``create_study``,
``build_pairs``, ``store_pairs``, ``review.decide``); only the model outputs are invented.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import select

from teachlab import review, rounds, studies
from teachlab.db import Draft, Round, Study, read_session
from teachlab.db.tables import utcnow
from teachlab.pairs import Candidate, build_pairs
from teachlab.prompts import PLAIN, QUESTION, STRATEGIES
from teachlab.tasks import Example, list_bigbench, resolve_task, save_uploaded_task
from tests.builders import (
    draft,
    evaluation,
    metrics,
    probe_results,
    rationale,
    round_,
    run,
    signal_check,
    task_file,
    update,
)

BIGBENCH_TASK = "date_understanding"
STUDENT = "bundled:smollm2-135m-instruct"
TEACHER = "bundled:gemma-3-270m"
# Used when the BIG-bench files are not fetched: a small date task written here and uploaded.
_MONTHS = ["January", "March", "April", "June", "July", "September", "October", "December"]


@dataclass
class Seeded:
    study: int
    name: str
    rounds: list[int]  # round ids, oldest first; the last one is the study's current round
    drafts: dict[int, list[int]] = field(default_factory=dict)  # round id -> draft ids
    rejected_draft: dict[int, int] = field(default_factory=dict)  # round id -> a parse failure
    pairs: dict[int, list[int]] = field(default_factory=dict)  # round id -> pair ids
    runs: dict[str, int] = field(default_factory=dict)  # "<kind>-r<index>" -> run id

    @property
    def current(self) -> int:
        return self.rounds[-1]


def _upload_task(folder: Path) -> str:
    rows = []
    for i, month in enumerate(_MONTHS * 8):
        day, year = 1 + (i * 7) % 27, 2000 + i % 23
        gold = f"{_MONTHS.index(month) + 1:02d}/{day + 1:02d}/{year}"
        wrong = [f"{(_MONTHS.index(month) + k) % 12 + 1:02d}/{day:02d}/{year}" for k in (1, 2, 3)]
        rows.append(
            {
                "input": f"Today is {month} {day}, {year}. What is the date tomorrow in MM/DD/YYYY?",
                "target": gold,
                "choices": [gold, *wrong],
            }
        )
    save_uploaded_task(task_file(folder, rows, "dates.jsonl").path, "dates")
    return "upload:dates"


def task_ref() -> str:
    """BIG-bench date understanding when it is fetched, else a small uploaded date task."""
    if BIGBENCH_TASK in list_bigbench():
        return f"bigbench:{BIGBENCH_TASK}"
    with tempfile.TemporaryDirectory() as tmp:
        return _upload_task(Path(tmp))


def _rationale(ex: Example, answer: str, strategy: str, good: bool) -> str:
    question = ex.input.split("?")[0].strip()
    if good:
        steps = (
            f"{question}. Working from the date given and counting the days forward or back, "
            f"the date asked for is {answer}."
        )
    else:
        steps = f"{question}. The date is probably one month later, which gives {answer}."
    if strategy == "eliminate":
        others = [c for c in ex.choices if c != answer][:2]
        steps += f" Options {' and '.join(others)} do not match the counting, so they are out."
    return f"{steps} <ans>{answer}</ans>"


@dataclass
class _Rationale:
    """One invented rationale with the student's invented results on the probe items."""

    strategy: str
    text: str
    answer: str
    score: float
    margin_score: float
    marks: str  # "T"/"F" per probe item
    results: dict[str, list[Any]]  # per probe item: predicted, gold_logprobs, margins


def _invent_rationale(
    ex: Example,
    examples: tuple[Example, ...],
    probes: list[int],
    strategy: str,
    skill: float,
    rng: random.Random,
) -> _Rationale:
    """A rationale right with probability ``skill``; a right one lifts the student more often."""
    good = rng.random() < skill
    answer = ex.target if good else rng.choice(ex.choices[1:] or (ex.target,))
    hit = 0.25 + (0.35 if good else 0.0)
    marks = [rng.random() < hit for _ in probes]
    margin_score = round(rng.uniform(-0.6, 0.6) + (0.3 if good else -0.2), 3)
    predicted, gold_logprobs, margins = [], [], []
    for b, right in zip(probes, marks, strict=True):
        gold = examples[b].target
        wrong = [c for c in examples[b].choices if c != gold] or [gold]
        predicted.append(gold if right else rng.choice(wrong))
        gold_logprobs.append(-rng.uniform(0.2, 2.5))
        margins.append(rng.uniform(0.05, 1.2) if right else -rng.uniform(0.05, 1.2))
    return _Rationale(
        strategy,
        _rationale(ex, answer, strategy, good),
        answer,
        sum(marks) / len(marks),
        margin_score,
        "".join("T" if right else "F" for right in marks),
        {"predicted": predicted, "gold_logprobs": gold_logprobs, "margins": margins},
    )


def _baseline(
    round_id: int, examples: tuple[Example, ...], probes: list[int], rng: random.Random
) -> None:
    """The zero-shot baseline on the probe items (no draft as demonstration)."""
    predicted, marks, gold_logprobs, margins = [], "", [], []
    for b in probes:
        predicted.append(examples[b].target if rng.random() < 0.3 else examples[b].choices[-1])
        marks += "T" if rng.random() < 0.3 else "F"
        gold_logprobs.append(-rng.uniform(0.8, 3.0))
        margins.append(rng.uniform(-1.5, 0.8))
    probe_results(
        round_id,
        marks,
        indices=probes,
        predicted=predicted,
        gold_logprobs=gold_logprobs,
        margins=margins,
    )


def _round(
    seeded: Seeded,
    study: Study,
    round_id: int,
    examples: tuple[Example, ...],
    rng: random.Random,
    n_questions: int,
    n_rationales: int,
    skill: float,
    rule: str,
    adapter: str | None = None,
) -> None:
    """Drafts, probe results (plus the zero-shot baseline) and proposed pairs for one round,
    the drafts by the teacher with ``adapter`` (None: the original one)."""
    probes = list(study.splits["probe"])
    taken = set(probes) | set(study.splits["test"]) | set(study.splits["seed"])
    pool = [i for i in range(len(examples)) if i not in taken]
    seeds = [examples[i] for i in study.splits["seed"]]
    q_prompt = QUESTION.render(
        task_name=BIGBENCH_TASK,
        description="Infer the date from context.",
        examples=seeds,
        n_new=n_questions,
        start=len(seeds) + 1,
    )
    strategies = list(STRATEGIES)
    by = {
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256},
        "teacher": study.teacher,
        "adapter_hash": adapter,
    }
    candidates: list[Candidate] = []
    _baseline(round_id, examples, probes, rng)
    bad = draft(
        round_id,
        key="q:0:raw",
        prompt=q_prompt,
        raw_output="<Question_4>Tomorrow is Tuesday. Which day was yesterday?</Question_4>",
        status="rejected",
        reason="no <input>…</input> and <target>…</target> inside <Question_4>",
        template_version=QUESTION.tag,
        **by,
    )
    seeded.rejected_draft[round_id] = bad.id  # type: ignore[assignment]
    ids: list[int] = [bad.id]  # type: ignore[list-item]
    for q in range(n_questions):
        ex = examples[pool[(7 * (q + round_id * n_questions)) % len(pool)]]
        invented = [
            _invent_rationale(ex, examples, probes, strategies[k % len(strategies)], skill, rng)
            for k in range(n_rationales)
        ]
        question = draft(
            round_id,
            key=f"q:{q // 4}:{q % 4}",
            prompt=q_prompt,
            raw_output=f"<input>{ex.input}</input><target>{ex.target}</target>",
            input=ex.input,
            target=ex.target,
            choices=list(ex.choices),
            template_version=QUESTION.tag,
            score=sum(r.score for r in invented) / len(invented),
            **by,
        )
        ids.append(question.id)  # type: ignore[arg-type]
        plain = PLAIN.render(question=ex.input)
        for k, r in enumerate(invented):
            made = rationale(
                question,
                r.text,
                r.answer,
                key=f"r:{question.id}:{r.strategy}:{k}",
                strategy=r.strategy,
                prompt=plain,
                raw_output=r.text,
                template_version=PLAIN.tag,
                score=r.score,
                margin_score=r.margin_score,
                **by,
            )
            ids.append(made.id)  # type: ignore[arg-type]
            probe_results(round_id, r.marks, draft=made, indices=probes, **r.results)
            candidates.append(
                Candidate(
                    made.id,  # type: ignore[arg-type]
                    plain,
                    r.text,
                    r.score,
                    r.answer,
                    "rationale",
                    str(question.id),
                )
            )
        candidates.append(
            Candidate(
                question.id,  # type: ignore[arg-type]
                q_prompt,
                question.raw_output,
                question.score,
                ex.target,
                "question",
                q_prompt,
            )
        )
    seeded.drafts[round_id] = ids
    specs = build_pairs(candidates, rule, max_per_prompt=12, min_margin=0.1)
    review.store_pairs(round_id, specs)
    seeded.pairs[round_id] = [p.id for p in review.queue(round_id, order="id")]  # type: ignore[misc]


def adapter_hash(align_run: int) -> str:  # a stand-in for the sha256 of the run's adapter
    return hashlib.sha256(f"adapter of run {align_run}".encode()).hexdigest()


def _tailored(round_id: int, adapter: str, skill: float) -> None:
    """What the regenerate stage writes: the aligned teacher's questions and plain-prompt
    rationales, right more often and longer (as DPO tends to make them)."""
    rng = random.Random(round_id)
    with read_session() as s:
        drafted = select(Draft).where(Draft.round_id == round_id, Draft.phase == "draft")
        questions = s.exec(drafted.where(Draft.kind == "question", Draft.status == "ok")).all()
    own = {"id", "round_id", "kind", "parent_id", "idem_key", "score", "margin_score", "created_at"}
    for q in questions:
        ex = Example(q.input or "", q.target or "", tuple(q.choices))
        by = {"phase": "tailored", "teacher": q.teacher, "adapter_hash": adapter}
        question = draft(round_id, key=f"t:{q.idem_key}", **(q.model_dump(exclude=own) | by))
        good = rng.random() < skill
        answer = ex.target if good else rng.choice(ex.choices[1:] or (ex.target,))
        text = _rationale(ex, answer, "plain", good).replace(
            " <ans>", " Checking the count once more confirms it. <ans>"
        )
        rationale(
            question,
            text,
            answer,
            key=f"t:r:{question.id}",
            prompt=PLAIN.render(question=ex.input),
            raw_output=text,
            template_version=PLAIN.tag,
            teacher=q.teacher,
            adapter_hash=adapter,
        )


def _run(
    seeded: Seeded, round_id: int, index: int, kind: str, minutes: float, ago_h: float, total: int
) -> int:
    start = utcnow() - timedelta(hours=ago_h)
    done = run(
        round_id,
        kind,
        status="succeeded",
        progress_done=total,
        progress_total=total,
        message="done",
        attempts=1,
        requested_by="admin",
        created_at=start,
        started_at=start,
        finished_at=start + timedelta(minutes=minutes),
    )
    seeded.runs[f"{kind}-r{index}"] = done.id  # type: ignore[assignment]
    return done.id  # type: ignore[return-value]


def _curves(run_id: int, names: dict[str, tuple[float, float]], steps: int) -> None:
    """Metric rows that move from start to end with a little noise, like a real trainer's."""
    rng = random.Random(run_id)
    for name, (first, last) in names.items():
        values = [
            first + (last - first) * (step / steps) ** 0.6 + rng.uniform(-0.03, 0.03)
            for step in range(1, steps + 1)
        ]
        metrics(run_id, {name: values})


FULL_ROUND = (  # stage, minutes, items: one finished round of the method
    ("check", 1.5, 48),
    ("draft", 6.0, 0),
    ("score", 9.0, 0),
    ("pairs", 0.2, 1),
    ("align", 14.0, 40),
    ("regenerate", 5.0, 0),
    ("distill", 11.0, 30),
    ("evaluate", 2.5, 80),
)
# Student test accuracy before and after each finished round (with 95% intervals), 40 items.
ACCURACY = [(0.275, 0.35), (0.35, 0.425), (0.425, 0.45)]
DECISIONS = ("approve", "approve", "swap", "approve", "reject")


def _finish_round(
    seeded: Seeded, round_id: int, index: int, n_items: int, hours_ago: float
) -> None:
    """Round ``index`` was reviewed by two people, trained and evaluated; its runs are done."""
    for i, pid in enumerate(seeded.pairs[round_id]):
        who = "ann" if i % 2 else "admin"
        note = "" if i % 3 else "counting is right"
        review.decide(pid, DECISIONS[i % len(DECISIONS)], who, 1, note=note)
    for i, (kind, minutes, total) in enumerate(FULL_ROUND):
        run_id = _run(seeded, round_id, index, kind, minutes, hours_ago - 2 * i, total or n_items)
        if kind == "align":
            gain = 0.15 * index
            _curves(
                run_id,
                {
                    "loss": (0.69, 0.41 - gain / 2),
                    "rewards/margins": (0.0, 0.62 + gain),
                    "rewards/accuracies": (0.5, 0.8),
                },
                40,
            )
        if kind == "regenerate":
            _tailored(round_id, adapter_hash(seeded.runs[f"align-r{index}"]), 0.6 + 0.1 * index)
        if kind == "distill":
            _curves(run_id, {"loss": (1.9, 1.1), "mean_token_accuracy": (0.52, 0.66)}, 30)
    before, after = ACCURACY[index % len(ACCURACY)]
    for model, acc in (("student-before", before), ("student-after", after)):
        evaluation(
            round_id,
            model,
            acc,
            run_id=seeded.runs[f"evaluate-r{index}"],
            model_ref=STUDENT,
            ci_low=max(0.0, acc - 0.14),
            ci_high=min(1.0, acc + 0.15),
        )
    signal_check(round_id, "ok")
    update(Round, round_id, status="done")


def seed_study(
    name: str = "dates",
    *,
    n_questions: int = 5,
    n_rationales: int = 4,
    finished_rounds: int = 2,
    rule: str = "arte",
    seed: int = 0,
) -> Seeded:
    """A study mid-way: ``finished_rounds`` rounds reviewed, trained and evaluated, then an open
    round with its drafts scored and its pairs proposed (the study's current round)."""
    rng = random.Random(seed)
    study = studies.create_study(
        name,
        task_ref(),
        teacher=TEACHER,
        student=STUDENT,
        seed=seed,
        config={"n_questions": n_questions, "n_probe": 8, "n_test": 40},
        guidelines="Prefer the rationale that reaches the correct date by valid counting. "
        "Reject a pair when both sides are wrong.",
    )
    examples = resolve_task(study.task_ref).examples
    first = rounds.current_round(study.id).id  # type: ignore[arg-type]
    seeded = Seeded(study=study.id, name=study.name, rounds=[first])  # type: ignore[arg-type]
    n_items = n_questions * n_rationales
    for index in range(finished_rounds + 1):
        if index:
            trained = {
                f"{who}_adapter": f"runs/run-{seeded.runs[f'{stage}-r{index - 1}']:05d}/adapter"
                for who, stage in (("teacher", "align"), ("student", "distill"))
            }
            seeded.rounds.append(round_(study, index, **trained).id)  # type: ignore[arg-type]
        round_id = seeded.rounds[-1]
        skill = 0.4 + 0.1 * index  # the aligned teacher writes more correct rationales
        adapter = adapter_hash(seeded.runs[f"align-r{index - 1}"]) if index else None
        _round(
            seeded, study, round_id, examples, rng, n_questions, n_rationales, skill, rule, adapter
        )
        hours_ago = 20.0 * (finished_rounds - index) + 18
        if index < finished_rounds:
            _finish_round(seeded, round_id, index, n_items, hours_ago)
    current = seeded.current
    signal_check(
        current, "warn", ["draft scores are noisy: split-half reliability 0.41 on 8 probes"]
    )
    for i, (kind, minutes, total) in enumerate(FULL_ROUND[:4]):
        _run(seeded, current, finished_rounds, kind, minutes, 3 - 0.5 * i, total or n_items)
    return seeded


def running_run(study_id: int, round_id: int, kind: str = "align", total: int = 40) -> int:
    """A run the worker would be executing now (no worker in the tests: the test moves it)."""
    start = utcnow() - timedelta(minutes=3)
    return run(  # type: ignore[return-value]
        round_id,
        kind,
        study_id=study_id,
        status="running",
        progress_done=0,
        progress_total=total,
        message="loading the teacher",
        attempts=1,
        worker="localhost:4242",
        heartbeat_at=utcnow(),
        requested_by="admin",
        created_at=start,
        started_at=start,
    ).id


def pair_status(pair_id: int) -> str:
    from teachlab.db import Pair

    with read_session() as s:
        pair = s.get(Pair, pair_id)
    return pair.status if pair is not None else "missing"
