"""Compare page: an experiment's arms side by side — accuracy per arm × task with CIs, each arm's
difference from the reference (a forest plot and a table), cost per arm × stage, the estimate
beside what was measured, and the provenance; launch or resume the experiment in the background
and watch it live.

Experiments span studies, so the page has its own picker rather than the study picker.
Everything shown is read from the database (``teachlab.views``), so a reload re-attaches.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import pandas as pd

from pages.common import AppState, md, ui_errors
from pages.runs import live_timer, progress_html
from teachlab import charts, views
from teachlab.db import Run
from teachlab.errors import JobError, TeachlabError
from teachlab.experiments.spec import ARM_KINDS
from teachlab.jobs import queue
from teachlab.stages.launch import launch_experiment
from teachlab.views.experiments import (
    ACCURACY_KEYS,
    COST_COLUMNS,
    DIFFERENCE_COLUMNS,
    ESTIMATE_COLUMNS,
    NO_RESULTS,
    format_seconds,
    summary,
)

NOTHING = (
    "No experiments yet. Create one in a terminal: `teachlab experiment create NAME --task "
    "bigbench:TASK --arms original,arte --seeds 0,1` (or `--config FILE`), then press Refresh."
)
PICK = "Pick an experiment above."


def _code(text: str) -> str:
    """``text`` as inline code when nothing in it can end the span, else escaped plain text."""
    return f"`{text}`" if "`" not in text and "\n" not in text else md(text)


def spec_md(info: views.ExperimentInfo) -> str:
    """What the experiment is: its one-line summary, tasks, arms, seeds, models, evaluation."""
    spec = info.spec
    created = f" · created {info.created:%Y-%m-%d %H:%M} UTC" if info.created else ""
    arms = []
    for arm in spec.arms:
        kind = ARM_KINDS.get(arm)
        ref = " (the reference)" if arm == spec.reference and len(spec.arms) > 1 else ""
        arms.append(f"**{md(arm)}**{ref} — {md(kind.help) if kind else 'unknown kind'}")
    tasks = [
        md(ref) if short == ref else f"**{md(short)}** ({md(ref)})"
        for ref, short in views.task_labels(spec.tasks).items()
    ]
    lines = [
        f"**{md(info.name)}** · experiment #{info.id}{created} · **{md(summary(spec))}**",
        "",
        f"- Tasks: {', '.join(tasks)}",
        f"- Arms: {'; '.join(arms)}",
        f"- Seeds: {', '.join(str(s) for s in spec.seeds)}",
        f"- Models: teacher {md(spec.teacher)}, student {md(spec.student)} ({md(spec.backend)})",
        f"- Evaluation: {', '.join(md(m) for m in spec.eval_modes)} × "
        f"{', '.join(str(s) for s in spec.eval_shots)} shots "
        f"(chain of thought up to {spec.cot_max_tokens} new tokens)",
        f"- Studies: {len(info.studies)} (one per task and seed; listed under Provenance)",
    ]
    if spec.description:
        lines.append(f"- {md(spec.description)}")
    return "\n".join(lines)


def status_html(status: views.RunStatus | None) -> str:
    """The experiment run's progress and its current step (a child run), as the Runs page
    shows a round's."""
    if status is None:
        return (
            "<div class='tl-run'><p>No run yet: <b>Launch / resume</b> runs this experiment "
            "in the background.</p></div>"
        )
    return progress_html(status)


def empty_note(found: views.ExperimentResults, run: Run | None, command: str) -> str:
    """Why there is no comparison to show, and what to do about it."""
    if found.reason != NO_RESULTS:
        return f"**No comparison yet**: {md(found.reason)}"
    terminal = f"{_code(command)} runs it in a terminal"
    if run is None:
        return (
            "**Not run yet** — no results are stored. **Launch / resume** runs it in the "
            f"background; {terminal}."
        )
    if run.status in ("queued", "running"):
        return (
            f"**Run #{run.id} is {md(run.status)}** — no results are stored yet; they appear "
            "here as the arms are evaluated."
        )
    return (
        f"**No results yet** — run #{run.id} {md(run.status)}. **Launch / resume** resumes it "
        f"in the background (finished steps are not redone); {terminal}."
    )


