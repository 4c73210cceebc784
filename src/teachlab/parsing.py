"""Reading untrusted text: JSON with bounded nesting, and no NUL bytes.

Python's ``json`` recurses per level of nesting, so a file of 100,000 ``[`` raises a
RecursionError (a traceback, not a message); a quick scan refuses it first. NUL bytes have no
place in task text and break SQLite's C strings and the terminal, so they are refused too. So is
what ``json`` accepts but cannot be stored or read one way: a NUL written as the escape
``\\u0000``, a key given twice (readers disagree on which one counts), a lone UTF-16 surrogate
escape (``\\ud800``: not text, it cannot be written as UTF-8) and a number too long for Python
to convert.
"""

from __future__ import annotations

import json
import re
from typing import Any

from teachlab.errors import DataError

MAX_DEPTH = 32  # task rows and exports nest 3–4 levels; anything near this is not data


def nesting_depth(text: str) -> int:
    """The deepest nesting of JSON arrays and objects in ``text`` (brackets in strings aside)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def check_text(text: str, where: str) -> str:
    """``text`` unchanged, or a DataError naming ``where`` when it is not text or holds a NUL
    byte."""
    if not isinstance(text, str):
        raise DataError(f"{where} must be text, not {type(text).__name__} {text!r:.60}.")
    if "\x00" in text:
        raise DataError(
            f"{where} contains a NUL byte (\\x00) at character {text.index(chr(0)) + 1}; "
            "text data cannot hold one. Remove it and try again."
        )
    return text


def loads(text: str, where: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` of untrusted text, refusing NUL bytes and nesting over ``max_depth`` with
    a DataError naming ``where`` (a line of a file, say); JSONDecodeError as json raises it."""
    check_text(text, where)
    depth = nesting_depth(text)
    if depth > max_depth:
        raise DataError(
            f"{where} nests {depth} levels deep (at most {max_depth} are read); this is not "
            "task data — flatten it and try again."
        )
    try:
        value = json.loads(text, object_pairs_hook=lambda pairs: _unique(pairs, where))
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # json reads digits into an int; Python caps that at 4300 digits
        raise DataError(
            f"{where} holds a number too long to read ({str(exc).split(':')[0]}); this is not "
            "task data — shorten it and try again."
        ) from None
    if _ESCAPES.search(text):
        _check_strings(value, where)
    return value


# The escapes that can make a string no text: \u0000, and \ud800-\udfff (only a pair of those,
# high then low, is a character).
_ESCAPES = re.compile(r"\\u(0000|[dD][89a-fA-F])")


def _unique(pairs: list[tuple[str, Any]], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DataError(
                f"{where} has the key {key!r} twice; keep one (JSON readers disagree on which "
                "one counts)."
            )
        out[key] = value
    return out


def _check_strings(value: Any, where: str) -> None:
    """Refuse a string (or key) holding a NUL or a lone surrogate (it cannot be stored as UTF-8)."""
    stack = [value]
    while stack:
        item = stack.pop()
        texts: Any = ()
        if isinstance(item, str):
            texts = (item,)
        elif isinstance(item, dict):
            texts = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        for text in texts:
            if "\x00" in text:
                raise DataError(
                    f"{where} holds a NUL character (\\u0000) in a string; text data cannot hold "
                    "one. Remove it and try again."
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DataError(
                    f"{where} holds a lone surrogate escape (\\u{ord(text[exc.start]):04x}), "
                    "which is not text; remove it or write the character itself."
                ) from None
