"""Runs page: launch a stage or a whole round, watch it live (progress, ETA, curves, log), cancel
or resume it. Everything shown is read from the database, so a reload or a second tab re-attaches.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from pages.common import AppState, esc, md, shown_js, signal_panel, ui_errors
from teachlab import charts, views
from teachlab.errors import NotFoundError
from teachlab.jobs import queue, runs
from teachlab.rounds import current_round
from teachlab.stages import STAGES
from teachlab.stages.launch import submit
from teachlab.studies import get_study

LATEST = 0  # the run picker's "follow the study's latest run" choice


def stage_choices() -> list[tuple[str, str]]:
    """The launchable stages: a whole round first, then each stage in the table's order."""
    order = sorted((s for s in STAGES.values() if s.launchable), key=lambda s: s.name != "round")
    return [(f"{s.name} — {s.help}", s.name) for s in order]


def visible_probe(page_id: str) -> str:
    """Browser code answering "is the element ``page_id`` displayed?" (a hidden tab is not)."""
    return (
        f"() => {{ const el = document.getElementById({json.dumps(page_id)}); "
        "return !!(el && el.offsetParent !== null); }"
    )


def live_timer(
    tab: gr.Tab, page_id: str, name: str, seconds: float = 2.0
) -> tuple[gr.Timer, gr.Checkbox, Any]:
    """A timer that polls only while its page is on screen.

    The tab's select event starts it; each tick first asks the browser whether the element
    ``page_id`` is displayed (into a hidden checkbox), and the page's poll handler chained on the
    returned event stops the timer when it is not. Through the API the checkbox is just an input.
    """
    timer = gr.Timer(seconds, active=False)
    on_screen = gr.Checkbox(value=True, visible=False, label="on screen")
    tab.select(
        lambda: gr.Timer(active=True),
        None,
        [timer],
        api_name=f"{name}_watch",
        api_visibility="undocumented",
        queue=False,
    )
    tick = timer.tick(
        None,
        None,
        [on_screen],
        js=visible_probe(page_id),
        api_name=f"{name}_tick",
        api_visibility="undocumented",
        queue=False,
    )
    return timer, on_screen, tick


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def progress_html(status: views.RunStatus | None) -> str:
    """The live progress bar; every text from the database is escaped."""
    if status is None:
        return "<div class='tl-run'><p>No runs yet for this study — launch one above.</p></div>"
    run = status.run
    pct = round(100 * status.fraction) if status.fraction is not None else 0
    colour = {"failed": "#e45756", "cancelled": "#9d9d9d", "succeeded": "#54a24b"}.get(
        run.status, "#4c78a8"
    )
    lines = [
        f"<div><b>Run #{run.id} · {esc(run.kind)} · {esc(run.status)}</b>"
        f"{' (cancel requested)' if run.cancel_requested and run.status == 'running' else ''}"
        f" — requested by {esc(run.requested_by or '?')}</div>",
        f"<div role='progressbar' aria-valuemin='0' aria-valuemax='100' aria-valuenow='{pct}' "
        "style='background:#e8e8e8;border-radius:4px;height:14px;margin:6px 0'>"
        f"<div style='width:{pct}%;background:{colour};height:14px;border-radius:4px'></div></div>",
        f"<div>{run.progress_done}/{run.progress_total} · {pct}% · elapsed "
        f"{_duration(status.elapsed_s)} · ETA {_duration(status.eta_s)}</div>",
    ]
    if run.message:
        lines.append(f"<div>{esc(run.message)}</div>")
    if status.child is not None:
        c = status.child
        lines.append(
            f"<div>stage now: {esc(c.kind)} (run #{c.id}, {esc(c.status)}) "
            f"{c.progress_done}/{c.progress_total} {esc(c.message)}</div>"
        )
    if run.error:
        lines.append(f"<div style='color:#b3261e'><b>Error:</b> {esc(run.error)}</div>")
    return "<div class='tl-run'>" + "".join(lines) + "</div>"


def _watched(study_id: int, pick: int | None) -> int | None:
    """The run to show: the picked one if it is this study's, else the study's latest."""
    run_id = views.as_id(pick, "Run")
    if run_id is not None:
        try:
            if runs.get_run(run_id).study_id == study_id:
                return run_id
        except NotFoundError:
            pass
    latest = views.latest_run(study_id)
    return latest.id if latest else None


def _log_text(status: views.RunStatus | None) -> str:
    if status is None:
        return ""
    run = status.child if status.child is not None and status.run.kind == "round" else status.run
    text = views.log_tail(run)
    return text or "(no log yet)"