def forest_figure(result: dict[str, Any]) -> Any:
    """The forest plot; arm and task names are escaped (plotly renders tags in tick labels and
    turns the entities back into the characters)."""
    rows = [
        {
            **d,
            "arm": html.escape(d["arm"], quote=False),
            "task": html.escape(d["task"], quote=False),
        }
        for d in views.forest_rows(result)
    ]
    return charts.forest_plot(rows, html.escape(result["reference"], quote=False))


def _estimate_md(result: dict[str, Any]) -> str:
    est = result.get("estimate")
    if not est:
        return "No compute estimate was recorded (the experiment's run makes one first)."
    total = est.get("total") or {}
    where = md(est.get("machine") or "this machine")
    parts = [f"Estimated before the run on {where}"]
    if est.get("created"):
        parts.append(f" ({md(est['created'])})")
    seconds = format_seconds(total.get("seconds_here"))
    parts.append(f": **{seconds}** here")
    if est.get("gpu") and total.get("seconds_gpu") is not None:
        gpu = format_seconds(total["seconds_gpu"])
        parts.append(f", **{gpu}** on {md(est['gpu'])}")
    return "".join(parts) + ". Beside what was measured (ratio = measured / estimated):"


def provenance_md(result: dict[str, Any] | None, info: views.ExperimentInfo) -> str:
    prov = (result or {}).get("provenance") or {}
    studies = prov.get("studies") or info.studies
    lines = ["**Studies** (task @ seed: study)", ""]
    lines += [f"- {md(k)}: {md(v)}" for k, v in studies.items()]
    lines += ["", f"**Git revision**: {md(prov.get('git_revision') or 'not recorded')}", ""]
    packages = prov.get("packages") or {}
    listed = ", ".join(f"{md(k)} {md(v)}" for k, v in sorted(packages.items()))
    lines += [f"**Packages**: {listed or 'not recorded (no finished run yet)'}", ""]
    finished = prov.get("runs") or []
    lines.append(f"**Finished runs** ({len(finished)}), with their adapter hashes")
    lines.append("")
    for r in finished:
        config = r.get("config") or {}
        what = ", ".join(
            f"{k} {md(config[k])}" for k in ("arm", "task", "seed") if config.get(k) is not None
        )
        hashes = [
            f"{label} sha256 {md(r[key])}"
            for key, label in (("adapter_sha256", "adapter"), ("student_sha256", "student"))
            if r.get(key)
        ]
        line = f"- run #{md(r.get('run'))} {md(r.get('kind'))}"
        line += f" ({what})" if what else ""
        line += f": {'; '.join(hashes)}" if hashes else ""
        lines.append(line)
    return "\n".join(lines)


