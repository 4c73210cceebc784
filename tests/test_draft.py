"""Drafting: parsing teacher output, target checks, duplicates, and the resumable DB stages.

Pure logic runs on hand-written outputs and a fake deterministic backend; the slow tests run
the bundled teacher (gemma-3-270m) on real prompts.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from builders import round_, study, task_file, use_storage
from sqlmodel import select

from teachlab import prompts
from teachlab.backends.base import GenRequest
from teachlab.config import StudyConfig
from teachlab.db import Draft, Round, Study, read_session, write_session
from teachlab.drafting import check_target, derive_seed, shared_labels
from teachlab.jobs.context import LocalContext
from teachlab.prompts import parse_question_blocks, parse_questions, parse_rationale
from teachlab.stages.draft import draft_questions, draft_rationales
from teachlab.tasks.model import Example, Task

PREFILL = "<Question_4><input>"

# ---------------------------------------------------------------- parse_questions


def test_parses_well_formed_blocks_with_prefill() -> None:
    text = (
        "Messi scored a hat-trick</input><target>plausible</target></Question_4>\n"
        "<Question_5><input>LeBron hit a home run</input><target>implausible</target>"
        "</Question_5>"
    )
    questions, reasons = parse_questions(text, PREFILL)
    assert [(q.input, q.target, q.number) for q in questions] == [
        ("Messi scored a hat-trick", "plausible", 4),
        ("LeBron hit a home run", "implausible", 5),
    ]
    assert reasons == []


def test_tolerates_missing_closing_tags_whitespace_and_chatter() -> None:
    text = (
        "  Kobe dunked  </input>\n<target> plausible </target>\n"
        "Assistant: here is another one\n"
        "<Question_5> <input>Brady threw a penalty kick</input><target>implausible</target>\n"
        "<Question_6><input>Ovechkin scored a goal</input><target>plausible</target>"
        "</Question_6> thanks!"
    )
    questions, reasons = parse_questions(text, PREFILL)
    assert [q.input for q in questions] == [
        "Kobe dunked",
        "Brady threw a penalty kick",
        "Ovechkin scored a goal",
    ]
    assert [q.target for q in questions] == ["plausible", "implausible", "plausible"]
    assert reasons == []


def test_missing_target_close_is_accepted_only_when_the_block_is_closed() -> None:
    text = "A</input><target>plausible</Question_4><Question_5><input>B</input><target>implaus"
    blocks = parse_question_blocks(text, PREFILL)
    assert blocks[0].question is not None and blocks[0].question.target == "plausible"
    assert blocks[1].question is None and "unclosed final block" in blocks[1].reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "unclosed final block"),
        ("Messi scored", "unclosed final block"),
        ("Messi scored</input>", "unclosed final block"),
        ("Messi</input><target></target></Question_4>", "empty target"),
        ("</input><target>plausible</target></Question_4>", "empty input"),
        ("Messi</input></Question_4>", "no <target>"),
        ("Messi</input><target>a\nb</target></Question_4>", "several lines"),
        ("x <input>y</input><target>z</target></Question_4>", "tags inside"),
    ],
)
def test_malformed_blocks_are_rejected_with_a_reason(text: str, reason: str) -> None:
    questions, reasons = parse_questions(text, PREFILL)
    assert questions == []
    assert len(reasons) == 1 and reason in reasons[0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I cannot help with that.",
        "<Question>no number</Question>",
        "<input>orphan</input><target>t</target>",
        "<<<<>>>> </input></target> <Question_",
        "\x00\x01 binary junk \uffff",
    ],
)
def test_output_without_blocks_gives_one_reason_and_no_exception(text: str) -> None:
    questions, reasons = parse_questions(text, "")
    assert questions == []
    assert reasons == ["no <Question_k> block in the output"]


def test_blocks_running_into_each_other_are_split_not_merged() -> None:
    # Real gemma output: the next block starts inside the input of the first.
    text = (
        "Jonas runs next to Jordan\n<Question_5> see is your roommate</input>"
        "<target>plausible</target></Question_4>"
    )
    questions, reasons = parse_questions(text, PREFILL)
    assert questions == []
    assert len(reasons) == 2


def test_parser_never_raises_on_random_tag_soup() -> None:
    rng = random.Random(0)
    pieces = ["<Question_4>", "<input>", "</input>", "<target>", "</target>", "</Question_4>"]
    pieces += ["<Question_", "plausible", "\n", " ", "x", "<", ">", "/"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        questions, reasons = parse_questions(text, rng.choice(["", PREFILL]))
        for q in questions:
            assert q.input and q.target and "<input>" not in q.input
        assert isinstance(reasons, list)


# ---------------------------------------------------------------- parse_rationale


def test_rationale_answer_is_the_last_tag_and_text_after_it_is_dropped() -> None:
    text = "First <ans>A</ans> no wait, it is <ans> B </ans>\nUser: next question"
    rationale, answer, reason = parse_rationale(text)
    assert answer == "B"
    assert rationale == "First <ans>A</ans> no wait, it is <ans> B </ans>"
    assert reason == ""


@pytest.mark.parametrize(
    ("text", "answer", "reason"),
    [
        ("Messi is a footballer, so <ans>plausible", "plausible", "unclosed <ans>"),
        ("It is plausible.", None, "no <ans>…</ans> answer"),
        ("<ans></ans>", None, "empty <ans></ans>"),
        ("   ", None, "empty output"),
        ("so <ANS>implausible</ANS>", "implausible", ""),
    ],
)
def test_rationale_edge_cases(text: str, answer: str | None, reason: str) -> None:
    _, got, why = parse_rationale(text)
    assert (got, why) == (answer, reason)


# ---------------------------------------------------------------- targets


SPORTS = Task(
    "sports",
    "Determine whether a sentence about sports is plausible or implausible",
    tuple(
        Example(
            f"sentence {i}", "plausible" if i % 2 else "implausible", ("plausible", "implausible")
        )
        for i in range(12)
    ),
    "test",
)
DATES = Task(
    "dates",
    "Infer the date from context",
    tuple(
        Example(f"q{i}", f"0{i % 9 + 1}/01/2021", (f"0{i % 9 + 1}/01/2021", "12/31/1999"))
        for i in range(12)
    ),
    "test",
)
NUMBERS = Task("numbers", "Count", tuple(Example(f"n{i}", str(i)) for i in range(12)), "test")


def test_shared_label_set_becomes_the_choices_and_target_is_canonicalised() -> None:
    assert shared_labels(SPORTS) == ("plausible", "implausible")
    assert shared_labels(DATES) == ()
    check = check_target(SPORTS, "Messi scored\nOptions: plausible | implausible", " Plausible.")
    assert (check.input, check.target, check.choices, check.flags) == (
        "Messi scored",
        "plausible",
        ("plausible", "implausible"),
        (),
    )
    bad = check_target(SPORTS, "Messi scored", "maybe")
    assert bad.flags == ("target-not-in-choices",)
    assert "maybe" in bad.reason and "plausible | implausible" in bad.reason


def test_bbh_style_letter_labels_match_with_or_without_parentheses() -> None:
    letters = ("(A)", "(B)", "(C)")
    task = Task(
        "mc", "", tuple(Example(f"q{i} (A) x (B) y (C) z", "(A)", letters) for i in range(12)), "t"
    )
    assert check_target(task, "q (A) 1 (B) 2 (C) 3", "B").target == "(B)"
    assert check_target(task, "q (A) 1 (B) 2 (C) 3", "(D)").flags == ("target-not-in-choices",)


def test_per_example_choices_come_from_the_drafts_options_line() -> None:
    ok = check_target(DATES, "Today is 01/01/2021.\nOptions: 01/02/2021 | 12/31/2020", "12/31/2020")
    assert ok.choices == ("01/02/2021", "12/31/2020") and ok.flags == ()
    assert ok.input == "Today is 01/01/2021."
    assert check_target(DATES, "Today is 01/01/2021.", "01/02/2021").flags == ("no-options",)
    kept = check_target(DATES, "x\nOptions: a | b", "a", strip_options=False)
    assert kept.input == "x\nOptions: a | b"


def test_options_lines_that_cannot_be_a_question_are_rejected() -> None:
    single = check_target(DATES, "Today is 01/01/2021.\nOptions: 01/02/2021", "01/02/2021")
    assert single.flags == ("one-option",) and "a single option" in single.reason
    repeated = check_target(DATES, "Today?\nOptions: a | B | b.", "a")
    assert repeated.flags == ("repeated-options",) and "more than once" in repeated.reason
    bare = check_target(DATES, "\nOptions: a | b", "a")
    assert bare.flags == ("empty-input",) and "no text besides" in bare.reason


def test_numeric_and_free_form_targets() -> None:
    assert check_target(NUMBERS, "How many?", "1,024").flags == ()
    assert check_target(NUMBERS, "How many?", "many").flags == ("target-not-numeric",)
    free = Task("free", "", tuple(Example(f"w{i}", f"word {i}") for i in range(12)), "t")
    assert check_target(free, "sort these", "a b c").flags == ()
    assert check_target(free, "sort these", "  ").flags == ("empty-target",)


def test_seeds_differ_per_key_round_and_phase_and_are_stable() -> None:
    seeds = {
        derive_seed(s, r, p, k)
        for s in (0, 1)
        for r in (0, 1)
        for p in ("draft", "tailored")
        for k in ("q:0", "q:1")
    }
    assert len(seeds) == 16
    assert derive_seed(3, 1, "draft", "q:7") == derive_seed(3, 1, "draft", "q:7")


# ---------------------------------------------------------------- DB stages (fake teacher)


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(n))


class FakeTeacher:
    """Deterministic outputs from the request key: ``good`` well-formed questions, one block
    with a bad target, and (for rationales) a rationale with an answer. Fails after ``fail_after``
    completions when set, to simulate a crash."""

    name = "fake"

    def __init__(self, good: int = 2, fail_after: int | None = None, copy: str = "") -> None:
        self.good, self.fail_after, self.copy = good, fail_after, copy
        self.calls: list[str] = []
        self.tokenizer = PlainTokenizer()
        self.adapter_hash = None

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        for request in requests:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("teacher crashed")
            self.calls.append(request.key)
            rng = random.Random(f"{request.key}:{request.seed}")
            if request.key.startswith("q:"):
                blocks = [
                    f"<Question_{4 + j}><input>{self.copy or _words(rng, 5)}</input>"
                    f"<target>{rng.choice(['plausible', 'Implausible'])}</target></Question_{4 + j}>"
                    for j in range(self.good)
                ]
                blocks.append(f"<Question_{4 + self.good}><input>x</input><target>maybe</target>")
                text = "\n".join(blocks)
                yield request, text[len(PREFILL) :] if request.prompt.endswith(PREFILL) else text
            else:
                yield request, f" {_words(rng, 4)} so <ans>plausible</ans>\nUser: more"

    def close(self) -> None:
        return None


class PlainTokenizer:
    """Renders the plain "User:/Assistant:" template (pure string work, no model needed)."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):  # type: ignore[no-untyped-def]
        from jinja2 import Template

        from teachlab.models import PLAIN_CHAT_TEMPLATE

        return Template(PLAIN_CHAT_TEMPLATE).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )


def _sports_task(tmp: Path) -> Path:
    """A plausible/implausible task of 20 made-up sentences (a shared label set)."""
    rows = [
        {
            "input": _words(random.Random(i), 4),
            "target": "plausible" if i % 2 else "implausible",
            "choices": ["plausible", "implausible"],
        }
        for i in range(20)
    ]
    return task_file(tmp, rows, "sports.jsonl").path


def _make_round(tmp: Path, task: Path | None = None, name: str = "s", **config: object) -> int:
    cfg = StudyConfig.from_dict({"n_questions": 5, "questions_per_call": 3, **config})
    made = study(
        name=name,
        task_ref=f"file:{task or _sports_task(tmp)}",
        teacher="fake",
        student="fake",
        seed=7,
        config=cfg.to_dict(),
        splits={"seed": [0, 1, 2], "probe": [3, 4, 5, 6], "test": list(range(7, 20))},
    )
    return round_(made).id  # type: ignore[return-value]


def _drafts(**where: object) -> list[Draft]:
    with read_session() as session:
        query = select(Draft)
        for name, value in where.items():
            query = query.where(getattr(Draft, name) == value)
        return list(session.exec(query.order_by(Draft.id)).all())


def test_question_stage_stores_every_block_and_stops_at_the_wanted_count(
    db_path: Path, tmp_path: Path
) -> None:
    round_id = _make_round(tmp_path)
    teacher = FakeTeacher(good=2)
    ctx = LocalContext()
    result = draft_questions(ctx, round_id, teacher)
    rows = _drafts(kind="question")
    # 5 wanted, 2 good per call: one wave of 2 calls (4 ok), then one more call.
    assert teacher.calls == ["q:0", "q:1", "q:2"]
    assert [r.idem_key for r in rows[:3]] == ["q:0:0", "q:0:1", "q:0:2"]
    assert result["total_ok"] == 6 and result["rejected"] == 3
    ok = [r for r in rows if r.status == "ok"]
    assert all(r.choices == ["plausible", "implausible"] for r in ok)
    assert {r.target for r in ok} <= {"plausible", "implausible"}  # "Implausible" canonicalised
    bad = [r for r in rows if r.status == "rejected"]
    assert all("'maybe' is not one of" in r.reason for r in bad)
    first = rows[0]
    assert first.prompt.endswith("Assistant:" + PREFILL) and first.prefill == PREFILL
    assert first.template_version == prompts.TEMPLATE_VERSIONS["question"] == "question@2"
    assert first.sampling["seed"] == derive_seed(7, 0, "draft", "q:0")
    assert ctx.events[-1][:2] == (5, 5)


