"""What every page shares: the app state, the user's role, and safe rendering of model text.

Roles are checked on the server in every state-changing handler (a hidden button still
answers HTTP). Model output is untrusted: it is escaped before any HTML component (``esc``,
``pre``), and before any Markdown one (``md``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

import gradio as gr

from teachlab.boundary import one_line
from teachlab.errors import PermissionDenied, TeachlabError
from teachlab.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppState:
    """Built once per app; pages read it, never mutate it per user."""

    settings: Settings
    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (password, role)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.users)

    def role(self, request: gr.Request | None) -> str:
        """admin or annotator; without login configured every visitor is admin."""
        if not self.auth_enabled:
            return "admin"
        name = getattr(request, "username", None) if request is not None else None
        if not name or name not in self.users:
            raise PermissionDenied("You are not logged in; log in and try again.")
        return self.users[name][1]

    def user(self, request: gr.Request | None) -> str:
        if not self.auth_enabled:
            return "local"
        name = getattr(request, "username", None) if request is not None else None
        if not name:
            raise PermissionDenied("You are not logged in; log in and try again.")
        return str(name)

    def require_admin(self, request: gr.Request | None) -> str:
        if self.role(request) != "admin":
            raise PermissionDenied(
                "Annotators can review pairs only; ask a study admin to do this."
            )
        return self.user(request)


def ui_errors(fn: F) -> F:
    """The page boundary: a TeachLab error, or any expected failure (storage, a locked or
    damaged database, memory), becomes one readable gr.Error; an unexpected one says it is a
    bug and where its traceback was logged, never shows the traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except TeachlabError as exc:
            raise gr.Error(str(exc)) from exc
        except Exception as exc:
            raise gr.Error(one_line(exc)) from exc

    return wrapper  # type: ignore[return-value]


def esc(text: object) -> str:
    """HTML-escape untrusted text (model output, annotator notes, task data)."""
    return html.escape("" if text is None else str(text), quote=True)


# The ASCII punctuation a backslash escapes in Markdown, less what html.escape leaves only in
# entities (& ; and no < >) and "/" (which starts nothing once ":" is escaped).
_MARKDOWN_PUNCTUATION = re.compile(r"""([!"#$%'()*+,\-.:=?@\[\\\]^_`{|}~])""")


def md(text: object) -> str:
    """Untrusted text inside a Markdown component: HTML-escaped, and its Markdown punctuation
    backslash-escaped, so it shows as typed, never as a link, an image or formatting (``esc``
    alone stops HTML only: ``![x](javascript:…)`` would still render as an image)."""
    plain = html.escape("" if text is None else str(text), quote=False)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", plain)


def pre(text: object) -> str:
    """Untrusted text shown verbatim inside an HTML component."""
    return f"<pre class='tl-pre'>{esc(text)}</pre>"


def when_round_chosen(
    fn: Callable[..., Any], n_outputs: int, round_arg: int = 0
) -> Callable[..., Any]:
    """A tab-select handler that leaves the page alone while its round picker is still empty.

    Selecting a study fills the picker a moment later; a tab opened in between would otherwise
    answer "select a study first" after the study's own update and overwrite it.
    """

    @wraps(fn)
    def wrapper(*args: Any) -> Any:
        if not args[round_arg]:
            skipped = tuple(gr.skip() for _ in range(n_outputs))
            return skipped if n_outputs > 1 else skipped[0]
        return fn(*args)

    return wrapper


def signal_panel(round_id: int | None) -> str:
    """The round's signal-check verdict as every page shows it (empty without a round)."""
    if not round_id:
        return ""
    from teachlab.stages.gate import gate_for

    return gate_for(int(round_id)).markdown()