def _empty_frame(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([], columns=columns)


def _run_key(status: views.RunStatus | None) -> tuple[Any, ...] | None:
    """What the status line shows, to tell whether a poll must redraw it."""
    if status is None:
        return None
    run, child = status.run, status.child
    return (
        run.id,
        run.status,
        run.progress_done,
        run.progress_total,
        run.message,
        run.cancel_requested,
        run.error,
        child and (child.id, child.status, child.progress_done, child.progress_total),
        child and child.message,
    )


def _run_status(exp_id: int) -> views.RunStatus | None:
    run = views.experiment_run(exp_id)
    return views.run_status(run.id) if run is not None and run.id is not None else None


def _signature(exp_id: int, status: views.RunStatus | None) -> dict[str, Any]:
    return {"experiment": exp_id, "data": views.data_signature(exp_id), "run": _run_key(status)}


def panel(exp_id: int | None) -> tuple[Any, ...]:
    """Every output of the page for the experiment ``exp_id`` (None: nothing picked)."""
    if exp_id is None:
        return (
            PICK,
            "",
            "",
            "",
            _empty_frame(ACCURACY_KEYS),
            charts.forest_plot([], "original"),
            _empty_frame(COST_COLUMNS),
            "",
            gr.Dataframe(_empty_frame(ESTIMATE_COLUMNS), visible=False),
            _empty_frame(DIFFERENCE_COLUMNS),
            "",
            "",
            None,
        )
    info = views.experiment_info(exp_id)
    status = _run_status(exp_id)
    found = views.experiment_results(exp_id)
    command = views.experiment_command(info.name)
    spec = info.spec
    sig = {"experiment": exp_id, "data": found.signature, "run": _run_key(status)}
    result = found.result
    if result is None:
        reference = spec.reference if spec.reference in spec.arms else spec.arms[0]
        return (
            spec_md(info),
            command,
            status_html(status),
            empty_note(found, status.run if status else None, command),
            pd.DataFrame([], columns=[*ACCURACY_KEYS, *spec.arms]),
            charts.forest_plot([], html.escape(reference, quote=False)),
            _empty_frame(COST_COLUMNS),
            "",
            gr.Dataframe(_empty_frame(ESTIMATE_COLUMNS), visible=False),
            _empty_frame(DIFFERENCE_COLUMNS),
            "",
            provenance_md(None, info),
            sig,
        )
    estimate = views.estimate_frame(result)
    level = f"{100 * result['settings']['confidence']:g}%"
    note = (
        f"Accuracy on the held-out test items with {level} CIs, per task (seeds pooled) and the "
        f"macro average over tasks, for each evaluation mode × shots; reference arm "
        f"**{md(result['reference'])}**."
    )
    return (
        spec_md(info),
        command,
        status_html(status),
        note,
        views.accuracy_frame(result),
        forest_figure(result),
        views.cost_frame(result),
        _estimate_md(result),
        gr.Dataframe(
            estimate if estimate is not None else _empty_frame(ESTIMATE_COLUMNS),
            visible=estimate is not None,
        ),
        views.differences_frame(result),
        "\n".join(f"- {md(n)}" for n in result["notes"]),
        provenance_md(result, info),
        sig,
    )


def build(state: AppState, tab: gr.Tab) -> None:
    with gr.Column(elem_id="compare-page"):
        gr.Markdown(
            "## Compare\nAn experiment's arms on the same held-out items: accuracy with "
            "confidence intervals, each arm's paired difference from the reference arm, what "
            "each arm cost, and what the results came from. **Launch / resume** runs the "
            "experiment in the background worker; a stopped run resumes where it stopped, "
            "finished steps and stored items are not redone."
        )
        with gr.Row():
            pick = gr.Dropdown(
                views.experiment_options(),
                value=None,
                label="Experiment",
                info="Newest first: arms × tasks × seeds.",
                allow_custom_value=True,
                scale=4,
                elem_id="compare-pick",
            )
            refresh = gr.Button("Refresh", scale=0, elem_id="compare-refresh")
            launch = gr.Button(
                "Launch / resume", variant="primary", scale=0, elem_id="compare-launch"
            )
        state.for_admins(launch)
        spec = gr.Markdown(PICK, elem_id="compare-spec")
        message = gr.Markdown(elem_id="compare-message")
        status_line = gr.HTML(elem_id="compare-status")
        cli = gr.Code(
            language="shell",
            label="The same from a terminal (runs in the foreground; run it again to resume)",
            interactive=False,
            lines=1,
            elem_id="compare-cli",
        )
        note = gr.Markdown(elem_id="compare-note")
        accuracy = gr.Dataframe(
            _empty_frame(ACCURACY_KEYS),
            interactive=False,
            label="Accuracy [CI] per arm",
            max_height=420,
            elem_id="compare-accuracy",
        )
        with gr.Row():
            with gr.Column(scale=1):
                forest = gr.Plot(label="Difference from the reference", elem_id="compare-forest")
            with gr.Column(scale=1):
                cost = gr.Dataframe(
                    _empty_frame(COST_COLUMNS),
                    interactive=False,
                    label="Cost per arm × stage (seeds and tasks summed)",
                    max_height=420,
                    elem_id="compare-cost",
                )
        differences = gr.Dataframe(
            _empty_frame(DIFFERENCE_COLUMNS),
            interactive=False,
            label="Differences from the reference (arm − reference, paired items)",
            max_height=420,
            elem_id="compare-differences",
        )
        estimate_note = gr.Markdown(elem_id="compare-estimate-note")
        estimate = gr.Dataframe(
            _empty_frame(ESTIMATE_COLUMNS),
            interactive=False,
            label="Estimated vs measured",
            max_height=360,
            visible=False,
            elem_id="compare-estimate",
        )
        with gr.Accordion("Notes on the statistics", open=False):
            notes = gr.Markdown(elem_id="compare-notes")
        with gr.Accordion(
            "Provenance: studies, packages, git revision, adapter hashes", open=False
        ):
            provenance = gr.Markdown(elem_id="compare-provenance")
        signature = gr.State(None)
    timer, on_screen, tick = live_timer(tab, "compare-page", "compare")

    outputs = [spec, cli, status_line, note, accuracy, forest, cost, estimate_note, estimate]
    outputs += [differences, notes, provenance, signature]

    @ui_errors
    def show(value: Any) -> tuple[Any, ...]:
        return panel(views.as_id(value, "Experiment"))

    @ui_errors
    def show_all(value: Any) -> tuple[Any, ...]:
        """The picker's list read again (the newest experiment when none is picked), then the
        picked experiment."""
        options = views.experiment_options()
        ids = [v for _, v in options]
        try:
            exp_id = views.as_id(value, "Experiment")
        except TeachlabError:  # typed text that is no id: show the newest instead
            exp_id = None
        chosen = exp_id if exp_id in ids else (ids[0] if ids else None)
        shown = panel(chosen)
        if not options:
            shown = (NOTHING, *shown[1:])
        return (gr.Dropdown(choices=options, value=chosen), *shown)

    @ui_errors
    def do_launch(request: gr.Request, value: Any) -> tuple[Any, ...]:
        user = state.require_admin(request)
        exp_id = views.as_id(value, "Experiment")
        if exp_id is None:
            raise gr.Error("Pick an experiment first.")
        if state.settings.demo_mode:
            raise JobError(
                "Experiments are switched off in this public demo (they train models for "
                "minutes); run TeachLab locally to use them."
            )
        before = views.experiment_run(exp_id)
        run = launch_experiment(exp_id, requested_by=user).run
        if before is not None and before.id == run.id and before.status in ("queued", "running"):
            note = f"Run **#{run.id}** is {run.status} already; nothing new was queued."
        else:
            queue.enqueue(run.id)  # type: ignore[arg-type]
            note = (
                f"Run **#{run.id}** queued again; finished steps and stored items are not redone."
                if before is not None and before.id == run.id
                else f"Queued run **#{run.id}**; the background worker runs it."
            )
        return (note, *panel(exp_id), gr.Timer(active=True))

    @ui_errors
    def poll(visible: bool, value: Any, before: Any) -> tuple[Any, ...]:
        """Redraw what changed only: the status line while the run moves, everything when new
        results or costs are stored."""
        keep = [gr.skip()] * len(outputs)
        if not visible:
            return (gr.Timer(active=False), *keep)
        exp_id = views.as_id(value, "Experiment")
        if exp_id is None:
            return (gr.skip(), *keep)
        status = _run_status(exp_id)
        sig = _signature(exp_id, status)
        old = before or {}
        if sig["experiment"] != old.get("experiment") or sig["data"] != old.get("data"):
            return (gr.skip(), *panel(exp_id))
        run = sig["run"]
        if run == old.get("run") and (run is None or run[1] != "running"):
            return (gr.skip(), *keep)
        redrawn = list(keep)
        redrawn[outputs.index(status_line)] = status_html(status)
        redrawn[-1] = sig
        return (gr.skip(), *redrawn)

    pick.input(show, [pick], outputs, api_name="compare_pick", show_progress="hidden")
    refresh.click(show_all, [pick], [pick, *outputs], api_name="compare_refresh")
    tab.select(show_all, [pick], [pick, *outputs], api_name="compare_tab", show_progress="hidden")
    launch.click(do_launch, [pick], [message, *outputs, timer], api_name="compare_launch")
    tick.then(
        poll,
        [on_screen, pick, signature],
        [timer, *outputs],
        api_name="compare_poll",
        show_progress="hidden",
    )