def test_resume_makes_no_new_rows_and_never_calls_the_teacher_for_done_keys(
    db_path: Path, tmp_path: Path
) -> None:
    round_id = _make_round(tmp_path)
    ctx = LocalContext()
    draft_questions(ctx, round_id, FakeTeacher())
    draft_rationales(ctx, round_id, FakeTeacher())
    before = [(d.id, d.idem_key) for d in _drafts()]
    again = FakeTeacher()
    draft_questions(ctx, round_id, again)
    draft_rationales(ctx, round_id, again)
    assert again.calls == []
    assert [(d.id, d.idem_key) for d in _drafts()] == before


def test_a_crash_mid_stage_resumes_without_recomputing(db_path: Path, tmp_path: Path) -> None:
    round_id = _make_round(tmp_path, n_questions=8)
    ctx = LocalContext()
    crashing = FakeTeacher(fail_after=2)
    with pytest.raises(RuntimeError, match="teacher crashed"):
        draft_questions(ctx, round_id, crashing)
    assert {d.idem_key.rsplit(":", 1)[0] for d in _drafts()} == {"q:0", "q:1"}
    resumed = FakeTeacher()
    draft_questions(ctx, round_id, resumed)
    assert "q:0" not in resumed.calls and "q:1" not in resumed.calls

    # Same outputs as an uninterrupted run: the fake is deterministic per key and seed.
    def content() -> list[tuple[str, str | None, str]]:
        return [(d.idem_key, d.input, d.status) for d in _drafts(kind="question")]

    resumed_rows = content()
    with use_storage(tmp_path / "fresh"):
        fresh_round = _make_round(tmp_path, n_questions=8)
        draft_questions(LocalContext(), fresh_round, FakeTeacher())
        fresh_rows = content()
    assert sorted(resumed_rows) == sorted(fresh_rows)


