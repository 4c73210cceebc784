"""The teacher's prompts: versioned Jinja2 templates for questions, rationales and the plain
prompt, and parsers for the formats they ask for (tagged questions, ``<ans>`` answers).

Templates render with ``StrictUndefined`` (a missing field raises instead of rendering empty), and
``render_chat`` is the one place a chat template is applied, so DPO prompts equal generation prompts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from jinja2 import Environment, StrictUndefined, Template

from teachlab.errors import ConfigError

_ENV = Environment(
    undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=False, autoescape=False
)


@dataclass(frozen=True)
class PromptTemplate:
    """A named template; bump ``version`` whenever ``source`` changes (drafts record it)."""

    name: str
    version: int
    source: str

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"

    @cached_property
    def _template(self) -> Template:
        return _ENV.from_string(self.source)

    def render(self, **fields: Any) -> str:
        """Render; a field the template reads but ``fields`` lacks raises ``UndefinedError``."""
        return self._template.render(**fields).strip()


QUESTION = PromptTemplate(
    "question",
    2,
    """You write new questions for a task.

Task: {{ task_name }}
Description: {{ description }}

Here are {{ examples | length }} example questions, each with its input and its correct target:

{% for ex in examples -%}
<Question_{{ loop.index }}><input>{{ ex.input }}</input><target>{{ ex.target }}</target></Question_{{ loop.index }}>
{% endfor %}
{% if n_new == 1 -%}
Please write 1 more question with brainstorming: a new situation, same kind of task, with a \
correct target. Use exactly the same format, as <Question_{{ start }}>.
{%- else -%}
Please write {{ n_new }} more questions with brainstorming: new situations, same kind of task, \
each with a correct target. Use exactly the same format, numbered from <Question_{{ start }}> \
to <Question_{{ start + n_new - 1 }}>.
{%- endif %}""",
)

# One system prompt per reasoning strategy (ARTE step 2). Editing one means bumping RATIONALE.
STRATEGIES: dict[str, str] = {
    "expert": "You are a world-class expert in {{ task_name }}. {{ description }} "
    "Answer the question the way an expert would, explaining your reasoning.",
    "rules": "{{ description }} First recall the rules and background knowledge that this "
    "question depends on, then apply them step by step to work out the answer.",
    "plain": "{{ description }}",
    "eliminate": "{{ description }} Read every option carefully, eliminate the wrong ones one "
    "by one with a reason for each, and choose the option that remains.",
}

RATIONALE = PromptTemplate(
    "rationale",
    1,
    """Question: {{ question }}

Reason step by step, then give the final answer inside <ans></ans>.""",
)

# The "erased" prompt (ARTE step 5, rationale pairs; step 7, tailored rationales): no strategy
# system prompt. The answer-format sentence stays, because tailored rationales must still end in
# an extractable answer; it names no strategy, so erasure is kept.
PLAIN = PromptTemplate(
    "plain",
    1,
    """Question: {{ question }}

Let's think step by step. Put the final answer inside <ans></ans>.""",
)

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (QUESTION, RATIONALE, PLAIN)}
TEMPLATE_VERSIONS: dict[str, str] = {name: t.tag for name, t in TEMPLATES.items()}

# Where a base model's fake next turn starts under the plain "User:/Assistant:" template; chat
# models end their turn with EOS instead, so stopping here is harmless for them.
TURN_STOP = "\nUser:"
# Answer forcing: a rationale that ran out without an answer gets this cue and a few greedy
# tokens more, so every scored demonstration ends in the teacher's own answer.
ANSWER_CUE = "\nSo the answer is <ans>"
ANSWER_CLOSE = "</ans>"
FORCED_ANSWER_TOKENS = 16
# Rationales are not prefilled: no prefill we tried made the tiny teacher use <ans> more often,
# and a prefilled opening makes every rationale start alike.
RATIONALE_PREFILL = ""

OPTIONS_PREFIX = "Options: "
OPTIONS_SEP = " | "
_OPTIONS_LINE = re.compile(r"(?:^|\n)[ \t]*Options:[ \t]*(?P<opts>[^\n]*)[ \t]*$", re.IGNORECASE)


