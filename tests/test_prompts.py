"""Teacher prompts: strict templates, versions, the tagged seed format, and chat rendering."""

from __future__ import annotations

import pytest
from jinja2 import UndefinedError

from teachlab import prompts
from teachlab.errors import ConfigError

SEEDS = [
    {"input": "Messi scored a goal\nOptions: plausible | implausible", "target": "plausible"},
    {"input": "Brady hit a slam dunk\nOptions: plausible | implausible", "target": "implausible"},
    {"input": "Kane took a penalty\nOptions: plausible | implausible", "target": "plausible"},
]


def test_missing_field_raises_instead_of_rendering_empty() -> None:
    with pytest.raises(UndefinedError):
        prompts.QUESTION.render(task_name="sports", description="d", n_new=5, start=4)
    with pytest.raises(UndefinedError):
        prompts.QUESTION.render(
            task_name="sports", description="d", examples=[{"input": "x"}], n_new=5, start=2
        )
    with pytest.raises(UndefinedError):
        prompts.PLAIN.render()


def test_question_prompt_shows_tagged_seeds_and_asks_for_more_from_four() -> None:
    [message] = prompts.question_messages("sports_understanding", "Judge sentences.", SEEDS, 5)
    text = message["content"]
    assert message["role"] == "user"
    assert "Task: sports_understanding" in text and "Description: Judge sentences." in text
    assert (
        "<Question_2><input>Brady hit a slam dunk\nOptions: plausible | implausible</input>"
        "<target>implausible</target></Question_2>"
    ) in text
    assert "<Question_4>" not in text.split("numbered from")[0]
    assert "5 more questions with brainstorming" in text
    assert "numbered from <Question_4> to <Question_8>" in text
    assert prompts.question_prefill(3) == "<Question_4><input>"


def test_options_are_appended_only_when_the_input_lacks_them() -> None:
    assert prompts.question_text("Messi scored", ["plausible", "implausible"]) == (
        "Messi scored\nOptions: plausible | implausible"
    )
    bbh = "Which date? Options:\n(A) 01/02/2021\n(B) 12/31/2020"
    assert prompts.question_text(bbh, ["(A)", "(B)"]) == bbh
    assert prompts.question_text("free form", []) == "free form"
    text = prompts.question_text("Today is Monday.", ["01/01/2021", "12/31/2020"])
    assert prompts.split_options(text) == ("Today is Monday.", ("01/01/2021", "12/31/2020"))
    assert prompts.split_options("no options here") == ("no options here", ())


@pytest.mark.parametrize("strategy", ["expert", "rules", "plain", "eliminate"])
def test_each_strategy_has_its_own_system_prompt_and_the_ans_instruction(strategy: str) -> None:
    system, user = prompts.rationale_messages(
        strategy, "date_understanding", "Infer the date from context", "What day is it?"
    )
    assert system["role"] == "system" and user["role"] == "user"
    assert system["content"].startswith(("You are", "Infer the date from context."))
    assert user["content"].startswith("Question: What day is it?")
    assert "<ans></ans>" in user["content"]
    others = {s for s in prompts.STRATEGIES if s != strategy}
    assert all(
        prompts.strategy_system(o, "t", "d.") != prompts.strategy_system(strategy, "t", "d.")
        for o in others
    )


def test_strategy_wording() -> None:
    assert "expert" in prompts.strategy_system("expert", "navigate", "Follow steps.")
    assert "recall the rules" in prompts.strategy_system("rules", "navigate", "Follow steps.")
    assert prompts.strategy_system("plain", "navigate", "Follow steps") == "Follow steps."
    assert "eliminate the wrong ones" in prompts.strategy_system("eliminate", "n", "")
    with pytest.raises(ConfigError, match="Unknown reasoning strategy 'guess'"):
        prompts.strategy_system("guess", "t", "d")


def test_plain_prompt_has_no_system_prompt() -> None:
    [message] = prompts.plain_messages("What day is it?")
    assert message["role"] == "user"
    assert message["content"].startswith("Question: What day is it?")
    assert "Let's think step by step." in message["content"]


def test_render_chat_with_the_teachers_plain_template_ends_with_the_prefill() -> None:
    tok = prompts.load_tokenizer("bundled:gemma-3-270m")
    messages = prompts.question_messages("sports", "Judge.", SEEDS, 5)
    text = prompts.render_chat(tok, messages, "<Question_4><input>")
    assert text.startswith("User: You write new questions")
    assert text.endswith("\nAssistant:<Question_4><input>")
    # Rendering is a pure function of (template, messages, prefill): byte-identical again.
    assert prompts.render_chat(tok, messages, "<Question_4><input>") == text
    system = prompts.render_chat(tok, prompts.rationale_messages("plain", "t", "Judge.", "Q?"))
    assert system.startswith("Judge.\n\nUser: Question: Q?")


def test_render_chat_uses_the_models_own_chat_template() -> None:
    tok = prompts.load_tokenizer("bundled:smollm2-135m-instruct")
    text = prompts.render_chat(tok, prompts.plain_messages("Q?"), "")
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nQuestion: Q?" in text


class NoSystemTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt, tokenize):  # type: ignore[no-untyped-def]
        assert add_generation_prompt is True and tokenize is False
        if messages[0]["role"] == "system":
            raise ValueError("System role not supported")
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<model>"


def test_templates_without_a_system_role_get_it_folded_into_the_user_turn() -> None:
    messages = prompts.rationale_messages("rules", "t", "Judge.", "Q?")
    text = prompts.render_chat(NoSystemTokenizer(), messages, "P")
    assert text.startswith("<user>Judge. First recall") and text.endswith("<model>P")
    assert "Question: Q?" in text


def test_one_question_is_asked_for_in_the_singular() -> None:
    [message] = prompts.question_messages("sports_understanding", "Judge sentences.", SEEDS, 1)
    text = message["content"]
    assert text.endswith(
        "Please write 1 more question with brainstorming: a new situation, same kind of task, "
        f"with a correct target. Use exactly the same format, as <Question_{len(SEEDS) + 1}>."
    )