def test_copies_of_probe_items_and_repeats_are_marked_duplicate(
    db_path: Path, tmp_path: Path
) -> None:
    round_id = _make_round(tmp_path, n_questions=2)
    probe_text = _words(random.Random(4), 4)  # the input of example 4, a probe item
    draft_questions(LocalContext(), round_id, FakeTeacher(copy=probe_text.upper()))
    rows = [r for r in _drafts(kind="question") if r.input]
    dupes = [r for r in rows if r.status == "duplicate"]
    assert dupes and all("probe item 4" in r.reason for r in dupes)
    assert not [r for r in rows if r.status == "ok"]


def test_a_teacher_that_never_parses_stops_at_the_call_cap(db_path: Path, tmp_path: Path) -> None:
    round_id = _make_round(tmp_path, n_questions=3)
    teacher = FakeTeacher(good=0)
    ctx = LocalContext()
    result = draft_questions(ctx, round_id, teacher)
    assert len(teacher.calls) == 4  # 4 x ceil(3 / 3)
    assert result["total_ok"] == 0 and any(
        "Stopped after 4 teacher calls" in line for line in ctx.lines
    )


def test_rationales_one_per_strategy_with_answers_and_flags(db_path: Path, tmp_path: Path) -> None:
    round_id = _make_round(tmp_path, n_rationales=2)
    ctx = LocalContext()
    draft_questions(ctx, round_id, FakeTeacher())
    result = draft_rationales(ctx, round_id, FakeTeacher())
    questions = _drafts(kind="question", status="ok")
    rationales = _drafts(kind="rationale")
    assert result["ok"] == len(rationales) == 2 * len(questions)
    assert {r.strategy for r in rationales} == {"expert", "rules"}
    r = rationales[0]
    parent_key = next(q.idem_key for q in questions if q.id == r.parent_id)
    assert r.idem_key == f"r:{parent_key}:{r.strategy}" and r.answer == "plausible"
    assert r.rationale.endswith("<ans>plausible</ans>") and "User:" not in r.rationale
    assert r.template_version == "rationale@1" and r.sampling["temperature"] == 0.7
    parent = next(q for q in questions if q.id == r.parent_id)
    assert ("answer-disagrees-with-target" in r.flags) == (parent.target != "plausible")
    assert "You are a world-class expert in sports." in r.prompt


