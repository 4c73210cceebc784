"""The researcher's pages served for real on a free port and driven through gradio_client:
roles on state-changing endpoints, stale review decisions, escaping of model output, live polls."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import PAYLOAD, two_round_study
from gradio_client import Client
from gradio_client.exceptions import AppError
from sqlmodel import col, select

from teachlab.db import (
    AnnotationEvent,
    Draft,
    Metric,
    Pair,
    Run,
    SignalCheck,
    read_session,
    write_session,
)
from teachlab.errors import ConfigError
from teachlab.jobs import runs
from teachlab.settings import get_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, Any]]]:
    from pages import auth_callback, build_app

    monkeypatch.setenv("TEACHLAB_AUTH", "admin:pw:admin,ann:pw:annotator")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    get_settings.cache_clear()
    ids = two_round_study(tmp_path)
    app = build_app()
    app.queue()
    port = free_port()
    app.launch(
        prevent_thread_lock=True,
        server_port=port,
        auth=auth_callback(get_settings()),
        quiet=True,
    )
    align = runs.Lease(ids["align"], runs.get_run(ids["align"]).lease)
    try:
        with runs.Heartbeat(align):  # its executor keeps the running align run alive
            yield f"http://127.0.0.1:{port}/", ids
    finally:
        app.close()


def client(url: str, user: str, study_id: int) -> Client:
    c = Client(url, auth=(user, "pw"), verbose=False, analytics_enabled=False)
    c.predict(study_id, api_name="/select_study")  # sets the session's current study
    return c


def run_ids() -> list[int]:
    with read_session() as s:
        return list(s.exec(select(Run.id).order_by(col(Run.id))).all())


def test_only_admins_launch_cancel_or_resume_runs(served: tuple[str, dict[str, Any]]) -> None:
    url, ids = served
    ann, admin = client(url, "ann", ids["study"]), client(url, "admin", ids["study"])
    before = run_ids()
    for api, args in (
        ("/launch_run", ("score", False)),
        ("/cancel_run", ("score", 0)),
        ("/resume_run", ("score", 0)),
    ):
        with pytest.raises(AppError, match="Annotators can review pairs only"):
            ann.predict(*args, api_name=api)
    assert run_ids() == before
    with read_session() as s:
        assert s.get(Run, ids["align"]).cancel_requested is False  # type: ignore[union-attr]

    # One active run per study: the running align run blocks a launch, with a way out.
    with pytest.raises(AppError, match="still running"):
        admin.predict("score", False, api_name="/launch_run")
    note, *_ = admin.predict("score", ids["align"], api_name="/cancel_run")
    assert "Cancel requested" in note
    with write_session() as s:  # the worker would record the stop; there is none in this test
        run = s.get(Run, ids["align"])
        run.status = "cancelled"  # type: ignore[union-attr]
        s.add(run)
    note, *_ = admin.predict("score", False, api_name="/launch_run")
    (new,) = set(run_ids()) - set(before)
    assert f"#{new}" in note
    with read_session() as s:
        run = s.get(Run, new)
    assert run is not None and (run.kind, run.status, run.requested_by) == (
        "score",
        "queued",
        "admin",
    )
    assert run.round_id == ids["r1"]  # the study's current round


def test_a_stop_verdict_is_shown_and_holds_compute_back_until_overridden(
    served: tuple[str, dict[str, Any]],
) -> None:
    url, ids = served
    with write_session() as s:
        run = s.get(Run, ids["align"])
        run.status = "succeeded"  # type: ignore[union-attr]
        s.add(run)
        check = SignalCheck(
            round_id=ids["r1"],
            level="stop",
            reasons=["student at chance on this task: preferences will be noise"],
            result={"metric": "accuracy", "label_share": 0.5},
        )
        s.add(check)
        s.flush()
        check_id = check.id
    admin = client(url, "admin", ids["study"])
    # Shown before anything is launched: on the Studies, Scores and Runs pages.
    shown = admin.predict(ids["study"], api_name="/studies_signal")
    assert "**stop**" in shown and "student at chance" in shown and "held back" in shown
    assert "answer label explains 50%" in shown
    target, *_ = admin.predict("round", 0, api_name="/runs_refresh")
    assert "**stop**" in target
    assert "**stop**" in admin.predict(ids["r1"], api_name="/scores_round")[1]

    before = run_ids()
    with pytest.raises(AppError, match=r"says stop .*student at chance.*Go ahead despite"):
        admin.predict("round", False, api_name="/launch_run")
    assert run_ids() == before  # nothing queued
    note, *_ = admin.predict("check", False, api_name="/launch_run")  # measuring is never held
    assert "(check)" in note
    with write_session() as s:
        for run_id in set(run_ids()) - set(before):
            queued = s.get(Run, run_id)
            queued.status = "succeeded"  # type: ignore[union-attr]
            s.add(queued)
    note, *_ = admin.predict("round", True, api_name="/launch_run")
    assert "(round)" in note
    with read_session() as s:
        assert s.get(SignalCheck, check_id).overridden_by == "admin"  # type: ignore[union-attr]
    assert "overridden by admin" in admin.predict(ids["study"], api_name="/studies_signal")


def test_runs_page_shows_the_active_run_with_escaped_message(
    served: tuple[str, dict[str, Any]],
) -> None:
    url, ids = served
    with write_session() as s:
        run = s.get(Run, ids["align"])
        run.message = PAYLOAD  # type: ignore[union-attr]
        s.add(run)
    admin = client(url, "admin", ids["study"])
    target, cli, _pick, progress, _curves, log, table = admin.predict(
        "score", 0, api_name="/runs_refresh"
    )
    assert "round 1" in target and cli == "teachlab run stage score --study s1"
    assert f"Run #{ids['align']} · align · running" in progress
    assert "aria-valuenow='30'" in progress and "3/10" in progress
    assert "<script>" not in progress and "&lt;script&gt;" in progress
    assert log == "(no log yet)"
    assert [row[0] for row in table["data"]] == [ids["align"], ids["draft_run"]]
    # The timer's poll reads the database again; curves and log are redrawn when they grow.
    polled = admin.predict(True, "round", 0, api_name="/runs_poll")
    assert f"Run #{ids['align']}" in polled[4]
    log = get_settings().runs_dir / f"run-{ids['align']:05d}" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text("step 4: loss 0.2\n", encoding="utf-8")
    with write_session() as s:
        run = s.get(Run, ids["align"])
        run.provenance = {"log": str(log)}  # type: ignore[union-attr]
        s.add(run)
        s.add(Metric(run_id=ids["align"], step=4, name="loss", value=0.2))
    polled = admin.predict(True, "round", 0, api_name="/runs_poll")
    assert polled[6] == "step 4: loss 0.2"
    loss = json.loads(polled[5]["plot"])["data"][0]
    assert loss["x"] == [1, 2, 3, 4]
    hidden = admin.predict(False, "round", 0, api_name="/runs_poll")
    assert hidden[0]["active"] is False  # off screen: the timer stops


def test_a_stale_review_decision_is_refused(served: tuple[str, dict[str, Any]]) -> None:
    url, ids = served
    ann, admin = client(url, "ann", ids["study"]), client(url, "admin", ids["study"])
    opened = {}
    for who, c in (("ann", ann), ("admin", admin)):
        opened[who] = c.predict(
            ids["r0"], "proposed", "all", "margin", ids["pair_r"], api_name="/review_open"
        )
        assert f"Pair <b>#{ids['pair_r']}</b>" in opened[who][2]
    out = ann.predict(
        ids["r0"], "proposed", "all", "margin", "looks right", api_name="/review_approve"
    )
    assert "approved" in out[-1]
    with pytest.raises(AppError, match=r"changed by ann .* reload"):
        admin.predict(ids["r0"], "proposed", "all", "margin", "", api_name="/review_reject")
    with read_session() as s:
        pair = s.get(Pair, ids["pair_r"])
        events = s.exec(
            select(AnnotationEvent).where(AnnotationEvent.pair_id == ids["pair_r"])
        ).all()
    assert pair is not None and (pair.status, pair.version, pair.annotator) == (
        "approved",
        2,
        "ann",
    )
    assert [(e.annotator, e.action, e.note) for e in events] == [("ann", "approve", "looks right")]
    # Reloaded, the admin sees version 2 and may decide; the annotator's undo is then stale too.
    admin.predict(ids["r0"], "all", "all", "margin", ids["pair_r"], api_name="/review_open")
    admin.predict(ids["r0"], "all", "all", "margin", "", api_name="/review_swap")
    with pytest.raises(AppError, match="changed by admin"):
        ann.predict(ids["r0"], "all", "all", "margin", api_name="/review_undo")


def test_review_decide_undo_and_queue_order(served: tuple[str, dict[str, Any]]) -> None:
    url, ids = served
    with write_session() as s:  # a second proposed pair with a smaller margin
        s.add(
            Pair(
                round_id=ids["r0"],
                level="question",
                rule="arte",
                prompt="P",
                chosen="c",
                rejected="d",
                margin=-0.05,
            )
        )
    ann = client(url, "ann", ids["study"])
    queue, progress, _view, chosen, rejected = ann.predict(
        ids["r0"], "proposed", "all", "margin", api_name="/review_queue"
    )
    assert [row[4] for row in queue["data"]] == ["proposed", "proposed"]
    assert [row[3] for row in queue["data"]] == [-0.05, 0.5]  # least certain first
    assert "Reviewed 1 / 3" in progress
    assert (chosen, rejected) == ("c", "d")  # the first pair in the queue is opened
    first = queue["data"][0][0]
    out = ann.predict(ids["r0"], "proposed", "all", "margin", "", api_name="/review_reject")
    assert f"Pair #{first}: **rejected**" in out[-1]
    assert f"Pair <b>#{ids['pair_r']}</b>" in out[2]  # moved on to the next pair
    out = ann.predict(ids["r0"], "proposed", "all", "margin", api_name="/review_undo")
    assert "proposed" in out[-1] and f"Pair <b>#{first}</b>" in out[2]
    with read_session() as s:
        assert s.get(Pair, first).status == "proposed"  # type: ignore[union-attr]
    out = ann.predict(
        ids["r0"], "proposed", "all", "margin", "fixed", "c!", "d", api_name="/review_edit"
    )
    assert f"Pair #{first}: **edited**" in out[-1]
    with read_session() as s:
        edited = s.get(Pair, first)
    assert edited is not None and (edited.chosen, edited.source, edited.note) == (
        "c!",
        "human",
        "fixed",
    )


def test_bulk_and_guidelines_are_admin_only(served: tuple[str, dict[str, Any]]) -> None:
    url, ids = served
    ann, admin = client(url, "ann", ids["study"]), client(url, "admin", ids["study"])
    args = (ids["r0"], "proposed", "all", "margin", 0.4, None, "all")
    with pytest.raises(AppError, match="Annotators"):
        ann.predict(*args, api_name="/review_bulk_approve")
    with pytest.raises(AppError, match="Annotators"):
        ann.predict("new rules", api_name="/save_guidelines")
    with pytest.raises(AppError, match="margin bound"):
        admin.predict(
            ids["r0"],
            "proposed",
            "all",
            "margin",
            None,
            None,
            "all",
            api_name="/review_bulk_approve",
        )
    out = admin.predict(*args, api_name="/review_bulk_approve")
    assert "**1** unreviewed pairs approved" in out[-1]
    with read_session() as s:
        assert s.get(Pair, ids["pair_r"]).status == "approved"  # type: ignore[union-attr]
    assert admin.predict("Be <b>strict</b>", api_name="/save_guidelines") == "Be <b>strict</b>"


def test_model_output_comes_back_escaped_in_drafts_and_review(
    served: tuple[str, dict[str, Any]],
) -> None:
    url, ids = served
    ann = client(url, "ann", ids["study"])
    detail = ann.predict(ids["bad"], api_name="/draft_detail")
    assert "<script>" not in detail and "<img" not in detail
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in detail
    assert "no &lt;input&gt; tag" in detail  # the parse error, shown and escaped
    with write_session() as s:
        pair = s.get(Pair, ids["pair_r"])
        pair.chosen = PAYLOAD  # type: ignore[union-attr]
        s.add(pair)
    view = ann.predict(ids["r0"], "all", "all", "id", ids["pair_r"], api_name="/review_open")
    assert "<script>" not in view[2] and "&lt;img src=x onerror" in view[2]
    assert view[3] == PAYLOAD  # the edit box gets the text itself (a textbox shows it inert)


def test_drafts_poll_picks_up_new_drafts_and_scores_show_gold(
    served: tuple[str, dict[str, Any]],
) -> None:
    url, ids = served
    ann = client(url, "ann", ids["study"])
    on_study = ann.predict(api_name="/drafts_study")
    assert on_study[0]["value"] == ids["r1"]  # the study's current round comes first
    assert on_study[1:4] == ("all", "all", "all")  # filters cleared for the new study
    filters = (ids["r0"], "all", "all", "all", "all", "all")
    first = ann.predict(True, *filters, api_name="/drafts_poll")
    rates, table = first[1], first[3]
    assert "round 0 questions: **67%** parsed (2/3" in rates
    assert len(table["data"]) == 5
    with write_session() as s:
        s.add(
            Draft(round_id=ids["r0"], kind="question", idem_key="live", input="Fresh?", target="y")
        )
    again = ann.predict(True, *filters, api_name="/drafts_poll")
    assert len(again[3]["data"]) == 6 and again[3]["data"][0][7] == "Fresh?"
    rejected = ann.predict(
        ids["r0"], "rejected", "all", "all", "all", "all", api_name="/drafts_filter"
    )
    assert [row[0] for row in rejected[2]["data"]] == [ids["bad"]]

    html, probes = ann.predict(ids["ra"], api_name="/score_detail")
    assert "score <b>0.750</b>" in html and "baseline 0.500" in html
    assert probes["headers"][:5] == ["probe", "input", "gold", "predicted", "correct"]
    assert [row[2] for row in probes["data"]] == ["yes", "no", "yes", "no"]
    base, signal, hist_r, _hist_q, _table = ann.predict(ids["r0"], api_name="/scores_round")
    assert "**warn**" in signal and "student near chance" in signal  # the seeded check
    assert "**0.500** on 4 probes" in base
    figure = json.loads(hist_r["plot"])
    assert figure["layout"]["shapes"][0]["x0"] == 0.5


def test_review_keyboard_shortcuts_target_buttons_that_exist() -> None:
    from pages import build_app
    from pages.review import KEYS_JS, SHORTCUTS

    app = build_app()
    elem_ids = {b.elem_id for b in app.blocks.values() if getattr(b, "elem_id", None)}
    assert set(SHORTCUTS.values()) <= elem_ids
    assert {"review-edit-chosen", "review-page", "runs-progress", "drafts-detail"} <= elem_ids
    assert all(re.search(rf'"{k}": "{v}"', KEYS_JS) for k, v in SHORTCUTS.items())
    assert "INPUT|TEXTAREA|SELECT" in KEYS_JS  # keys are ignored while typing


NODE = shutil.which("node")
KEYS_HARNESS = """
const clicks = [], listeners = [];
let focused = false;
const button = (id) => ({id, tagName: 'BUTTON', offsetParent: {}, disabled: false,
                         click() { clicks.push(id); }});