def choices_in_text(text: str, choices: Sequence[str]) -> bool:
    """True when every choice already appears in ``text`` (case-insensitive)."""
    lowered = text.lower()
    return all(c.lower() in lowered for c in choices)


def question_text(input_text: str, choices: Sequence[str] = ()) -> str:
    """The question as the teacher sees it: the input, plus an Options line if not in it."""
    if choices and not choices_in_text(input_text, choices):
        return f"{input_text.rstrip()}\n{OPTIONS_PREFIX}{OPTIONS_SEP.join(choices)}"
    return input_text


def split_options(text: str) -> tuple[str, tuple[str, ...]]:
    """Undo ``question_text``: strip a trailing ``Options: a | b`` line, return the options."""
    match = _OPTIONS_LINE.search(text.rstrip())
    if not match:
        return text, ()
    options = tuple(o.strip() for o in match.group("opts").split("|") if o.strip())
    return text[: match.start()].rstrip(), options


def question_messages(
    task_name: str,
    description: str,
    examples: Sequence[Mapping[str, Any]],
    n_new: int,
) -> list[dict[str, str]]:
    """Chat messages asking for ``n_new`` more questions after the seed ``examples``.

    Each example is a mapping with ``input`` (options already included, see
    ``question_text``) and ``target``.
    """
    content = QUESTION.render(
        task_name=task_name,
        description=description,
        examples=list(examples),
        n_new=n_new,
        start=len(examples) + 1,
    )
    return [{"role": "user", "content": content}]


def question_prefill(n_seed: int) -> str:
    """The start of the expected answer: the tiny teacher parses far better with it."""
    return f"<Question_{n_seed + 1}><input>"


def question_stops(n_seed: int, n_new: int) -> tuple[str, ...]:
    """Stop after the last block asked for, or when the model starts a fake user turn."""
    return (f"</Question_{n_seed + n_new}>", TURN_STOP)


# Scaffolded drafting (one question per call, field by field): what TeachLab writes between the
# teacher's fields, and where each field ends. A field also ends where the teacher starts a tag
# of its own or a fake next turn, so one field never swallows the next.
# The cue ends before the space: a prompt ending in a space token throws tiny models off (they
# then number the options); the space the teacher writes itself is normalised away.
SCAFFOLD_OPTIONS = f"\n{OPTIONS_PREFIX.rstrip()}"
SCAFFOLD_TARGET = "</input><target>"
_FIELD_STOPS = ("<target>", "</Question", "<Question", TURN_STOP)
INPUT_STOPS = ("</input>", *_FIELD_STOPS)
INPUT_STOPS_BEFORE_OPTIONS = (*INPUT_STOPS, "Options:")
OPTIONS_STOPS = ("</input>", "\n", "</", *_FIELD_STOPS)
TARGET_STOPS = ("</target>", "\n", "<", TURN_STOP)
OPTIONS_TOKENS = 96  # four or five options of a few words each
TARGET_TOKENS = 48


def question_block(index: int, input_text: str, target: str) -> str:
    return (
        f"<Question_{index}><input>{input_text}</input><target>{target}</target></Question_{index}>"
    )


def question_completion(input_text: str, target: str, n_seed: int, prefill: str) -> str:
    """A single question written as the completion of the question prompt (for DPO pairs).

    The stored prompt ends with ``prefill``; the completion is the rest of the first new block.
    """
    block = question_block(n_seed + 1, input_text, target)
    return block[len(prefill) :] if block.startswith(prefill) else block


def strategy_system(strategy: str, task_name: str, description: str) -> str:
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"Unknown reasoning strategy {strategy!r}; choose from {', '.join(STRATEGIES)}."
        )
    source = PromptTemplate(f"strategy:{strategy}", RATIONALE.version, STRATEGIES[strategy])
    # "date_understanding" reads better as "date understanding" in a persona sentence.
    name = re.sub(r"[_/]+", " ", task_name).strip()
    text = source.render(task_name=name, description=_sentence(description))
    return re.sub(r"[ \t]{2,}", " ", text)  # an empty description leaves a double space