def test_the_same_study_seeds_the_same_rationales_wherever_its_rows_lie(
    db_path: Path, tmp_path: Path
) -> None:
    task = _sports_task(tmp_path)
    seeds = []
    for name in ("first", "second"):  # the second study's questions get other row ids
        round_id = _make_round(tmp_path, task, name, n_rationales=2)
        ctx = LocalContext()
        draft_questions(ctx, round_id, FakeTeacher())
        draft_rationales(ctx, round_id, FakeTeacher())
        questions = {q.id: q.idem_key for q in _drafts(round_id=round_id, kind="question")}
        seeds.append(
            sorted(
                (questions[r.parent_id], r.strategy, r.sampling["seed"])  # type: ignore[index]
                for r in _drafts(round_id=round_id, kind="rationale")
            )
        )
    assert seeds[0] and seeds[0] == seeds[1]
    assert len({seed for *_, seed in seeds[0]}) == len(seeds[0])  # still one seed a request


def test_rationales_stored_under_the_old_row_id_keys_count_as_done(
    db_path: Path, tmp_path: Path
) -> None:
    round_id = _make_round(tmp_path, n_rationales=2)
    ctx = LocalContext()
    draft_questions(ctx, round_id, FakeTeacher())
    draft_rationales(ctx, round_id, FakeTeacher())
    with write_session() as session:  # as a round drafted by an earlier version stored them
        for r in session.exec(select(Draft).where(Draft.kind == "rationale")).all():
            r.idem_key = f"r:{r.parent_id}:{r.strategy}"
            session.add(r)
    before = len(_drafts(kind="rationale"))
    again = FakeTeacher()
    draft_rationales(ctx, round_id, again)
    assert again.calls == [] and len(_drafts(kind="rationale")) == before


class SilentTeacher(FakeTeacher):
    """Rationales that never answer; under the answer cue it answers by the key's parity."""

    def __init__(self) -> None:
        super().__init__()
        self.forcing: list[GenRequest] = []

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        for request in requests:
            if request.prompt.endswith(prompts.ANSWER_CUE):
                self.forcing.append(request)
                yield request, " implausible" if len(request.key) % 2 else "plausible "
            elif request.key.startswith("r:"):
                yield request, f" {_words(random.Random(request.key), 5)}\n"
            else:
                yield from super().generate([request])


