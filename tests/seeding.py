"""A realistic study for the browser tests and the latency benchmark: a real task, two rounds of
question and rationale drafts with probe results, pairs from the pair rules, runs and metrics.

Everything goes through the project's own entry points where one exists (``create_study``,
``build_pairs``, ``store_pairs``, ``review.decide``); only the model outputs are invented.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from teachlab import review, rounds, studies
from teachlab.db import (
    Draft,
    Evaluation,
    Metric,
    ProbeResult,
    Round,
    Run,
    Study,
    read_session,
    write_session,
)
from teachlab.db.tables import SignalCheck, utcnow
from teachlab.pairs import Candidate, build_pairs
from teachlab.prompts import PLAIN, QUESTION, STRATEGIES
from teachlab.tasks import Example, list_bigbench, resolve_task, save_uploaded_task

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
    src = folder / "dates.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    save_uploaded_task(src, "dates")
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
    sampling = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256}
    candidates: list[Candidate] = []
    ids: list[int] = []
    with write_session() as s:
        for b in probes:  # the zero-shot baseline: draft_id None
            s.add(
                ProbeResult(
                    round_id=round_id,
                    probe_index=b,
                    mode="loglik",
                    predicted=examples[b].target if rng.random() < 0.3 else examples[b].choices[-1],
                    correct=rng.random() < 0.3,
                    gold_logprob=-rng.uniform(0.8, 3.0),
                    margin=rng.uniform(-1.5, 0.8),
                )
            )
        bad = Draft(
            round_id=round_id,
            kind="question",
            idem_key="q:0:raw",
            prompt=q_prompt,
            raw_output="<Question_4>Tomorrow is Tuesday. Which day was yesterday?</Question_4>",
            status="rejected",
            reason="no <input>…</input> and <target>…</target> inside <Question_4>",
            template_version=QUESTION.tag,
            sampling=sampling,
            teacher=study.teacher,
            adapter_hash=adapter,
        )
        s.add(bad)
        s.flush()
        seeded.rejected_draft[round_id] = bad.id  # type: ignore[assignment]
        ids.append(bad.id)  # type: ignore[arg-type]
        for q in range(n_questions):
            ex = examples[pool[(7 * (q + round_id * n_questions)) % len(pool)]]
            question = Draft(
                round_id=round_id,
                kind="question",
                idem_key=f"q:{q // 4}:{q % 4}",
                prompt=q_prompt,
                raw_output=f"<input>{ex.input}</input><target>{ex.target}</target>",
                input=ex.input,
                target=ex.target,
                choices=list(ex.choices),
                template_version=QUESTION.tag,
                sampling=sampling,
                teacher=study.teacher,
                adapter_hash=adapter,
            )
            s.add(question)
            s.flush()
            ids.append(question.id)  # type: ignore[arg-type]
            plain = PLAIN.render(question=ex.input)
            scores = []
            for k in range(n_rationales):
                strategy = strategies[k % len(strategies)]
                good = rng.random() < skill
                answer = ex.target if good else rng.choice(ex.choices[1:] or (ex.target,))
                text = _rationale(ex, answer, strategy, good)
                hit = 0.25 + (0.35 if good else 0.0)
                marks = [rng.random() < hit for _ in probes]
                score = sum(marks) / len(marks)
                scores.append(score)
                rationale = Draft(
                    round_id=round_id,
                    kind="rationale",
                    parent_id=question.id,
                    idem_key=f"r:{question.id}:{strategy}:{k}",
                    strategy=strategy,
                    prompt=plain,
                    raw_output=text,
                    rationale=text,
                    answer=answer,
                    template_version=PLAIN.tag,
                    sampling=sampling,
                    teacher=study.teacher,
                    adapter_hash=adapter,
                    score=score,
                    margin_score=round(rng.uniform(-0.6, 0.6) + (0.3 if good else -0.2), 3),
                )
                s.add(rationale)
                s.flush()
                ids.append(rationale.id)  # type: ignore[arg-type]
                for b, right in zip(probes, marks, strict=True):
                    gold = examples[b].target
                    wrong = [c for c in examples[b].choices if c != gold] or [gold]
                    s.add(
                        ProbeResult(
                            draft_id=rationale.id,
                            round_id=round_id,
                            probe_index=b,
                            mode="loglik",
                            predicted=gold if right else rng.choice(wrong),
                            correct=right,
                            gold_logprob=-rng.uniform(0.2, 2.5),
                            margin=rng.uniform(0.05, 1.2) if right else -rng.uniform(0.05, 1.2),
                        )
                    )
                candidates.append(
                    Candidate(
                        rationale.id,  # type: ignore[arg-type]
                        plain,
                        text,
                        score,
                        answer,
                        "rationale",
                        str(question.id),
                    )
                )
            question.score = sum(scores) / len(scores)
            s.add(question)
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
    with write_session() as s:
        drafted = select(Draft).where(Draft.round_id == round_id, Draft.phase == "draft")
        for q in s.exec(drafted.where(Draft.kind == "question", Draft.status == "ok")).all():
            ex = Example(q.input or "", q.target or "", tuple(q.choices))
            common = {
                "round_id": round_id,
                "phase": "tailored",
                "teacher": q.teacher,
                "adapter_hash": adapter,
            }
            copied = q.model_dump(exclude={"id", "idem_key", "score", "margin_score", "created_at"})
            question = Draft.model_validate(copied | common | {"idem_key": f"t:{q.idem_key}"})
            s.add(question)
            s.flush()
            good = rng.random() < skill
            answer = ex.target if good else rng.choice(ex.choices[1:] or (ex.target,))
            text = _rationale(ex, answer, "plain", good).replace(
                " <ans>", " Checking the count once more confirms it. <ans>"
            )
            s.add(
                Draft(
                    kind="rationale",
                    parent_id=question.id,
                    idem_key=f"t:r:{question.id}",
                    prompt=PLAIN.render(question=ex.input),
                    raw_output=text,
                    rationale=text,
                    answer=answer,
                    template_version=PLAIN.tag,
                    **common,
                )
            )


def _run(
    seeded: Seeded,
    study_id: int,
    round_id: int,
    index: int,
    kind: str,
    minutes: float,
    ago_h: float,
    total: int,
) -> int:
    start = utcnow() - timedelta(hours=ago_h)
    with write_session() as s:
        run = Run(
            study_id=study_id,
            round_id=round_id,
            kind=kind,
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
        s.add(run)
        s.flush()
        seeded.runs[f"{kind}-r{index}"] = run.id  # type: ignore[assignment]
        return run.id  # type: ignore[return-value]


def _curves(run_id: int, names: dict[str, tuple[float, float]], steps: int) -> None:
    """Metric rows that move from start to end with a little noise, like a real trainer's."""
    rng = random.Random(run_id)
    with write_session() as s:
        for name, (first, last) in names.items():
            for step in range(1, steps + 1):
                value = first + (last - first) * (step / steps) ** 0.6 + rng.uniform(-0.03, 0.03)
                s.add(Metric(run_id=run_id, step=step, name=name, value=value))


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
    seeded: Seeded, study_id: int, round_id: int, index: int, n_items: int, hours_ago: float
) -> None:
    """Round ``index`` was reviewed by two people, trained and evaluated; its runs are done."""
    for i, pid in enumerate(seeded.pairs[round_id]):
        who = "ann" if i % 2 else "admin"
        note = "" if i % 3 else "counting is right"
        review.decide(pid, DECISIONS[i % len(DECISIONS)], who, 1, note=note)
    for i, (kind, minutes, total) in enumerate(FULL_ROUND):
        run_id = _run(
            seeded, study_id, round_id, index, kind, minutes, hours_ago - 2 * i, total or n_items
        )
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
    with write_session() as s:
        for model, acc in (("student-before", before), ("student-after", after)):
            s.add(
                Evaluation(
                    round_id=round_id,
                    run_id=seeded.runs[f"evaluate-r{index}"],
                    model=model,
                    model_ref=STUDENT,
                    accuracy=acc,
                    n=40,
                    ci_low=max(0.0, acc - 0.14),
                    ci_high=min(1.0, acc + 0.15),
                )
            )
        s.add(SignalCheck(round_id=round_id, level="ok", reasons=[], result={}))
        done = s.get(Round, round_id)
        done.status = "done"  # type: ignore[union-attr]
        s.add(done)


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
            with write_session() as s:
                rnd = Round(
                    study_id=study.id,  # type: ignore[arg-type]
                    index=index,
                    teacher=TEACHER,
                    student=STUDENT,
                    teacher_adapter=f"runs/run-{seeded.runs[f'align-r{index - 1}']:05d}/adapter",
                    student_adapter=f"runs/run-{seeded.runs[f'distill-r{index - 1}']:05d}/adapter",
                )
                s.add(rnd)
                s.flush()
                seeded.rounds.append(rnd.id)  # type: ignore[arg-type]
        round_id = seeded.rounds[-1]
        skill = 0.4 + 0.1 * index  # the aligned teacher writes more correct rationales
        adapter = adapter_hash(seeded.runs[f"align-r{index - 1}"]) if index else None
        _round(
            seeded, study, round_id, examples, rng, n_questions, n_rationales, skill, rule, adapter
        )
        hours_ago = 20.0 * (finished_rounds - index) + 18
        if index < finished_rounds:
            _finish_round(seeded, study.id, round_id, index, n_items, hours_ago)  # type: ignore[arg-type]
    current = seeded.current
    with write_session() as s:
        s.add(
            SignalCheck(
                round_id=current,
                level="warn",
                reasons=["draft scores are noisy: split-half reliability 0.41 on 8 probes"],
                result={},
            )
        )
    for i, (kind, minutes, total) in enumerate(FULL_ROUND[:4]):
        _run(
            seeded, study.id, current, finished_rounds, kind, minutes, 3 - 0.5 * i, total or n_items
        )  # type: ignore[arg-type]
    return seeded


def running_run(study_id: int, round_id: int, kind: str = "align", total: int = 40) -> int:
    """A run the worker would be executing now (no worker in the tests: the test moves it)."""
    start = utcnow() - timedelta(minutes=3)
    with write_session() as s:
        run = Run(
            study_id=study_id,
            round_id=round_id,
            kind=kind,
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
        )
        s.add(run)
        s.flush()
        return run.id  # type: ignore[return-value]


def pair_status(pair_id: int) -> str:
    from teachlab.db import Pair

    with read_session() as s:
        pair = s.get(Pair, pair_id)
    return pair.status if pair is not None else "missing"
