"""What every page shares: the app state, the user's role, and safe rendering of model text.

Roles are checked on the server in every state-changing handler (a hidden button still
answers HTTP). Model output is untrusted: it is escaped before any HTML component (``esc``,
``pre``), and before any Markdown one (``md``).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from contextvars import ContextVar
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
    # Controls only admins see, registered by the pages as they are built; each page load shows
    # or hides them by the visitor's role (the handlers check the role again on the server).
    admin_only: list[Any] = field(default_factory=list)

    # Events that change the current study in place (rename, archive): the app names the
    # study again after each.
    study_edits: list[Any] = field(default_factory=list)

    def for_admins(self, *components: Any) -> None:
        self.admin_only.extend(components)

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
            # A public demo tells its visitors apart by their browser session (its run limits
            # are per visitor); otherwise the one local user.
            session = getattr(request, "session_hash", None) if request is not None else None
            return f"visitor-{session[:8]}" if self.settings.demo_mode and session else "local"
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


_DEPTH: ContextVar[int] = ContextVar("teachlab_ui_depth", default=0)


def from_api_client() -> bool:
    """Whether the event in progress came from an API client (``gradio_client`` marks its
    requests) rather than from the page in a browser."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    headers = getattr(request, "headers", None)
    return bool(headers) and headers.get("x-gradio-user") == "api"


def current_user(state: AppState) -> str | None:
    """The user of the event in progress (None where there is none, or no login)."""
    from gradio.context import LocalContext

    try:
        return state.user(LocalContext.request.get(None))
    except PermissionDenied:
        return None


def refuse(message: str) -> Any:
    """Say why an action was not done, and leave the page as it was.

    In a browser the message is a warning toast (escaped: it often quotes what the user typed,
    and a toast renders HTML) and every output is skipped, so a refused action never replaces
    the page's other components with error badges. An API client gets a raised error, as it
    expects.
    """
    if from_api_client():
        raise gr.Error(message)
    gr.Warning(esc(message), title="Not done", duration=12)
    return gr.skip()


def ui_errors(fn: F) -> F:
    """The page boundary: a TeachLab error, or any expected failure (storage, a locked or
    damaged database, memory), becomes one readable message (``refuse``); an unexpected one
    says it is a bug and where its traceback was logged, never shows the traceback.

    Handlers call one another (a row select shows a draft); only the outermost one turns an
    error into a message, so an inner refusal never returns a skip in place of a value.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outer = _DEPTH.get() == 0
        token = _DEPTH.set(_DEPTH.get() + 1)
        try:
            return fn(*args, **kwargs)
        except gr.Error as exc:
            if not outer:
                raise
            return refuse(str(exc.message))
        except TeachlabError as exc:
            if not outer:
                raise gr.Error(str(exc)) from exc
            return refuse(str(exc))
        except Exception as exc:
            message = one_line(exc)
            if not outer:
                raise gr.Error(message) from exc
            return refuse(message)
        finally:
            _DEPTH.reset(token)

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
    fn: Callable[..., Any], n_outputs: int, round_arg: int = 1, study_arg: int = 0
) -> Callable[..., Any]:
    """A tab-select handler that leaves the page alone until its round picker holds a round of
    the current study.

    Selecting a study fills the picker a moment later. A tab opened in between would otherwise
    answer for the empty picker, or for the previous study's round, after the study's own
    update, and overwrite it (a page showing "no scores yet" for a study that has them).
    """

    @wraps(fn)
    def wrapper(*args: Any) -> Any:
        study_id, round_id = args[study_arg], args[round_arg]
        if not round_id or not study_id or not _round_of(round_id, study_id):
            skipped = tuple(gr.skip() for _ in range(n_outputs))
            return skipped if n_outputs > 1 else skipped[0]
        return fn(*args)

    return wrapper


def shown_js(page_id: str) -> str:
    """Browser code run before an event's handler: it passes the inputs through and fills the
    last one with whether the element ``page_id`` is displayed (a page in a hidden tab is not).
    Through the API the last input is whatever the caller sends (True by default)."""
    return (
        f"(...args) => {{ const el = document.getElementById({json.dumps(page_id)}); "
        "args[args.length - 1] = !!(el && el.offsetParent !== null); return args; }"
    )


def skips(n: int) -> tuple[Any, ...]:
    return tuple(gr.skip() for _ in range(n))


def _round_of(round_id: Any, study_id: Any) -> bool:
    from teachlab import views
    from teachlab.errors import NotFoundError

    try:
        return views.study_of_round(views.as_id(round_id)).id == int(study_id)
    except (NotFoundError, TypeError, ValueError):
        return False


def context_md(study_id: int | None) -> str:
    """The line at the top of every page: which study and round the pages are showing."""
    if not study_id:
        return "No study selected — pick one on the **Studies** page (or create one)."
    from teachlab import studies
    from teachlab.rounds import current_round

    study = studies.get_study(int(study_id))
    rnd = current_round(int(study_id))
    return (
        f"Study **#{study.id} {md(study.name)}** · round {rnd.index} ({rnd.status}) · "
        f"task `{esc(study.task_ref)}` · teacher `{esc(study.teacher)}` → student "
        f"`{esc(study.student)}`"
        + (" · _archived_" if study.archived else "")
        + f" · {next_step(int(rnd.id or 0))}"
    )


def next_step(round_id: int) -> str:
    """The round's next stage, as the line at the top of the pages offers it."""
    from teachlab.rounds import stage_result
    from teachlab.stages import round_kinds

    for kind in round_kinds():
        if stage_result(round_id, kind) is None:
            return f"next: **{kind}** (launch it, or the whole round, on the Runs page)"
    return "this round is done: see the **Progress** page"


def signal_panel(round_id: int | None) -> str:
    """The round's signal-check verdict as every page shows it (empty without a round)."""
    if not round_id:
        return ""
    from teachlab.stages.gate import gate_for

    return gate_for(int(round_id)).markdown()