@pytest.mark.parametrize("force", [True, False])
def test_rationales_without_an_answer_get_one_forced(
    db_path: Path, tmp_path: Path, force: bool
) -> None:
    round_id = _make_round(tmp_path, n_rationales=2, force_answer=force)
    ctx = LocalContext()
    draft_questions(ctx, round_id, FakeTeacher())
    teacher = SilentTeacher()
    result = draft_rationales(ctx, round_id, teacher)
    rationales = _drafts(kind="rationale")
    assert result["ok"] == len(rationales) > 0
    if not force:
        assert not teacher.forcing
        assert all(r.answer is None and r.flags == ["no-answer"] for r in rationales)
        return
    # One greedy forcing call per rationale, continuing its own prompt and text.
    assert len(teacher.forcing) == len(rationales)
    for request in teacher.forcing:
        assert request.temperature == 0.0 and request.max_new_tokens == prompts.FORCED_ANSWER_TOKENS
        assert prompts.ANSWER_CLOSE in request.stop
    for r in rationales:
        expected = "implausible" if len(r.idem_key) % 2 else "plausible"
        assert r.answer == expected and "forced-answer" in r.flags
        assert r.rationale.endswith(f"So the answer is <ans>{expected}</ans>")
        assert r.rationale.startswith(_words(random.Random(r.idem_key), 5))
        with read_session() as session:
            target = session.get(Draft, r.parent_id).target
        assert ("answer-disagrees-with-target" in r.flags) == (target != expected)


class ChoosingTeacher(SilentTeacher):
    """Silent rationales; ranks options by a fixed preference (the last option is likeliest)."""

    def __init__(self) -> None:
        super().__init__()
        self.choices: list[tuple[str, list[str], str]] = []

    def choose(self, prompt: str, options: list[str], closing: str = "") -> list[float]:
        self.choices.append((prompt, list(options), closing))
        return [-float(len(options) - i) for i in range(len(options))]


def test_forced_answers_are_the_teachers_likeliest_option(db_path: Path, tmp_path: Path) -> None:
    round_id = _make_round(tmp_path, n_rationales=2)
    ctx = LocalContext()
    draft_questions(ctx, round_id, FakeTeacher())
    teacher = ChoosingTeacher()
    draft_rationales(ctx, round_id, teacher)
    rationales = _drafts(kind="rationale")
    assert rationales and not teacher.forcing  # no greedy pass: every question has options
    assert len(teacher.choices) == len(rationales)
    for prompt, options, closing in teacher.choices:
        assert prompt.endswith(prompts.ANSWER_CUE) and closing == prompts.ANSWER_CLOSE
        assert options == ["plausible", "implausible"]
    for r in rationales:
        assert r.answer == "implausible" and {"forced-answer", "answer-chosen"} <= set(r.flags)
        assert r.rationale.endswith("So the answer is <ans>implausible</ans>")


def test_tailored_rationales_use_the_erased_prompt_byte_for_byte(
    db_path: Path, tmp_path: Path
) -> None:
    round_id = _make_round(tmp_path, n_tailored=3)
    ctx = LocalContext()
    draft_questions(ctx, round_id, FakeTeacher(), phase="tailored")
    draft_rationales(ctx, round_id, FakeTeacher(), phase="tailored")
    rationales = _drafts(kind="rationale", phase="tailored")
    assert rationales and all(r.strategy == "erased" for r in rationales)
    assert all(r.sampling["temperature"] == 0.0 for r in rationales)
    with read_session() as session:
        rnd = session.get(Round, round_id)
        study = session.get(Study, rnd.study_id)
        for r in rationales:
            question = session.get(Draft, r.parent_id)
            assert question.phase == "tailored"
            erased = prompts.plain_prompt_for(study, rnd, question, PlainTokenizer())
            assert erased == r.prompt
            assert "Let's think step by step." in erased and "expert" not in erased
    assert not _drafts(phase="draft")


def test_question_completion_continues_the_stored_prompt(db_path: Path, tmp_path: Path) -> None:
    round_id = _make_round(tmp_path)
    draft_questions(LocalContext(), round_id, FakeTeacher())
    q = _drafts(kind="question", status="ok")[0]
    completion = prompts.question_completion_for(q)
    assert completion == (
        f"{q.input}\nOptions: plausible | implausible</input><target>{q.target}</target></Question_4>"
    )
    parsed, _ = parse_questions(completion, q.prefill)
    assert parsed[0].target == q.target


# ---------------------------------------------------------------- scaffolded drafting


