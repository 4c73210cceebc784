"""Student scoring: answer extraction and outcome rules by hand, prompt ids segment by segment,
and (slow, the bundled student) the fast paths against the straightforward reference."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_MODELS

from teachlab.errors import ConfigError, DataError
from teachlab.score import (
    Demo,
    Probe,
    ProbeOutcome,
    PromptBuilder,
    Scorer,
    accuracy,
    answers_match,
    extract_answer,
    mean_margin,
    question_score,
    render,
)
from teachlab.score.scorer import _outcome

STUDENT = "bundled:smollm2-135m-instruct"
YES_NO = ("plausible", "implausible")

# ---- answer extraction ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "choices", "expected"),
    [
        # the <ans> tag wins over everything else, case-insensitively
        (" It is odd. <ANS>Implausible</ans> plausible", YES_NO, "implausible"),
        # "plausible" is not found inside "implausible"
        (" So the answer is implausible.", YES_NO, "implausible"),
        # the LAST "answer is" counts: chains of thought end with it
        (" The answer is hard to see. So the answer is plausible.", YES_NO, "plausible"),
        # no tag, no "answer is": the first non-empty line
        ("\n\nPlausible, since he plays football.\nImplausible?", YES_NO, "plausible"),
        # letter options
        (" Therefore the answer is (B).", ("(A)", "(B)", "(C)"), "(B)"),
        # two choices mentioned at the same place: the longer one
        (" the answer is 05/01/2021", ("05/01", "05/01/2021"), "05/01/2021"),
        # the first mentioned choice in the span, not the first in the list
        (" <ans>red, then blue</ans>", ("blue", "red"), "red"),
        # an unclosed tag runs to the end of its line
        (" <ans>blue\nred", ("red", "blue"), "blue"),
        # nothing mentioned: the choice whose words the span covers best
        (" The answer is: sky-coloured, blue-ish", ("dark blue", "bright red"), "dark blue"),
        # no word in common with any choice: no answer
        (" I cannot tell.", YES_NO, ""),
        ("", YES_NO, ""),
        # the continuation ends where the student starts the next question
        (" Hmm.\nQuestion: is it plausible?\nAnswer: <ans>plausible</ans>", YES_NO, ""),
        (" Hmm.\n\n Question: is it?\nAnswer: the answer is plausible", YES_NO, ""),
        # free-form: tag content, the rest after "answer is", or the first line, trimmed
        (" Count them. <ans> 42 </ans>", (), "42"),
        (" 3 + 4 = 7, so the answer is 7.", (), "7"),
        ("  Paris.\nIt is in France.", (), "Paris"),
    ],
)
def test_extract_answer(text: str, choices: tuple[str, ...], expected: str) -> None:
    assert extract_answer(text, choices) == expected


@pytest.mark.parametrize(
    ("predicted", "target", "same"),
    [
        ("Paris.", "paris", True),
        ("1,024", "1024", True),
        ("7.0", "7", True),
        ("7", "8", False),
        ("new  york", "New York", True),
        ("", "", False),  # no answer is never right
    ],
)
def test_answers_match(predicted: str, target: str, same: bool) -> None:
    assert answers_match(predicted, target) is same


# ---- outcome rules and aggregates -------------------------------------------------------


def test_outcome_picks_the_highest_choice_and_measures_the_margin() -> None:
    probe = Probe(7, "q", "b", ("a", "b", "c"))
    right = _outcome(probe, [-3.0, -1.0, -2.5])
    assert (right.probe_index, right.predicted, right.correct) == (7, "b", True)
    assert right.gold_logprob == -1.0 and right.margin == pytest.approx(1.5)
    wrong = _outcome(probe, [-0.5, -1.0, -2.5])
    assert (wrong.predicted, wrong.correct, wrong.margin) == ("a", False, pytest.approx(-0.5))
    tie = _outcome(probe, [-1.0, -1.0, -1.0])  # a tie goes to the first choice, and is wrong
    assert (tie.predicted, tie.correct, tie.margin) == ("a", False, 0.0)


def test_aggregates() -> None:
    outs = [
        ProbeOutcome(0, "a", True, -1.0, 2.0),
        ProbeOutcome(1, "b", False, -2.0, -1.0),
        ProbeOutcome(2, "c", True, None, None),
    ]
    assert accuracy(outs) == pytest.approx(2 / 3)
    assert mean_margin(outs) == pytest.approx(0.5)
    assert mean_margin(outs[2:]) is None
    assert question_score([0.25, 0.75]) == 0.5 and question_score([]) is None
    with pytest.raises(DataError, match="empty"):
        accuracy([])


def test_scorer_rejects_bad_input_before_touching_the_model() -> None:
    with pytest.raises(DataError, match="not one of its choices"):
        Scorer(None, None, "d", [Probe(3, "q", "maybe", YES_NO)])
    with pytest.raises(ConfigError, match="scoring mode"):
        Scorer(None, None, "d", [Probe(0, "q", "plausible", YES_NO)], mode="beam")
    with pytest.raises(DataError, match="probe set is empty"):
        Scorer(None, None, "d", [])


def test_plan_batches_buckets_by_length_within_the_memory_budget() -> None:
    from teachlab.decoding import plan_batches

    lengths = [5, 50, 7, 48, 6, 49, 4]
    assert plan_batches(lengths, 3, budget_bytes=10**9, kv_bytes=1) == [[1, 5, 3], [2, 4, 0], [6]]
    # 100 context tokens at 1 byte each: 320 bytes fit two rows of ~150 tokens, three of 106.
    assert plan_batches(lengths, 3, context=100, budget_bytes=320, kv_bytes=1) == [
        [1, 5],
        [3, 2],
        [4, 0, 6],
    ]
    # A row that alone exceeds the budget still runs, on its own.
    assert plan_batches([500], 3, context=100, budget_bytes=320, kv_bytes=1) == [[0]]


def test_candidates_are_packed_as_a_prefix_tree() -> None:
    from teachlab.score.loglik import _pack

    # question [1, 2] after 10 prefix tokens; candidates share their first tokens
    row = _pack([1, 2], [[5, 6, 7], [5, 6, 8], [9], [5]], context=10)
    assert row.ids == [1, 2, 5, 6]  # the shared tokens once; last tokens are never inputs
    assert row.positions == [10, 11, 12, 13]
    assert row.scored == [
        (1, 5, 0), (2, 6, 0), (3, 7, 0),
        (1, 5, 1), (2, 6, 1), (3, 8, 1),
        (1, 9, 2),
        (1, 5, 3),
    ]  # fmt: skip
    assert row.visible.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]
    # two branches: a token never sees the other branch, and both sit right after the question
    row = _pack([1], [[5, 6], [7, 8]], context=0)
    assert row.ids == [1, 5, 7] and row.positions == [0, 1, 1]
    assert row.visible.tolist() == [[True, False, False], [True, True, False], [True, False, True]]


# ---- prompt and token ids ---------------------------------------------------------------


class CharTokenizer:
    """One id per character, with an optional BOS: enough to check segment-wise ids."""

    def __init__(self, bos: int | None = None) -> None:
        self.bos = bos

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) for c in text]
        return {"input_ids": ([self.bos] if add_special_tokens and self.bos else []) + ids}


DEMO = Demo("Is 3 odd?", "yes", "3 = 2 + 1. <ans>yes</ans>")
PROBE = Probe(0, "Is 4 odd?", "no", ("yes", "no"))


def test_prompt_text_follows_the_spec() -> None:
    text = render("Answer questions.", [DEMO, Demo("Is 5 odd?", "yes")], PROBE, "generate")
    assert text == (
        "Answer questions.\n\n"
        "Question: Is 3 odd?\nAnswer: Let's think step by step. 3 = 2 + 1. <ans>yes</ans>\n\n"
        "Question: Is 5 odd?\nAnswer: yes\n\n"
        "Question: Is 4 odd?\nAnswer: Let's think step by step."
    )
    assert render("", [], PROBE, "loglik", "no") == "Question: Is 4 odd?\nAnswer: no"


@pytest.mark.parametrize("bos", [None, 1])
def test_ids_are_built_segment_by_segment(bos: int | None) -> None:
    tok = CharTokenizer(bos)
    builder = PromptBuilder(tok, "Desc", "loglik")
    ids = builder.prompt_ids([DEMO], PROBE, "no")
    segments = ["Desc\n\n", render("", [DEMO], PROBE, "loglik").split("Question: Is 4")[0]]
    expected = ([bos] if bos else []) + [ord(c) for c in "".join(segments)]
    expected += [ord(c) for c in "Question: Is 4 odd?\nAnswer:"] + [ord(c) for c in " no"]
    assert ids == expected
    assert builder.candidate_ids(PROBE) == [[ord(c) for c in " yes"], [ord(c) for c in " no"]]
    # a free-form item's only candidate is its target
    assert builder.candidate_ids(Probe(1, "2+2?", "4")) == [[ord(" "), ord("4")]]
    with pytest.raises(ConfigError):
        PromptBuilder(tok, "Desc", "sample")


# ---- the bundled student: fast paths against the reference ------------------------------

WORDS = (
    "the striker scored a goal in the final minute while the crowd cheered loudly and a "
    "goalkeeper caught the ball before halftime because the coach said so yesterday after "
    "the quarterback threw a touchdown pass near the line of scrimmage again"
)
WORD_LIST = WORDS.split()
# Choices of very different token lengths (1 to 11 tokens).
POOL = ("red", "dark blue", "05/01/2021", "a pale shade of green", "no", "forty-two", "Tuesday")


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORD_LIST) for _ in range(rng.randint(low, high))).capitalize() + "."


def _binary_probes(n: int = 16) -> list[Probe]:
    rng = random.Random(1)
    return [
        Probe(i, f"Is this plausible? {_sentence(rng, 2, 12)}", rng.choice(YES_NO), YES_NO)
        for i in range(n)
    ]


def _six_way_probes(n: int = 16) -> list[Probe]:
    rng = random.Random(2)
    probes = []
    for i in range(n):
        choices = tuple(rng.sample(POOL, rng.choice((5, 6))))
        probes.append(
            Probe(100 + i, f"Pick one. {_sentence(rng, 1, 8)}", rng.choice(choices), choices)
        )
    return probes


def _draft(seed: int, words: int | None) -> list[Demo]:
    """A random demonstration: no rationale when ``words`` is None."""
    rng = random.Random(seed)
    question = f"Is this sentence plausible? {_sentence(rng, 4, 10)}"
    if words is None:
        return [Demo(question, "plausible")]
    rationale = " ".join(rng.choice(WORD_LIST) for _ in range(words)) + " <ans>plausible</ans>"
    return [Demo(question, "plausible", rationale)]


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import torch

    from teachlab import models
    from teachlab.settings import Settings

    torch.set_num_threads(2)
    settings = Settings(
        storage=Path(tmp_path_factory.mktemp("score")), model_cache=SHARED_MODELS, offline=True
    )
    yield models.load(STUDENT, settings=settings)


def _assert_same(fast: list[ProbeOutcome], ref: list[ProbeOutcome]) -> None:
    assert [o.probe_index for o in fast] == [o.probe_index for o in ref]
    for a, b in zip(fast, ref, strict=True):
        assert a.gold_logprob == pytest.approx(b.gold_logprob, abs=1e-4)
        if b.margin is not None:
            assert a.margin == pytest.approx(b.margin, abs=2e-4)
        assert (a.predicted, a.correct) == (b.predicted, b.correct)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "draft"),
    [
        ("binary", []),  # the zero-shot baseline
        ("binary", _draft(3, None)),  # a demonstration without rationale
        ("six", _draft(5, 15)),
    ],
)
def test_loglik_fast_paths_match_the_reference(student: Any, shape: str, draft: list[Demo]) -> None:
    probes = _binary_probes() if shape == "binary" else _six_way_probes()
    make = lambda **kw: Scorer(student.model, student.tokenizer, "Judge sentences.", probes, **kw)  # noqa: E731
    ref = make().score_reference(draft)
    # The packed (tree-mask) path, and the two-stage path with a budget so small that batches
    # and continuation chunks are cut into several pieces.
    packed = make(batch_size=5, tree_mask=True).score(draft)
    staged = make(batch_size=16, tree_mask=False, cache_budget_mb=40).score(draft)
    _assert_same(packed, ref)
    _assert_same(staged, ref)
    assert all(o.margin is not None for o in ref)


@pytest.mark.slow
def test_zero_shot_without_any_prefix_and_free_form_items(student: Any) -> None:
    """No description and no demonstration: nothing is cached, every row starts at position 0."""
    probes = [
        *_six_way_probes(3),
        Probe(9, "What is two plus two?", "4"),
        Probe(8, "Say hi.", "hi"),
    ]
    for tree in (True, False):
        scorer = Scorer(student.model, student.tokenizer, "", probes, batch_size=2, tree_mask=tree)
        assert scorer.builder.prefix_ids([]) == []
        _assert_same(scorer.score(), scorer.score_reference())
    targets = {p.index: p.target for p in probes}
    free = scorer.score()[3:]
    assert all(o.margin is None and o.gold_logprob is not None for o in free)
    for outcome in free:  # the prediction is the target, or a greedy answer that departs from it
        assert outcome.correct == (outcome.predicted == targets[outcome.probe_index])
        assert outcome.gold_logprob < 0


@pytest.mark.slow
def test_fast_path_sees_the_reference_ids(student: Any) -> None:
    probes = [*_six_way_probes(4), Probe(50, "What is two plus two?", "4")]
    draft = [*_draft(6, 20), Demo("Is snow cold?", "plausible")]
    scorer = Scorer(student.model, student.tokenizer, "Judge sentences.", probes)
    tok = student.tokenizer
    demo, shot = draft
    for pos, probe in enumerate(probes):
        for k, choice in enumerate(probe.choices or (probe.target,)):
            ids = scorer.prompt_ids(draft, probe, choice)
            assert scorer.fast_path_ids(draft, pos, k) == ids
            # ...and those ids are the prompt's segments, each tokenised on its own
            segments = [
                "Judge sentences.\n\n",
                f"Question: {demo.question}\nAnswer: Let's think step by step. {demo.rationale}\n\n",
                f"Question: {shot.question}\nAnswer: {shot.answer}\n\n",
                f"Question: {probe.input}\nAnswer:",
                f" {choice}",
            ]
            assert ids == [
                i for s in segments for i in tok(s, add_special_tokens=False)["input_ids"]
            ]
            assert tok.decode(ids) == "".join(segments)


@pytest.mark.slow
def test_generate_fast_path_matches_plain_generate(student: Any) -> None:
    probes = [*_six_way_probes(3), Probe(60, "What is two plus two?", "4")]
    for draft in ([], _draft(7, 25)):
        scorer = Scorer(
            student.model, student.tokenizer, "Judge sentences.", probes, mode="generate",
            batch_size=2, max_new_tokens=8,
        )  # fmt: skip
        fast, ref = scorer.score(draft), scorer.score_reference(draft)
        assert [o.output for o in fast] == [o.output for o in ref]
        assert [(o.predicted, o.correct) for o in fast] == [(o.predicted, o.correct) for o in ref]
        assert any(o.output.strip() for o in fast)
        assert all(o.gold_logprob is None and o.margin is None for o in fast)
        for outcome, probe in zip(fast, probes, strict=True):
            assert outcome.predicted == extract_answer(outcome.output, probe.choices)
            assert "Question:" not in outcome.output


@pytest.mark.slow
def test_caches_pass_under_the_keyword_the_model_takes(student: Any) -> None:
    """No deprecated keyword: a cache handed over under a name transformers is dropping."""
    import inspect
    import warnings

    from teachlab.decoding import encode_prefix, with_cache

    (keyword,) = with_cache(student.model, None)
    assert keyword in inspect.signature(type(student.model).forward).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        cache = encode_prefix(student.model, [1, 2, 3, 4])
    assert cache.get_seq_length() == 4