def build(state: AppState, current_study: gr.State, tab: gr.Tab) -> None:
    with gr.Column(elem_id="runs-page"):
        gr.Markdown(
            "## Runs\nLaunch one stage, or a whole round, on the selected study's current round. "
            "Runs execute in the background worker; this page shows their progress, curves and "
            "log from the database, so you can reload it or open it in another tab at any time."
        )
        with gr.Column() as launch_box:
            with gr.Row():
                stage = gr.Dropdown(
                    stage_choices(), value="round", label="Stage", scale=3, elem_id="runs-stage"
                )
                launch = gr.Button("Launch", variant="primary", scale=0, elem_id="runs-launch")
            target = gr.Markdown("Select a study on the Studies page first.", elem_id="runs-target")
            go_ahead = gr.Checkbox(
                False,
                label="Go ahead despite the signal check",
                info="Only needed when the round's check says stop; your name is recorded on it.",
                elem_id="runs-override",
            )
            cli = gr.Code(
                language="shell",
                label="The same from a terminal (runs in the foreground)",
                interactive=False,
                lines=1,
                elem_id="runs-cli",
            )
        message = gr.Markdown(elem_id="runs-message")
        with gr.Row():
            pick = gr.Dropdown(
                [("latest run of the study", LATEST)],
                value=LATEST,
                label="Watch",
                scale=3,
                allow_custom_value=True,
                elem_id="runs-pick",
            )
            cancel = gr.Button("Cancel run", variant="stop", scale=0, elem_id="runs-cancel")
            resume = gr.Button("Resume run", scale=0, elem_id="runs-resume")
            refresh = gr.Button("Refresh", scale=0, elem_id="runs-refresh")
        state.for_admins(launch_box, cancel, resume)
        progress = gr.HTML(progress_html(None), elem_id="runs-progress")
        curves = gr.Plot(label="Training curves", elem_id="runs-curves")
        log = gr.Code(
            label="Log (last 40 lines)",
            interactive=False,
            lines=12,
            max_lines=20,
            elem_id="runs-log",
        )
        table = gr.Dataframe(
            views.runs_frame(0),
            interactive=False,
            label="Recent runs",
            wrap=True,
            elem_id="runs-table",
        )
        signature = gr.State(None)
    timer, on_screen, tick = live_timer(tab, "runs-page", "runs")

    def panel(study_id: int | None, kind: str, pick_value: int | None) -> tuple[Any, ...]:
        if not study_id:
            empty = "Select a study on the Studies page first."
            return (
                empty,
                "",
                gr.Dropdown(choices=[("latest run of the study", LATEST)], value=LATEST),
                progress_html(None),
                charts.training_curves([]),
                "",
                views.runs_frame(0),
                None,
            )
        study = get_study(int(study_id))
        rnd = current_round(int(study_id))
        options = [("latest run of the study", LATEST), *views.run_options(study.id)]  # type: ignore[arg-type]
        value = pick_value if pick_value in {v for _, v in options} else LATEST
        run_id = _watched(study.id, value)  # type: ignore[arg-type]
        status = views.run_status(run_id) if run_id else None
        return (
            f"Launches on **round {rnd.index}** ({rnd.status}) of study **{md(study.name)}**."
            f"\n\n{signal_panel(rnd.id)}",
            views.cli_command(study.name, kind or "round"),
            gr.Dropdown(choices=options, value=value),
            progress_html(status),
            charts.training_curves(views.metrics_rows(run_id) if run_id else []),
            _log_text(status),
            views.runs_frame(study.id),  # type: ignore[arg-type]
            _signature(status),
        )

    outputs = [target, cli, pick, progress, curves, log, table, signature]

    @ui_errors
    def show(study_id: int | None, kind: str, pick_value: int | None) -> tuple[Any, ...]:
        return panel(study_id, kind, pick_value)

    @ui_errors
    def do_launch(
        request: gr.Request, study_id: int | None, kind: str, go_ahead: bool
    ) -> tuple[Any, ...]:
        user = state.require_admin(request)
        if not study_id:
            raise gr.Error("Select a study on the Studies page first.")
        launched = submit(
            int(study_id),
            kind,
            requested_by=user,
            override_by=user if go_ahead else None,
            demo_mode=state.settings.demo_mode,
        )
        note = f"Queued run **#{launched.run.id}** ({kind}) on round {launched.round.index}."
        return (note, *panel(study_id, kind, LATEST), gr.Timer(active=True))

    @ui_errors
    def do_cancel(
        request: gr.Request, study_id: int | None, kind: str, pick_value: int | None
    ) -> tuple[Any, ...]:
        state.require_admin(request)
        run_id = _watched(int(study_id), pick_value) if study_id else None
        if run_id is None:
            raise gr.Error("There is no run to cancel.")
        run = runs.request_cancel(run_id)
        note = (
            f"Run **#{run.id}** cancelled."
            if run.status == "cancelled"
            else f"Cancel requested for run **#{run.id}**; it stops at its next check point."
        )
        return (note, *panel(study_id, kind, pick_value))

    @ui_errors
    def do_resume(
        request: gr.Request, study_id: int | None, kind: str, pick_value: int | None
    ) -> tuple[Any, ...]:
        state.require_admin(request)
        run_id = _watched(int(study_id), pick_value) if study_id else None
        if run_id is None:
            raise gr.Error("There is no run to resume.")
        runs.prepare_resume(run_id)
        queue.enqueue(run_id)
        return (
            f"Run **#{run_id}** queued again; finished work is not redone.",
            *panel(study_id, kind, pick_value),
            gr.Timer(active=True),
        )

    @ui_errors
    def poll(
        visible: bool, study_id: int | None, kind: str, pick_value: int | None, before: Any
    ) -> tuple[Any, ...]:
        """Redraw what changed only: the bar every tick, curves and log when they grew."""
        if not visible:
            return (gr.Timer(active=False), *[gr.skip()] * len(outputs))
        if not study_id:
            return (gr.skip(), *[gr.skip()] * len(outputs))
        run_id = _watched(int(study_id), pick_value)
        status = views.run_status(run_id) if run_id else None
        sig = _signature(status)
        old = before or {}
        if sig is None or sig["runs"] != old.get("runs"):
            return (gr.skip(), *panel(study_id, kind, pick_value))
        keep = gr.skip()
        curves_out = (
            charts.training_curves(views.metrics_rows(run_id))
            if run_id and sig["metrics"] != old.get("metrics")
            else keep
        )
        log_out = _log_text(status) if sig["log"] != old.get("log") else keep
        return (keep, keep, keep, keep, progress_html(status), curves_out, log_out, keep, sig)

    inputs = [current_study, stage, pick]
    stage.input(show, inputs, outputs, api_name="runs_show")
    pick.input(show, inputs, outputs, api_name="runs_pick", show_progress="hidden")
    refresh.click(show, inputs, outputs, api_name="runs_refresh")

    @ui_errors
    def on_study(
        study_id: int | None, kind: str, pick_value: int | None, shown: bool = True
    ) -> Any:
        """A new study: its runs when the page is on screen (opening the page reads them
        otherwise)."""
        if shown:
            return show(study_id, kind, pick_value)
        return (  # no run of the previous study stays behind the new study's name
            "Loading this study's runs…",
            "",
            gr.Dropdown(choices=[("latest run of the study", LATEST)], value=LATEST),
            "<div class='tl-run'><p>Loading this study's runs…</p></div>",
            None,
            "",
            views.runs_frame(0),
            None,
        )

    current_study.change(
        on_study,
        [*inputs, on_screen],
        outputs,
        api_name="runs_study",
        show_progress="hidden",
        js=shown_js("runs-page"),
    )
    tab.select(show, inputs, outputs, api_name="runs_tab", show_progress="hidden")
    launch.click(
        do_launch,
        [current_study, stage, go_ahead],
        [message, *outputs, timer],
        api_name="launch_run",
    )
    cancel.click(do_cancel, inputs, [message, *outputs], api_name="cancel_run")
    resume.click(do_resume, inputs, [message, *outputs, timer], api_name="resume_run")
    tick.then(
        poll,
        [on_screen, *inputs, signature],
        [timer, *outputs],
        api_name="runs_poll",
        show_progress="hidden",
    )


def _signature(status: views.RunStatus | None) -> dict[str, Any] | None:
    """What the slow parts of the panel depend on: which runs exist and their states (the
    picker and table), how many metric rows (the curves), the log's size (the log)."""
    if status is None:
        return None
    run, child = status.run, status.child
    log = views.log_file(child if child is not None and run.kind == "round" else run)
    return {
        "runs": (run.id, run.status, child and (child.id, child.status)),
        "metrics": views.metrics_count(run.id),  # type: ignore[arg-type]
        "log": log.stat().st_size if log else 0,
    }