def _sentence(text: str) -> str:
    """BIG-bench descriptions often lack a final full stop; strategies append sentences."""
    text = text.strip()
    return text if not text or text[-1] in ".!?:" else text + "."


def rationale_messages(
    strategy: str, task_name: str, description: str, question: str
) -> list[dict[str, str]]:
    """A strategy's system prompt, then the question and the ``<ans>`` instruction."""
    return [
        {"role": "system", "content": strategy_system(strategy, task_name, description)},
        {"role": "user", "content": RATIONALE.render(question=question)},
    ]


def plain_messages(question: str) -> list[dict[str, str]]:
    """The erased prompt: the question and "Let's think step by step", no system prompt."""
    return [{"role": "user", "content": PLAIN.render(question=question)}]


# ---------------------------------------------------------------- parsing the answers

QUESTION_START = re.compile(r"<\s*Question_(\d+)\s*>", re.IGNORECASE)
_END = re.compile(r"<\s*/\s*Question_\d+\s*>", re.IGNORECASE)
_INPUT = re.compile(r"<\s*input\s*>(.*?)<\s*/\s*input\s*>", re.IGNORECASE | re.DOTALL)
_TARGET_OPEN = re.compile(r"<\s*target\s*>", re.IGNORECASE)
_TARGET_CLOSE = re.compile(r"<\s*/\s*target\s*>", re.IGNORECASE)
_OUR_TAGS = re.compile(r"<\s*/?\s*(?:input|target|Question_\d+)\s*>", re.IGNORECASE)
_ANS = re.compile(r"<\s*ans\s*>(.*?)<\s*/\s*ans\s*>", re.IGNORECASE | re.DOTALL)
_NUMBERED = re.compile(r"numbered from <Question_(\d+)>")
_ANS_OPEN = re.compile(r"<\s*ans\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedQuestion:
    input: str
    target: str
    number: int = 0  # the k of <Question_k> as the teacher wrote it
    slot: int = 0  # position of the block in the output (idem_key part)


@dataclass(frozen=True)
class BlockResult:
    """One ``<Question_k>`` block: parsed, or the reason it was not."""

    slot: int
    number: int
    question: ParsedQuestion | None
    reason: str = ""


def parse_question_blocks(text: str, prefill: str = "") -> list[BlockResult]:
    """Every ``<Question_k>`` block of ``prefill + text``, parsed or with its rejection reason.

    Tolerated: whitespace and text between blocks, a missing ``</Question_k>``, a missing
    ``</target>`` when the block is closed or another block follows. A final block that the
    output ends in the middle of is rejected ("unclosed"). Never raises.
    """
    full = prefill + (text or "")
    starts = list(QUESTION_START.finditer(full))
    results: list[BlockResult] = []
    for slot, match in enumerate(starts):
        number = int(match.group(1))
        last = slot == len(starts) - 1
        segment = full[match.end() : starts[slot + 1].start() if not last else len(full)]
        end = _END.search(segment)
        closed = end is not None or not last
        if end:
            segment = segment[: end.start()]
        results.append(_parse_block(slot, number, segment, closed))
    return results


def _parse_block(slot: int, number: int, segment: str, closed: bool) -> BlockResult:
    def reject(reason: str) -> BlockResult:
        return BlockResult(slot, number, None, f"Question_{number}: {reason}")

    unclosed = "unclosed final block (the output ended inside it)"
    found = _INPUT.search(segment)
    if not found:
        return reject("no <input>…</input>" if closed else unclosed)
    rest = segment[found.end() :]
    opening = _TARGET_OPEN.search(rest)
    if not opening:
        return reject("no <target>…</target> after the input" if closed else unclosed)
    closing = _TARGET_CLOSE.search(rest, opening.end())
    if closing is None and not closed:
        return reject(unclosed)
    target = rest[opening.end() : closing.start() if closing else len(rest)].strip()
    input_text = found.group(1).strip()
    if not input_text:
        return reject("empty input")
    if not target:
        return reject("empty target")
    if _OUR_TAGS.search(input_text) or _OUR_TAGS.search(target):
        return reject("tags inside the input or target (blocks run into each other)")
    if "\n" in target:
        return reject("target spans several lines")
    return BlockResult(slot, number, ParsedQuestion(input_text, target, number, slot))


def parse_questions(text: str, prefill: str = "") -> tuple[list[ParsedQuestion], list[str]]:
    """The well-formed questions of a teacher output and the reasons for every rejected block."""
    blocks = parse_question_blocks(text, prefill)
    if not blocks:
        return [], ["no <Question_k> block in the output"]
    return (
        [b.question for b in blocks if b.question is not None],
        [b.reason for b in blocks if b.question is None],
    )


def parse_rationale(text: str) -> tuple[str, str | None, str]:
    """``(rationale, answer, reason)`` from a rationale output.

    The answer is the last ``<ans>…</ans>``; the rationale is the text up to and including that
    tag (what follows is usually the model starting a new turn). An ``<ans>`` that the output
    ends inside still yields its answer (reason "unclosed <ans>"). No answer: ``None`` and the
    reason; the rationale is then the whole text.
    """
    body = (text or "").strip()
    matches = list(_ANS.finditer(body))
    if matches:
        last = matches[-1]
        answer = last.group(1).strip()
        rationale = body[: last.end()].strip()
        return rationale, answer or None, "" if answer else "empty <ans></ans>"
    openings = list(_ANS_OPEN.finditer(body))
    if openings:
        tail = body[openings[-1].end() :].strip()
        answer = tail.splitlines()[0].strip() if tail else ""
        if answer:
            return body, answer, "unclosed <ans>"
    if not body:
        return "", None, "empty output"
    return body, None, "no <ans>…</ans> answer"


@lru_cache(maxsize=4)
def load_tokenizer(model_ref: str) -> Any:
    """The tokenizer of a model reference, with the plain chat template where it has none."""
    from transformers import AutoTokenizer

    from teachlab.models import PLAIN_CHAT_TEMPLATE, fetch

    tokenizer = AutoTokenizer.from_pretrained(str(fetch(model_ref)))
    if not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def plain_prompt_for(study: Any, rnd: Any, question: Any, tokenizer: Any = None) -> str:
    """The erased prompt of a question draft, byte for byte as tailored rationales get it.

    Rationale-level DPO pairs use it as their prompt ("prompt erasure", ARTE step 5).
    """
    from teachlab.config import StudyConfig

    config = StudyConfig.from_dict(study.config)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(rnd.teacher)
    text = question_text(question.input or "", question.choices or ())
    return render_chat(tokenizer, plain_messages(text), RATIONALE_PREFILL if config.prefill else "")


def question_completion_for(question: Any) -> str:
    """A stored question draft as the completion of its stored prompt (DPO chosen/rejected).

    The prompt ends with the prefill (``<Question_4><input>``); the completion is the rest of
    one tagged block, the input shown as seeds are (with its ``Options:`` line).
    """
    found = QUESTION_START.search(question.prefill or "") or _NUMBERED.search(question.prompt or "")
    n_seed = int(found.group(1)) - 1 if found else 3
    text = question_text(question.input or "", question.choices or ())
    return question_completion(text, question.target or "", n_seed, question.prefill or "")


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]], prefill: str = "") -> str:
    """The exact text the teacher is given: its chat template, the generation cue, the prefill.

    This string is stored as the draft's prompt and reused verbatim as the DPO prompt. Models
    whose template rejects a system role get the system text folded into the first user turn.
    """
    msgs = [dict(m) for m in messages]
    try:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja raises TemplateError for "system role not supported"
        if not msgs or msgs[0]["role"] != "system" or len(msgs) < 2:
            raise
        system = msgs.pop(0)["content"]
        msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
        try:
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception:
            raise exc from None
    return text + prefill


def prompt_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a stored prompt, adding BOS only when the chat template did not.

    Base-model templates (gemma's plain one) emit no BOS and the model needs one; templates
    that start with BOS must not get a second. Trainers should tokenize prompts the same way.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and prompt.startswith(bos))
    return list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
