"""Reading untrusted text: JSON with bounded nesting, and no NUL bytes.

Python's ``json`` recurses per level of nesting, so a file of 100,000 ``[`` raises a
RecursionError (a traceback, not a message); a quick scan refuses it first. NUL bytes have no
place in task text and break SQLite's C strings and the terminal, so they are refused too.
"""

from __future__ import annotations

import json
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
    """``text`` unchanged, or a DataError naming ``where`` when it holds a NUL byte."""
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
    return json.loads(text)
