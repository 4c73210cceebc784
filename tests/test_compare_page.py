"""The Compare page served for real and driven through gradio_client (and once in Chromium): an
experiment's stored item results and costs (written directly, no models) shown as accuracies
with CIs, a forest plot and cost tables; Launch is admin-only and records one run, once."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from builders import add, parity_rows, task_file
from gradio_client import Client
from gradio_client.exceptions import AppError
from sqlmodel import col, select

from teachlab.db import Run, read_session, write_session
from teachlab.db.tables import Cost, ItemResult
from teachlab.experiments.spec import ExperimentSpec
from teachlab.experiments.store import Loaded, create_experiment
from teachlab.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
TEACHER, STUDENT = "bundled:gemma-3-270m", "bundled:smollm2-135m-instruct"
EVALS = (("loglik", 0), ("cot", 0))
DESCRIPTION = "![x](javascript:alert(1)) <script>alert(2)</script> *bold*"
# Whether an arm answers item i of task t right: fixed, so the tables are predictable.
RIGHT = {
    "original": lambda i, t: i % 2 == 0,
    "arte": lambda i, t: i % 5 != t,
    "random-pairs": lambda i, t: i % 3 != 0,
}


def make_experiment(
    folder: Path,
    name: str,
    *,
    arms: Sequence[str] = ("original", "arte"),
    tasks: Sequence[str] = ("sports.jsonl", "dates.jsonl"),
    seeds: Sequence[int] = (0,),
    evals: Sequence[tuple[str, int]] = EVALS,
    results: bool = True,
    estimate: bool = False,
) -> Loaded:
    """An experiment on tiny parity task files, with (``results``) one stored ``ItemResult`` per
    arm × task × seed × mode × shots × test item and a few ``Cost`` rows, as its run writes them."""
    (folder / name).mkdir()
    refs = [task_file(folder / name, parity_rows(40, f"({t}) Is {{}} even?"), t).ref for t in tasks]
    spec = ExperimentSpec.from_dict(
        {
            "name": name,
            "tasks": refs,
            "arms": list(arms),
            "seeds": list(seeds),
            "teacher": TEACHER,
            "student": STUDENT,
            "study": {"n_probe": 6, "n_test": 10},
            "eval_modes": sorted({m for m, _ in evals}),
            "eval_shots": sorted({s for _, s in evals}),
            "description": DESCRIPTION,
        }
    )
    exp = create_experiment(spec)
    if not results:
        return exp
    rows: list[Any] = []
    for seed in seeds:
        for t, ref in enumerate(refs):
            test = exp.member(ref, seed).splits["test"]
            for arm in arms:
                for mode, shots in evals:
                    rows += [
                        ItemResult(
                            experiment_id=exp.id,
                            arm=arm,
                            task=ref,
                            seed=seed,
                            mode=mode,
                            shots=shots,
                            item=i,
                            correct=RIGHT[arm](i + seed + shots, t),
                        )
                        for i in test
                    ]
            rows.append(
                Cost(
                    experiment_id=exp.id,
                    stage="draft",
                    seed=seed,
                    task=ref,
                    seconds=30.0,
                    tokens_generated=1200,
                    peak_rss_mb=800,
                )
            )
        for arm in arms:
            if arm != "original":
                rows.append(
                    Cost(
                        experiment_id=exp.id,
                        arm=arm,
                        stage="align",
                        seed=seed,
                        seconds=120.0,
                        tokens_scored=9000,
                        peak_rss_mb=2100,
                    )
                )
            rows.append(
                Cost(
                    experiment_id=exp.id,
                    arm=arm,
                    stage="distill",
                    seed=seed,
                    seconds=60.0,
                    tokens_scored=5000,
                    peak_rss_mb=1500,
                )
            )
    add(*rows)
    if estimate:
        from teachlab.experiments.store import record_estimate

        est_rows = [
            {"stage": "draft", "arm": None, "seconds_here": 50.0, "seconds_gpu": None}
            | {"tokens_generated": 2000.0, "tokens_scored": 0.0, "tokens_trained": 0.0},
            *(
                {"stage": "distill", "arm": arm, "seconds_here": 45.0, "seconds_gpu": None}
                | {"tokens_generated": 0.0, "tokens_scored": 1000.0, "tokens_trained": 4000.0}
                for arm in arms
            ),
        ]
        record_estimate(
            exp.id,
            {
                "experiment": name,
                "machine": "a 2-core test machine",
                "gpu": None,
                "created": "2025-01-01 12:00",
                "rows": est_rows,
                "total": {"seconds_here": sum(r["seconds_here"] for r in est_rows)},
            },
        )
    return exp


def expected_accuracy(exp_id: int, arm: str, task: str, mode: str, shots: int) -> float:
    with read_session() as s:
        rows = s.exec(
            select(ItemResult).where(
                ItemResult.experiment_id == exp_id,
                ItemResult.arm == arm,
                ItemResult.task == task,
                ItemResult.mode == mode,
                ItemResult.shots == shots,
            )
        ).all()
    return sum(r.correct for r in rows) / len(rows)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_app(auth: str | None) -> tuple[Any, str]:
    from pages import LOOK, auth_callback, build_app

    get_settings.cache_clear()
    app = build_app()
    app.queue(default_concurrency_limit=8)
    port = free_port()
    app.launch(
        prevent_thread_lock=True,
        server_port=port,
        auth=auth_callback(get_settings()),
        **LOOK,
        quiet=True,
    )
    return app, f"http://127.0.0.1:{port}/"


@pytest.fixture
def served(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Loaded, Loaded]]:
    """The app with logins, an experiment with results and costs, and a newer one not run."""
    monkeypatch.setenv("TEACHLAB_AUTH", "admin:pw:admin,ann:pw:annotator")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    done = make_experiment(tmp_path, "cmp", estimate=True)
    fresh = make_experiment(tmp_path, "fresh", results=False)
    app, url = serve_app(os.environ["TEACHLAB_AUTH"])
    try:
        yield url, done, fresh
    finally:
        app.close()


def client(url: str, user: str) -> Client:
    return Client(url, auth=(user, "pw"), verbose=False, analytics_enabled=False)


def frame(value: dict[str, Any]) -> list[dict[str, Any]]:
    """A Dataframe output (or an update carrying one) as rows keyed by header."""
    value = value.get("value", value)
    return [dict(zip(value["headers"], row, strict=True)) for row in value["data"]]


def experiment_runs() -> list[tuple[int, str, str, str | None, int]]:
    with read_session() as s:
        rows = s.exec(select(Run).order_by(col(Run.id))).all()
    return [(r.id, r.kind, r.status, r.requested_by, r.study_id) for r in rows]  # type: ignore[misc]


def queued_ids() -> list[int]:
    from teachlab.jobs.queue import get_huey

    return sorted(int(task.args[0]) for task in get_huey().pending() if task.args)


def test_picking_an_experiment_shows_its_results_plot_and_costs(
    served: tuple[str, Loaded, Loaded],
) -> None:
    url, exp, fresh = served
    ann = client(url, "ann")  # reading is for everyone
    picker, *shown = ann.predict(None, api_name="/compare_refresh")
    labels = [label for label, _ in picker["choices"]]
    assert labels == [
        f"#{fresh.id} fresh — 2 arms × 2 tasks × 1 seed",
        f"#{exp.id} cmp — 2 arms × 2 tasks × 1 seed",
    ]  # newest first
    assert picker["value"] == fresh.id  # nothing picked: the newest is shown
    assert "**Not run yet**" in shown[3]

    start = time.perf_counter()
    out = ann.predict(exp.id, api_name="/compare_pick")
    elapsed = time.perf_counter() - start
    spec, cli, status, note, accuracy, forest, cost, est_note, estimate, diffs, notes, prov = out
    print(f"compare_pick took {elapsed * 1000:.0f} ms through gradio_client")

    # The spec: tasks, arms, seeds, models; the description is shown as text, never markup.
    assert "**cmp**" in spec and "2 arms × 2 tasks × 1 seed" in spec
    assert "**original** (the reference)" in spec and "**arte**" in spec
    assert "Seeds: 0" in spec and "gemma" in spec and "smollm2" in spec
    assert "<script>" not in spec and "&lt;script&gt;" in spec and "\\!\\[x\\]\\(" in spec
    assert cli == "teachlab experiment run cmp"
    assert "No run yet" in status

    # Accuracy per arm × task for each mode × shots, then the macro row: the stored rows'.
    table = frame(accuracy)
    assert accuracy["headers"] == ["mode", "shots", "task", "original", "arte"]
    names = {"sports.jsonl": exp.spec.tasks[0], "dates.jsonl": exp.spec.tasks[1]}
    assert [(r["mode"], r["shots"], r["task"]) for r in table] == [
        (mode, shots, task)
        for mode, shots in EVALS
        for task in ("sports.jsonl", "dates.jsonl", "macro (tasks averaged)")
    ]
    for row in table:
        if row["task"].startswith("macro"):
            continue
        ref = names[row["task"]]
        for arm in ("original", "arte"):
            acc = expected_accuracy(exp.id, arm, ref, row["mode"], int(row["shots"]))
            lo, hi = (float(x) for x in row[arm].split("[")[1].rstrip("]").split(","))
            assert row[arm].startswith(f"{acc:.3f} [") and lo <= acc <= hi
    assert "95% CIs" in note and "reference arm **original**" in note

    # One point per difference (arte − original: 2 tasks and the pool, 2 settings).
    rows = frame(diffs)
    assert len(rows) == 6 and {r["arm"] for r in rows} == {"arte"}
    assert [r["task"] for r in rows[:3]] == ["sports.jsonl", "dates.jsonl", "all tasks"]
    plot = json.loads(forest["plot"])
    assert sum(len(trace["x"]) for trace in plot["data"]) == len(rows)
    assert {trace["name"] for trace in plot["data"]} == {"loglik · 0-shot", "cot · 0-shot"}

    # Costs per arm × stage, shared steps first; the estimate beside what was measured.
    assert [(r["arm"], r["stage"], r["seconds"], r["peak MB"]) for r in frame(cost)] == [
        ("shared", "draft", "60.0", "800"),
        ("original", "distill", "60.0", "1500"),
        ("arte", "align", "120.0", "2100"),
        ("arte", "distill", "60.0", "1500"),
    ]
    assert "a 2\\-core test machine" in est_note
    compared = frame(estimate)
    assert ("draft", "shared", "seconds", "50 s", "60 s", "1.20") in {
        tuple(r.values()) for r in compared
    }
    assert any(r["stage"] == "total" for r in compared)
    assert "Holm" in notes
    assert exp.anchor(0).name in prov.replace("\\", "") and "Git revision" in prov

    # An experiment not run yet says how to run it; nothing from the other one lingers.
    spec, cli, status, note, accuracy, forest, cost, *_ = ann.predict(
        fresh.id, api_name="/compare_pick"
    )
    assert "**Not run yet**" in note and "`teachlab experiment run fresh`" in note
    assert accuracy["data"] in ([], [[]]) or not any(accuracy["data"][0])
    assert frame(cost) == []
    assert "No paired differences yet" in json.dumps(json.loads(forest["plot"]))


def test_only_an_admin_launches_and_a_second_launch_records_no_second_run(
    served: tuple[str, Loaded, Loaded],
) -> None:
    url, exp, _fresh = served
    ann, admin = client(url, "ann"), client(url, "admin")
    with pytest.raises(AppError, match="Annotators can review pairs only"):
        ann.predict(exp.id, api_name="/compare_launch")
    assert experiment_runs() == [] and queued_ids() == []

    note, *out = admin.predict(exp.id, api_name="/compare_launch")
    ((run_id, kind, status, who, study_id),) = experiment_runs()
    assert (kind, status, who) == ("experiment", "queued", "admin")
    assert study_id == exp.anchor(0).id
    assert f"Queued run **#{run_id}**" in note
    assert f"Run #{run_id} · experiment · queued" in out[2]  # the status line
    assert queued_ids() == [run_id]  # handed to the worker's queue (no worker runs here)

    note, *_ = admin.predict(exp.id, api_name="/compare_launch")
    assert f"Run **#{run_id}** is queued already" in note
    assert [r[0] for r in experiment_runs()] == [run_id] and queued_ids() == [run_id]

    # The timer's poll redraws the status line when the run moves (nothing else when no
    # result is new); off screen it stops the timer.
    quiet = admin.predict(True, exp.id, api_name="/compare_poll")
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in quiet[1:])
    with write_session() as s:  # what the worker's executor writes
        run = s.get(Run, run_id)
        run.progress_done, run.progress_total = 3, 12  # type: ignore[union-attr]
        run.message = "score · seed 0 · sports.jsonl"  # type: ignore[union-attr]
        s.add(run)
    polled = admin.predict(True, exp.id, api_name="/compare_poll")
    assert "3/12" in polled[3] and "score · seed 0 · sports.jsonl" in polled[3]
    assert polled[5].get("__type__") == "update"  # the accuracy table is left alone
    hidden = admin.predict(False, exp.id, api_name="/compare_poll")
    assert hidden[0]["active"] is False


@pytest.mark.browser
def test_the_compare_tab_in_chromium_shows_the_table_and_the_plot(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from browsing import CHROMIUM, CHROMIUM_ARGS, SHOTS, VIEWPORT, WAIT_MS, _png_size

    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's)")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    exp = make_experiment(
        tmp_path,
        "arte-vs-original",
        arms=("original", "arte", "random-pairs"),
        tasks=("sports_understanding.jsonl", "date_understanding.jsonl"),
        seeds=(0, 1),
        evals=(("loglik", 0), ("loglik", 3)),
        estimate=True,
    )
    make_experiment(tmp_path, "next-one", results=False)  # the newest: shown first
    app, url = serve_app(None)
    expect = sync_api.expect
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            page.get_by_role("tab", name="Compare", exact=True).click()
            expect(page.locator("#compare-note")).to_contain_text("Not run yet", timeout=WAIT_MS)
            pick = page.get_by_role("combobox", name="Experiment")
            pick.click()
            label = f"#{exp.id} arte-vs-original — 3 arms × 2 tasks × 2 seeds"
            page.get_by_role("option", name=label).click()
            expect(pick).to_have_value(label, timeout=WAIT_MS)
            table = page.locator("#compare-accuracy")
            expect(table).to_contain_text("random-pairs", timeout=WAIT_MS)
            expect(table).to_contain_text("macro (tasks averaged)")
            # 2 settings × (2 tasks + macro) rows and the header
            expect(table.get_by_role("row")).to_have_count(7)
            forest = page.locator("#compare-forest")
            expect(forest.locator(".js-plotly-plot")).to_be_visible(timeout=WAIT_MS)
            expect(forest).to_contain_text("Accuracy difference from original")
            expect(page.locator("#compare-cost")).to_contain_text("distill")
            page.locator("#compare-note").evaluate("el => el.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(1000)  # the plot draws once on screen, with a transition
            SHOTS.mkdir(parents=True, exist_ok=True)
            shot = SHOTS / "compare.png"
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        app.close()
    assert _png_size(shot) == (1280, 900)