class FieldTeacher(FakeTeacher):
    """Answers each scaffold field by its name (the key's last part); records every pass."""

    def __init__(self, batch_size: int = 8, fields: dict[str, str] | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.passes: list[list[GenRequest]] = []
        self.fields = {
            "input": " The most reasonable step of 'Bake bread' is\n",
            "options": " Knead the dough | Paint the fence | Wash the car",
            "target": "Knead the dough",
            **(fields or {}),
        }

    def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
        self.passes.append(list(requests))
        for request in requests:
            call, name = request.key.rsplit(":", 1)
            text = self.fields[name]
            yield request, text.replace("Bake bread", _words(random.Random(call), 3))


def _steps_task(tmp: Path) -> Path:
    """A task whose every question has its own options (like BIG-bench step_inference)."""
    rows = [
        {
            "input": f"The most reasonable step of '{_words(random.Random(i), 2)}' is",
            "target": f"right {i}",
            "choices": [f"wrong {i}", f"right {i}", f"other {i}"],
        }
        for i in range(20)
    ]
    return task_file(tmp, rows, "steps.jsonl").path


def test_scaffold_writes_the_format_and_the_teacher_fills_each_field(
    db_path: Path, tmp_path: Path
) -> None:
    round_id = _make_round(tmp_path, task=_steps_task(tmp_path), scaffold=True, n_questions=3)
    teacher = FieldTeacher()
    result = draft_questions(LocalContext(), round_id, teacher)
    # One question per call, three passes over the wave: input, options, target.
    assert [[r.key for r in p] for p in teacher.passes] == [
        [f"q:{c}:{name}" for c in range(3)] for name in ("input", "options", "target")
    ]
    first, options, target = (p[0] for p in teacher.passes)
    assert first.prompt.endswith("Assistant:" + PREFILL) and "Please write 1 more question " in (
        first.prompt
    )
    assert first.stop == prompts.INPUT_STOPS_BEFORE_OPTIONS
    assert (
        options.prompt
        == first.prompt
        + f"The most reasonable step of '{_words(random.Random('q:0'), 3)}' is"
        + ("\nOptions:")
    )
    assert target.prompt.endswith("Paint the fence | Wash the car</input><target>")
    assert all(r.seed == first.seed for r in (options, target))  # the call's own seed
    assert result["total_ok"] == 3 and result["calls"] == 3
    rows = _drafts(kind="question")
    assert [r.status for r in rows] == ["ok"] * 3
    q = rows[0]
    assert q.input == f"The most reasonable step of '{_words(random.Random('q:0'), 3)}' is"
    assert q.choices == ["Knead the dough", "Paint the fence", "Wash the car"]
    assert q.target == "Knead the dough" and q.sampling["scaffold"] is True
    assert q.raw_output == (
        f"{q.input}\nOptions: Knead the dough | Paint the fence | Wash the car</input>"
        "<target>Knead the dough</target></Question_4>"
    )
    # DPO trains the teacher to write, unaided, exactly the block the scaffold assembled.
    assert q.prefill + prompts.question_completion_for(q) == PREFILL + q.raw_output


def test_scaffold_writes_a_shared_label_set_itself(db_path: Path, tmp_path: Path) -> None:
    round_id = _make_round(tmp_path, scaffold=True, n_questions=2)
    teacher = FieldTeacher(fields={"input": "Bake bread scored a goal", "target": " Plausible"})
    draft_questions(LocalContext(), round_id, teacher)
    assert [p[0].key.rsplit(":", 1)[1] for p in teacher.passes] == ["input", "target"]
    words = _words(random.Random("q:0"), 3)
    assert teacher.passes[1][0].prompt.endswith(
        f"{words} scored a goal\nOptions: plausible | implausible</input><target>"
    )
    rows = _drafts(kind="question")
    assert [(r.status, r.target) for r in rows] == [("ok", "plausible")] * 2
    assert rows[0].input == f"{words} scored a goal"


def test_scaffold_fields_end_where_the_teacher_runs_on(db_path: Path, tmp_path: Path) -> None:
    round_id = _make_round(tmp_path, task=_steps_task(tmp_path), scaffold=True, n_questions=1)
    teacher = FieldTeacher()
    draft_questions(LocalContext(), round_id, teacher)
    stops = {p[0].key.rsplit(":", 1)[1]: p[0].stop for p in teacher.passes}
    assert "Options:" in stops["input"] and "</input>" in stops["input"]
    assert "\n" in stops["options"] and "\n" in stops["target"] and "</target>" in stops["target"]
    assert all(prompts.TURN_STOP in s for s in stops.values())


def test_scaffold_stores_each_chunk_before_the_next_starts(db_path: Path, tmp_path: Path) -> None:
    round_id = _make_round(tmp_path, task=_steps_task(tmp_path), scaffold=True, n_questions=5)

    class Crashing(FieldTeacher):
        def generate(self, requests: Sequence[GenRequest]) -> Iterator[tuple[GenRequest, str]]:
            if len(self.passes) == 3:  # the second chunk's first pass
                raise RuntimeError("teacher crashed")
            yield from super().generate(requests)

    with pytest.raises(RuntimeError, match="teacher crashed"):
        draft_questions(LocalContext(), round_id, Crashing(batch_size=2))
    assert {d.idem_key for d in _drafts()} == {"q:0:0", "q:1:0"}
    resumed = FieldTeacher(batch_size=2)
    draft_questions(LocalContext(), round_id, resumed)
    assert [r.key for r in resumed.passes[0]] == ["q:2:input", "q:3:input"]
    assert len(_drafts(kind="question", status="ok")) == 5


# ---------------------------------------------------------------- the real teacher (slow)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The bundled teacher behind the transformers backend, loaded once for the module."""
    import os

    import torch

    from teachlab.backends.hf import HFBackend
    from teachlab.models import load
    from teachlab.settings import Settings

    torch.set_num_threads(2)
    root = Path(__file__).resolve().parents[1] / "storage"
    settings = Settings(
        storage=tmp_path_factory.mktemp("teacher"),
        model_cache=Path(os.environ.get("TEACHLAB_TEST_MODEL_CACHE", root / "models")),
        offline=True,
    )
    loaded = load("bundled:gemma-3-270m", settings=settings)
    return HFBackend(loaded.ref, loaded=loaded, batch_size=4)


@pytest.mark.slow
def test_real_teacher_output_parses_without_errors_and_prefill_helps(teacher: object) -> None:
    seeds = [
        {"input": "Jamal Murray was perfect from the line", "target": "plausible"},
        {"input": "Sam Darnold passed the puck", "target": "implausible"},
        {"input": "Mookie Betts hit a home run", "target": "plausible"},
    ]
    seeds = [
        {**s, "input": prompts.question_text(s["input"], ["plausible", "implausible"])}
        for s in seeds
    ]
    messages = prompts.question_messages("sports_understanding", SPORTS.description, seeds, 3)
    parsed = {}
    for prefill in ("", PREFILL):
        prompt = prompts.render_chat(teacher.tokenizer, messages, prefill)  # type: ignore[attr-defined]
        requests = [
            GenRequest(
                f"q:{i}",
                prompt,
                0.7,
                64,
                derive_seed(0, 0, "draft", f"q:{i}"),
                prompts.question_stops(3, 3),
            )
            for i in range(4)
        ]
        outputs = [text for _, text in teacher.generate(requests)]  # type: ignore[attr-defined]
        found = [parse_questions(text, prefill) for text in outputs]
        assert all(reasons or questions for questions, reasons in found)
        parsed[prefill] = sum(len(questions) for questions, _ in found)
    assert parsed[PREFILL] >= parsed[""] and parsed[PREFILL] > 0


@pytest.mark.slow
def test_real_teacher_drafts_are_reproducible(teacher: object, tmp_path: Path) -> None:
    # Two studies in one database: the second's questions have other row ids.
    texts = []
    with use_storage(tmp_path / "storage"):
        for name in ("first", "second"):
            round_id = _make_round(
                tmp_path,
                name=name,
                n_questions=2,
                questions_per_call=2,
                n_rationales=1,
                max_new_tokens=32,
            )
            ctx = LocalContext()
            draft_questions(ctx, round_id, FakeTeacher())
            draft_rationales(ctx, round_id, teacher)  # type: ignore[arg-type]
            rows = _drafts(round_id=round_id, kind="rationale")
            assert len(rows) == 2 and all(
                r.sampling["backend"] == "transformers:bundled:gemma-3-270m" for r in rows
            )
            keys = {q.id: q.idem_key for q in _drafts(round_id=round_id, kind="question")}
            texts.append(sorted((keys[r.parent_id], r.raw_output) for r in rows))  # type: ignore[index]
    assert texts[0] == texts[1]
