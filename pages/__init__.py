"""TeachLab's web app: one module per page, composed here; ``launch`` starts app and worker."""

from __future__ import annotations

import atexit
import logging
import signal
from typing import Any

import gradio as gr

from pages import compare as compare_page
from pages import drafts as drafts_page
from pages import export as export_page
from pages import progress as progress_page
from pages import review as review_page
from pages import runs as runs_page
from pages import scores as scores_page
from pages import studies as studies_page
from pages.auth import MAX_FAILURES, LoginGuard, expire_sessions
from pages.common import AppState, context_md, md, ui_errors
from teachlab import demo
from teachlab.db import init_db
from teachlab.errors import PermissionDenied
from teachlab.settings import Settings, get_settings, on_space

log = logging.getLogger("teachlab.app")

AUTH_MESSAGE = (
    "Log in with the name and password your study admin gave you. {failures} wrong passwords "
    "in a row lock a name for a while; a login lasts {hours} hours."
)
CSS = """
.tl-pre { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.85em; }
/* Table headers wrap between words, never letter by letter down a narrow column. */
table th, table th * { word-break: keep-all !important; overflow-wrap: normal !important; }
table th { min-width: 4.5em; }
#current-context { padding: 6px 10px; border-radius: 6px; background: var(--block-background-fill); }
#current-user { text-align: right; }
"""
THEME = gr.themes.Soft(primary_hue="teal", secondary_hue="slate", neutral_hue="slate")
# A mouse wheel over a focused number box scrolls the page and never changes the number: the
# browser's own behaviour turned a typed 2 into an 8 while the settings form was scrolled.
JS = """() => {
  document.addEventListener('wheel', (event) => {
    const el = document.activeElement;
    if (el && el.type === 'number' && event.target === el) el.blur();
  }, {capture: true, passive: true});
}"""
# How the app looks and behaves in the browser: everything that serves it passes these.
LOOK = {"css": CSS, "theme": THEME, "js": JS}


def build_app(settings: Settings | None = None) -> gr.Blocks:
    settings = settings or get_settings()
    settings.ensure_dirs()
    init_db()
    state = AppState(settings=settings, users=settings.users())
    with gr.Blocks(title="TeachLab") as app:
        with gr.Row(equal_height=True):
            gr.Markdown(
                "# TeachLab\nTeacher drafts · student scores · you review · DPO aligns · "
                "SFT distils",
                elem_id="masthead",
            )
            who = gr.Markdown(elem_id="current-user")
            logout = gr.Button(
                "Log out", link="/logout", size="sm", scale=0, visible=state.auth_enabled
            )
        if on_space():
            gr.DuplicateButton("Duplicate this Space to run your own studies", size="sm")
        if settings.demo_mode:
            gr.Markdown(
                f"> **Demo mode**: aligning, distilling and whole rounds are off; "
                f"{demo.describe()}. Duplicate the Space (or install TeachLab) to run more.",
                elem_id="demo-limits",
            )
        if not settings.storage_is_persistent:
            gr.Markdown(
                "> **Data is ephemeral here**: this Space has no persistent storage, so studies "
                "vanish when it restarts. Duplicate the Space and add storage to keep them."
            )
        current_study = gr.State(None)
        context = gr.Markdown(context_md(None), elem_id="current-context")
        tabs = []
        with gr.Tab("Studies") as tab:
            studies_page.build(state, current_study)
        tabs.append(tab)
        with gr.Tab("Drafts") as tab:
            drafts_page.build(state, current_study, tab)
        tabs.append(tab)
        with gr.Tab("Scores") as tab:
            scores_page.build(state, current_study, tab)
        tabs.append(tab)
        with gr.Tab("Review") as tab:
            review_page.build(state, current_study, tab)
        tabs.append(tab)
        with gr.Tab("Runs") as tab:
            runs_page.build(state, current_study, tab)
        tabs.append(tab)
        with gr.Tab("Progress") as tab:
            progress_page.build(state, current_study, tab)
        tabs.append(tab)
        with gr.Tab("Compare") as tab:
            compare_page.build(state, tab)
        with gr.Tab("Export") as tab:
            # Exports write into the storage folder: admins only (a tab itself cannot be
            # hidden reliably, its contents can).
            export_note = gr.Markdown(
                "Exports are made by the study's admins; ask one for a dataset.",
                visible=False,
                elem_id="export-annotator-note",
            )
            with gr.Column() as export_box:
                export_page.build(state, current_study)
        tabs.append(tab)
        state.for_admins(export_box)
        # The current study and its round, named on every page; read again on each tab switch
        # (a round finished since, a new round opened).
        gr.on(
            [current_study.change, *(t.select for t in tabs)],
            ui_errors(context_md),
            [current_study],
            [context],
            api_visibility="private",
            show_progress="hidden",
        )
        for edit in state.study_edits:
            edit.then(
                ui_errors(context_md),
                [current_study],
                [context],
                api_visibility="private",
                show_progress="hidden",
            )
        admin_only = list(state.admin_only)

        def by_role(request: gr.Request) -> tuple[Any, ...]:
            """Show a visitor who they are, and only the controls their role may use."""
            try:
                role = state.role(request)
                name = state.user(request)
            except PermissionDenied:
                role, name = "anonymous", ""
            line = f"Logged in as **{md(name)}** ({role})" if state.auth_enabled else ""
            shown = role == "admin"
            return (
                line,
                gr.update(visible=not shown),
                *(gr.update(visible=shown) for _ in admin_only),
            )

        app.load(by_role, None, [who, export_note, *admin_only], api_visibility="private")
        del logout
    return app


def upload_mb(settings: Settings) -> int:
    """The largest upload the server takes (smaller in a public demo)."""
    return (
        min(settings.max_upload_mb, demo.UPLOAD_MB)
        if settings.demo_mode
        else settings.max_upload_mb
    )


def auth_callback(settings: Settings) -> LoginGuard | None:
    """The login check (throttled), or None when no logins are configured."""
    users = settings.users()
    return LoginGuard(users) if users else None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def launch(host: str | None = None, port: int | None = None, start_worker: bool = True) -> None:
    """Prepare storage, the demo study and the worker, then serve until interrupted."""
    from teachlab.jobs.queue import WorkerProcess
    from teachlab.studies import ensure_demo_study

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    settings.ensure_dirs()
    init_db()
    from teachlab.tasks import fetch_bigbench, list_bigbench

    if not list_bigbench():
        fetch_bigbench()  # a fresh storage folder: unpack the bundled tasks (no network, < 1 s)
    if settings.demo_study:
        demo = ensure_demo_study()
        if demo is not None:
            log.info("created the demo study #%s", demo.id)
    worker = WorkerProcess(settings.storage.resolve())
    if start_worker:
        worker.start()
        atexit.register(worker.stop)
        # SIGTERM (docker stop, a Space restart) ends the app like Ctrl-C, so the worker stops too.
        signal.signal(signal.SIGTERM, _interrupt)
    app = build_app(settings)
    app.queue(default_concurrency_limit=8)
    try:
        app.launch(
            server_name=host or settings.host,
            server_port=port or settings.port,
            auth=auth_callback(settings),
            auth_message=AUTH_MESSAGE.format(
                failures=MAX_FAILURES, hours=f"{settings.session_hours:g}"
            ),
            blocked_paths=[str(settings.storage.resolve())],
            max_file_size=f"{upload_mb(settings)}mb",
            footer_links=["api"],
            **LOOK,
            prevent_thread_lock=True,
        )
        expire_sessions(app, settings.session_hours)
        app.block_thread()
    finally:
        worker.stop()