const els = {'review-page': {tagName: 'DIV', offsetParent: {}}};
for (const id of Object.values(IDS)) els[id] = button(id);
globalThis.window = {};
globalThis.document = {
  addEventListener: (type, fn) => listeners.push(fn),
  getElementById: (id) => els[id] || null,
  querySelector: (sel) => sel === '#review-edit-chosen textarea'
    ? {focus() { focused = true; }, scrollIntoView() {}} : null,
};
const install = new Function('element', 'trigger', 'props', 'server', 'upload', 'watch', CODE);
install({}, () => {}, {}, {}, null, () => {});
install({}, () => {}, {}, {}, null, () => {});  // the component mounted twice
const press = (key, target = {tagName: 'BODY'}, extra = {}) =>
  listeners.forEach((fn) => fn({key, target, preventDefault() {}, ...extra}));
const out = {listeners: listeners.length};
for (const k of ['a', 's', 'r', 'u', 'j', 'k', 'x']) press(k);
out.pressed = clicks.splice(0);
press('a', {tagName: 'TEXTAREA'}); press('a', {tagName: 'INPUT'});
press('a', {tagName: 'DIV', isContentEditable: true}); press('a', undefined, {ctrlKey: true});
out.typing = clicks.splice(0);
els['review-page'].offsetParent = null; press('a'); out.hidden = clicks.splice(0);
els['review-page'].offsetParent = {}; press('e'); out.focused = focused;
console.log(JSON.stringify(out));
"""


def run_node(script: str) -> Any:
    done = subprocess.run(
        [NODE, "-e", script], capture_output=True, text=True, timeout=30, check=True
    )  # type: ignore[list-item]
    return json.loads(done.stdout)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_review_keys_click_the_buttons_only_when_not_typing() -> None:
    from pages.review import KEYS_JS, SHORTCUTS

    script = KEYS_HARNESS.replace("IDS", json.dumps(SHORTCUTS)).replace("CODE", json.dumps(KEYS_JS))
    out = run_node(script)
    assert out["listeners"] == 1
    assert out["pressed"] == [SHORTCUTS[k] for k in "asrujk"]
    assert out["typing"] == [] and out["hidden"] == []
    assert out["focused"] is True  # e puts the cursor in the chosen text box


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_live_timer_probe_tells_whether_the_page_is_displayed() -> None:
    from pages.runs import visible_probe

    probe = visible_probe("drafts-page")
    script = f"""
    const els = {{}};
    globalThis.document = {{ getElementById: (id) => els[id] || null }};
    const probe = {probe};
    const out = [probe()];
    els['drafts-page'] = {{offsetParent: null}}; out.push(probe());
    els['drafts-page'] = {{offsetParent: {{}}}}; out.push(probe());
    console.log(JSON.stringify(out));
    """
    assert run_node(script) == [False, False, True]


def test_the_create_form_groups_every_setting_once() -> None:
    from dataclasses import fields

    from pages.studies import GROUPS, LABELS
    from teachlab.config import StudyConfig

    grouped = [name for _, _, names in GROUPS for name in names]
    assert sorted(grouped) == sorted(f.name for f in fields(StudyConfig))
    assert len(grouped) == len(set(grouped))
    assert set(LABELS) == set(grouped)
    assert GROUPS[0][1] is True and not any(open_ for _, open_, _ in GROUPS[1:])


def test_the_paper_preset_is_the_paper_configs_study_settings() -> None:
    import tomllib

    from teachlab.studies import PAPER_CONFIG, PRESETS, preset_config

    root = Path(__file__).resolve().parents[1]
    paper = tomllib.loads((root / "configs" / "paper-arte.toml").read_text())["study"]
    assert {k: (tuple(v) if isinstance(v, list) else v) for k, v in paper.items()} == PAPER_CONFIG
    demo = preset_config(next(p for p in PRESETS if p.startswith("demo")))
    assert (demo.n_probe, demo.pair_metric, demo.scaffold) == (24, "margin", True)
    with pytest.raises(ConfigError, match="Unknown preset 'huge'"):
        preset_config("huge")


def test_settings_problems_name_the_field_in_words() -> None:
    from pages.studies import settings_problems

    assert settings_problems(["n_questions", "n_probe"], (2, 24)) == []
    problems = settings_problems(["n_questions", "n_probe", "dpo_lr"], (None, 9000, "fast"))
    assert [label for label, _ in problems] == [
        "Questions per round",
        "Probe items",
        "DPO learning rate",
    ]
    assert "not a whole number" in problems[0][1]
    assert "from 2 to 500" in problems[1][1]
    # Between settings: more rationales than strategies.
    between = settings_problems(["n_rationales", "strategies"], (3, ["expert", "rules"]))
    assert between == [("", between[0][1])] and "only 2 strategies" in between[0][1]
