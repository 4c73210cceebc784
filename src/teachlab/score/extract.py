"""Answer extraction from a student's generated continuation, and answer comparison.

Both scoring paths run the same functions here, so a fast and a reference continuation that
are equal always give the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from teachlab.score.prompt import STOP
from teachlab.tasks.model import parse_number

_ANS_TAG = re.compile(r"<ans>\s*(.*?)\s*(?:</ans>|\n|$)", re.IGNORECASE)
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.*)", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_EDGE_PUNCT = " \t\r\n.,;:!?\"'`*"


def truncate_output(text: str) -> str:
    """Cut a continuation where the student starts the next ``Question:`` of the pattern."""
    found = STOP.search(text)
    return text[: found.start()] if found else text


def answer_span(text: str) -> str:
    """Where the answer is: the first ``<ans>…</ans>`` (an unclosed tag runs to the end of its
    line), else the rest of the line after the LAST "answer is" (chains of thought end with
    "so the answer is X"), else the first non-empty line."""
    tag = _ANS_TAG.search(text)
    if tag:
        return tag.group(1)
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        return matches[-1].group(1)
    return next((line for line in text.splitlines() if line.strip()), "")


def _mention(span: str, choice: str) -> int | None:
    """Start of the first whole-word, case-insensitive mention of ``choice`` in ``span``."""
    needle = choice.strip()
    if not needle:
        return None
    # Lookarounds instead of \b so choices such as "(A)" work, and "plausible" is not found
    # inside "implausible".
    found = re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", span, re.IGNORECASE)
    return found.start() if found else None


def extract_answer(text: str, choices: Sequence[str] = ()) -> str:
    """The answer a continuation gives ("" when it gives none).

    Multiple choice: within the answer span (see ``answer_span``), the choice mentioned first
    (a longer choice wins a tie at the same place); if none is mentioned, the choice whose
    words the span covers best (share of the choice's words found, the earlier choice on a
    tie); if the span shares no word with any choice, "" (counted wrong). Free-form
    (no choices): the span, stripped of surrounding spaces and punctuation.
    """
    span = answer_span(truncate_output(text))
    if not choices:
        return span.strip(_EDGE_PUNCT)
    best: tuple[int, int, int] | None = None
    for i, choice in enumerate(choices):
        start = _mention(span, choice)
        if start is not None and (best is None or (start, -len(choice)) < best[:2]):
            best = (start, -len(choice), i)
    if best is not None:
        return choices[best[2]]
    span_words = {w.casefold() for w in _WORD.findall(span)}
    top_share, top = 0.0, ""
    for choice in choices:
        words = {w.casefold() for w in _WORD.findall(choice)}
        share = len(words & span_words) / len(words) if words else 0.0
        if share > top_share:
            top_share, top = share, choice
    return top


def normalize(text: str) -> str:
    return " ".join(text.strip(_EDGE_PUNCT).casefold().split())


def answers_match(predicted: str, target: str) -> bool:
    """Free-form comparison: equal after normalising case, spaces and edge punctuation; two
    numbers are compared as numbers ("1,024" equals "1024.0")."""
    a, b = normalize(predicted), normalize(target)
    if not a:
        return False
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        return na == nb
    return a == b
