"""The fault suite's web half (``pytest -m faults``): annotators deciding the same pairs at once
through the served Review page, and model output carrying HTML/JS opened on every page in a real
headless Chromium. Set TEACHLAB_TEST_FAULT_REPORT to a folder to keep each test's figures as JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from builders import pair, round_, study, two_round_study, update
from gradio_client import Client
from gradio_client.exceptions import AppError
from sqlmodel import col, select

from teachlab import review, studies
from teachlab.db import AnnotationEvent, Draft, Pair, Run, Study, read_session
from teachlab.db.tables import utcnow
from teachlab.settings import get_settings
from tests.conftest import fault_report

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[1]

ANNOTATORS = [f"ann{i}" for i in range(1, 9)]
N_PAIRS = 200
ACTIONS = {"approve": "/review_approve", "reject": "/review_reject", "swap": "/review_swap"}
SHOWN_VERSION = re.compile(r"version (\d+)")
CONFLICT = re.compile(r"since you opened it \(version (\d+), now (\d+)\)")
ACCEPTED = re.compile(r"Pair #(\d+): \*\*(\w+)\*\* \(version (\d+)\)")
# The app as ``launch`` serves it (queue, login, CSS), without the worker: argv[1] is the port.
SERVER = """
import sys
from pages import CSS, auth_callback, build_app
from teachlab.settings import get_settings
app = build_app()
app.queue(default_concurrency_limit=8)
app.launch(server_port=int(sys.argv[1]), auth=auth_callback(get_settings()), css=CSS, quiet=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app served in this process as ``launch`` serves it (queue, CSS; no logins, so the
    visitor is an admin), on a free port."""
    from pages import CSS, build_app

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    get_settings.cache_clear()
    app = build_app()
    app.queue(default_concurrency_limit=8)
    port = free_port()
    app.launch(prevent_thread_lock=True, server_port=port, css=CSS, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


# ---------------------------------------------------------------- concurrent annotators


@dataclass
class Attempt:
    """One decision a client tried: what it saw, what it asked for and what came back."""

    annotator: str
    pair_id: int
    seen: int  # the version the page showed when the client opened the pair
    action: str
    outcome: str = ""  # accepted | conflict | error
    version: int | None = None  # accepted: the new version; conflict: the version it found
    detail: str = ""


def proposed_pairs(n: int) -> tuple[int, list[int]]:
    """A round with ``n`` proposed pairs (distinct texts, margins spread around zero)."""
    rnd = round_(study("concurrent", task_ref="bigbench:not-fetched"))
    rng = random.Random(7)
    ids = [
        pair(
            rnd,
            f"chosen text {i}",
            f"rejected text {i}",
            prompt=f"prompt {i}",
            margin=round(rng.uniform(-1, 1), 3),
            chosen_score=0.5,
            rejected_score=0.25,
        ).id
        for i in range(n)
    ]
    return rnd.id, ids  # type: ignore[return-value]


def annotate(url: str, who: str, round_id: int, pair_ids: list[int], seed: int) -> list[Attempt]:
    """One annotator's session: open every pair in its own random order and decide it."""
    rng = random.Random(seed)
    order = list(pair_ids)
    rng.shuffle(order)
    # Plain HTTP on localhost: no TLS to verify, and gradio_client would otherwise load the CA
    # bundle for every request (ten times the client's CPU, on the two cores the server needs).
    client = Client(url, auth=(who, "pw"), verbose=False, analytics_enabled=False, ssl_verify=False)
    filters = (round_id, "proposed", "all", "margin")
    attempts = []
    for pid in order:
        action = rng.choice(list(ACTIONS))
        try:
            shown = client.predict(*filters, pid, api_name="/review_open")[2]
        except AppError as exc:
            attempts.append(Attempt(who, pid, -1, action, "error", detail=f"open: {exc}"))
            continue
        seen = SHOWN_VERSION.search(shown)
        if f"Pair <b>#{pid}</b>" not in shown or seen is None:
            attempts.append(Attempt(who, pid, -1, action, "error", detail=f"open: {shown[:200]}"))
            continue
        attempt = Attempt(who, pid, int(seen.group(1)), action)
        try:
            message = client.predict(*filters, f"{who}:{pid}", api_name=ACTIONS[action])[-1]
            done = ACCEPTED.search(message or "")
            if done is None or int(done.group(1)) != pid:
                attempt.outcome, attempt.detail = "error", f"decide: {message}"
            else:
                attempt.outcome, attempt.version = "accepted", int(done.group(3))
        except AppError as exc:
            stale = CONFLICT.search(str(exc))
            if stale is not None and int(stale.group(1)) == attempt.seen:
                attempt.outcome, attempt.version = "conflict", int(stale.group(2))
            else:
                attempt.outcome, attempt.detail = "error", f"decide: {exc}"
        attempts.append(attempt)
    client.close()
    return attempts


def audit(attempts: list[Attempt], pair_ids: list[int]) -> dict[str, list[str]]:
    """Every way the database can disagree with what the clients were told, as readable lines."""
    with read_session() as s:
        pairs = {p.id: p for p in s.exec(select(Pair).where(col(Pair.id).in_(pair_ids))).all()}
        events = s.exec(
            select(AnnotationEvent)
            .where(col(AnnotationEvent.pair_id).in_(pair_ids))
            .order_by(col(AnnotationEvent.id))
        ).all()
    by_key: dict[tuple[str, int], list[AnnotationEvent]] = {}
    per_pair: dict[int, list[AnnotationEvent]] = {pid: [] for pid in pair_ids}
    for e in events:
        by_key.setdefault((e.annotator, e.pair_id), []).append(e)
        per_pair[e.pair_id].append(e)
    lost, unseen, phantom, chain = [], [], [], []
    for a in attempts:
        found = by_key.get((a.annotator, a.pair_id), [])
        if a.outcome == "accepted":
            if len(found) != 1:
                lost.append(f"{a.annotator} on pair {a.pair_id}: {len(found)} audit rows")
                continue
            e = found[0]
            if (e.action, e.note) != (a.action, f"{a.annotator}:{a.pair_id}"):
                lost.append(f"{a.annotator} on pair {a.pair_id}: audit says {e.action} {e.note!r}")
            applied = (e.before["version"], e.after["version"], a.version)
            if applied != (a.seen, a.seen + 1, a.seen + 1):
                unseen.append(
                    f"{a.annotator} on pair {a.pair_id}: saw v{a.seen}, told v{a.version}, "
                    f"applied v{e.before['version']}→v{e.after['version']}"
                )
        elif found:
            phantom.append(f"{a.annotator} on pair {a.pair_id}: refused but audited")
        if a.outcome == "conflict" and a.version == a.seen:
            phantom.append(f"{a.annotator} on pair {a.pair_id}: refused at the version it saw")
    for pid in pair_ids:
        p, history = pairs[pid], per_pair[pid]
        if p.version != 1 + len(history):
            chain.append(f"pair {pid}: version {p.version} after {len(history)} decisions")
        if [e.before["version"] for e in history] != list(range(1, len(history) + 1)):
            chain.append(f"pair {pid}: audit versions {[e.before['version'] for e in history]}")
        if history:
            last = history[-1].after
            final = (p.status, p.chosen, p.rejected, p.annotator)
            expected = (last["status"], last["chosen"], last["rejected"], history[-1].annotator)
            if final != expected:
                chain.append(f"pair {pid}: row {final} but last event {expected}")
        elif p.status != "proposed":
            chain.append(f"pair {pid}: {p.status} without any audit row")
    return {"lost": lost, "unseen": unseen, "phantom": phantom, "chain": chain}


@contextmanager
def served_apart(logins: str, log: Path) -> Iterator[str]:
    """The app in its own process (as ``teachlab serve`` runs it), so the clients' threads and
    the server do not share one interpreter lock; its URL once it answers."""
    port = free_port()
    env = {**os.environ, "TEACHLAB_AUTH": logins, "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < end, "the app did not start in 120 s"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def decide_all(url: str, round_id: int, pair_ids: list[int]) -> tuple[list[Attempt], float]:
    """Every annotator's session at once, one thread each; their attempts and the wall time."""
    results: dict[str, list[Attempt]] = {}
    failures: list[BaseException] = []

    def work(i: int, who: str) -> None:
        try:
            results[who] = annotate(url, who, round_id, pair_ids, seed=100 + i)
        except BaseException as exc:  # reported below, with every other thread's
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i, w)) for i, w in enumerate(ANNOTATORS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.monotonic() - start
    assert not failures, failures
    assert not any(t.is_alive() for t in threads), "an annotator's session hung"
    return [a for who in ANNOTATORS for a in results[who]], wall


def test_concurrent_annotators_lose_no_decision(db_path: Path) -> None:
    """Eight annotators, each in its own logged-in session and thread, decide all 200 pairs of a
    round in their own random orders through the Review page's endpoints. Each decision carries
    the version its page showed; the database must hold every accepted one exactly once, applied
    on the version its annotator saw, and refuse the rest as conflicts."""
    round_id, pair_ids = proposed_pairs(N_PAIRS)
    logins = ",".join(["admin:pw:admin", *(f"{a}:pw:annotator" for a in ANNOTATORS)])
    with served_apart(logins, db_path.parent / "server.log") as url:
        attempts, wall = decide_all(url, round_id, pair_ids)
    errors = [
        f"{a.annotator} on pair {a.pair_id}: {a.detail}" for a in attempts if a.outcome == "error"
    ]
    problems = audit(attempts, pair_ids)
    accepted = sum(a.outcome == "accepted" for a in attempts)
    conflicts = sum(a.outcome == "conflict" for a in attempts)
    figures = {
        "clients": len(ANNOTATORS),
        "pairs": N_PAIRS,
        "decisions_attempted": len(attempts),
        "accepted": accepted,
        "refused_as_conflict": conflicts,
        "other_errors": len(errors),
        "lost_or_overwritten": sum(len(v) for v in problems.values()),
        "wall_s": round(wall, 1),
        "decisions_per_s": round(len(attempts) / wall, 1),
    }
    fault_report("concurrent_annotators", figures)
    print(json.dumps(figures))
    assert len(attempts) == len(ANNOTATORS) * N_PAIRS
    assert errors == []
    assert problems == {"lost": [], "unseen": [], "phantom": [], "chain": []}
    assert accepted + conflicts == len(attempts)
    assert accepted >= N_PAIRS  # every pair was decided at least once (its first opener won)


# ---------------------------------------------------------------- model output in a real browser

# Each payload sets its own mark, so a failure names the one that ran.
PAYLOADS = [
    '<img src=x onerror="window.__pwned=1">',
    "<script>window.__pwned=2</script>",
    '<svg onload="window.__pwned=3"></svg>',
    '<a href="javascript:window.__pwned=4">click me</a>',
    '<iframe srcdoc="<script>parent.__pwned=5</script>"></iframe>',
    "[markdown link](javascript:window.__pwned=6)",
    "![markdown image](javascript:window.__pwned=7)",
    '</pre><img src=x onerror="window.__pwned=8">',
    '</textarea></code></td></div><img src=x onerror="window.__pwned=9">',
    '"\'><img src=x onerror="window.__pwned=10">',
    '` <img src=x onerror="window.__pwned=11"> `',
    '<details open ontoggle="window.__pwned=12">',
]
TEXT = " ".join(PAYLOADS)
# Where a payload still becomes (inert) markup, for a reason reported rather than fixed in this
# change; a script, a handler or a frame there still fails the test.
TOLERATED = {
    "review-guidelines": "the guidelines are the admins' own Markdown, HTML sanitised by Gradio; "
    "tests/test_pages.py pins /save_guidelines echoing the text unescaped",
}
INERT = ("<img src=x>", "<img src=javascript:>")
CHROMIUM = Path(os.environ.get("TEACHLAB_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
WAIT_MS = 20_000
# Finds what a payload would have made in the page (shadow roots included): its elements, event
# handler attributes and script URLs. Gradio's own markup has none of these.
SCAN_JS = r"""() => {
  const found = [];
  const where = (el) => {
    const owner = el.closest('[id]');
    return ` in #${owner ? owner.id : ''}`;
  };
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      const tag = el.tagName.toLowerCase();
      const at = where(el);
      if (tag === 'script' && /^\s*(window|parent)\.__pwned=\d+\s*$/.test(el.textContent)) {
        found.push(`<script>${at}`);
      }
      if (tag === 'img' && el.getAttribute('src') === 'x') found.push(`<img src=x>${at}`);
      if (tag === 'iframe' && el.hasAttribute('srcdoc')) found.push(`<iframe srcdoc>${at}`);
      for (const a of el.attributes) {
        const v = a.value.trim().toLowerCase();
        if (a.name.startsWith('on') && v.includes('__pwned')) found.push(`<${tag} ${a.name}>${at}`);
        if (v.startsWith('javascript:')) found.push(`<${tag} ${a.name}=javascript:>${at}`);
      }
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return found;
}"""
# What a person can read in the element ``selector``: its rendered text and its visible fields.
TEXT_JS = """(selector) => {
  const root = document.querySelector(selector);
  const fields = [...root.querySelectorAll('textarea, input')].filter(el => el.checkVisibility());
  return [root.innerText, ...fields.map(el => el.value)].join('\\n');
}"""


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def payload_study(folder: Path) -> dict[str, int]:
    """The pages' two-round study with ``TEXT`` (every payload) in each text a model or a person
    wrote: the study's name, description and guidelines; a parse failure's output, reason and
    prompt; a question, its rationales and their answers; two pairs of the open round (one
    decided with a note); a live draft run's message and a failed align run's message and error."""
    ids = two_round_study(folder)
    update(Study, ids["study"], name=TEXT, description=TEXT)
    studies.update_guidelines(ids["study"], TEXT)
    update(Draft, ids["bad"], raw_output=TEXT, reason=TEXT, prompt=TEXT)
    update(Draft, ids["q1"], input=TEXT)
    update(Draft, ids["ra"], rationale=TEXT, answer=TEXT, strategy=TEXT)
    update(Draft, ids["rb"], answer=TEXT)
    decided = pair(ids["r1"], TEXT, f"B {TEXT}", prompt=TEXT, margin=0.3)
    review.decide(decided.id, "approve", "ann", 1, note=TEXT)  # type: ignore[arg-type]
    proposed = pair(ids["r1"], TEXT, f"C {TEXT}", prompt=TEXT, margin=0.1)
    now = utcnow()
    update(Run, ids["draft_run"], status="running", message=TEXT, heartbeat_at=now)
    update(Run, ids["align"], status="failed", message=TEXT, error=TEXT, finished_at=now)
    return ids | {"decided": decided.id, "proposed": proposed.id}  # type: ignore[dict-item]


@dataclass
class Finding:
    view: str
    ran: str | None  # the mark of the payload that ran, if one did
    elements: list[str]  # markup a payload made, "<what> in #<element id>"
    hidden: list[str]  # payloads not readable as text on the view
    tolerated: list[str]  # inert markup in a region of ``TOLERATED``


def inspect(page: Any, view: str, shown_in: str) -> Finding:
    """What the payloads did on the page as it is now; each must be readable in ``shown_in``."""
    page.wait_for_timeout(400)  # a failed <img> load and <details> toggle fire late
    ran = page.evaluate("() => window.__pwned === undefined ? null : String(window.__pwned)")
    text = page.evaluate(TEXT_JS, shown_in)
    hidden = [p for p in PAYLOADS if p not in text]
    made = sorted(set(page.evaluate(SCAN_JS)))
    tolerated = [m for m in made if m.startswith(INERT) and m.split(" in #")[-1] in TOLERATED]
    elements = [m for m in made if m not in tolerated]
    return Finding(view, ran, elements, hidden, tolerated)


@pytest.mark.browser
def test_model_output_with_html_and_js_stays_inert_on_every_page(
    browser: Any, app_url: str, tmp_path: Path
) -> None:
    """Every payload in every text the pages show, opened in headless Chromium: none runs, none
    becomes markup, and each is on screen as the text it is."""
    from playwright.sync_api import expect

    ids = payload_study(tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    findings = []

    def tab(name: str) -> None:
        page.get_by_role("tab", name=name, exact=True).click()

    try:
        page.goto(app_url)
        pick = page.get_by_role("combobox", name="Current study")
        expect(pick).to_be_visible()
        for name in ("Drafts", "Scores", "Review"):  # a tab's components exist once shown
            tab(name)
        tab("Studies")
        pick.click()
        page.get_by_role("option", name=f"#{ids['study']} ").first.click()
        for picker in ("#drafts-round", "#scores-round", "#review-round"):
            expect(page.locator(f"{picker} input")).to_have_value("Round 1 (open)")
        findings.append(inspect(page, "Studies", "body"))

        tab("Drafts")
        expect(page.locator("#drafts-live")).to_contain_text(f"Run #{ids['draft_run']}")
        for draft in ("bad", "ra"):
            page.locator("#drafts-id input").fill(str(ids[draft]))
            page.locator("#drafts-show").click()
            expect(page.locator("#drafts-detail")).to_contain_text(f"Draft #{ids[draft]}")
            findings.append(inspect(page, f"Drafts, draft {draft}", "#drafts-detail"))

        tab("Scores")
        page.locator("#scores-id input").fill(str(ids["ra"]))
        page.locator("#scores-show").click()
        expect(page.locator("#scores-detail")).to_contain_text(f"Draft #{ids['ra']}")
        findings.append(inspect(page, "Scores, draft ra", "#scores-detail"))

        tab("Review")
        shown = page.locator("#review-pair")
        expect(shown).to_contain_text(f"Pair #{ids['proposed']}")
        page.get_by_text("Guidelines", exact=True).click()
        findings.append(inspect(page, "Review, proposed pair", "#review-page"))
        page.locator("#review-pair-id input").fill(str(ids["decided"]))
        page.locator("#review-open").click()
        expect(shown).to_contain_text(f"Pair #{ids['decided']}")
        page.get_by_text("History (1)").click()
        findings.append(inspect(page, "Review, decided pair", "#review-pair"))

        tab("Runs")
        progress = page.locator("#runs-progress")
        expect(progress).to_contain_text(f"Run #{ids['draft_run']} · draft · running")
        findings.append(inspect(page, "Runs, live run", "#runs-progress"))
        page.get_by_role("combobox", name="Watch").click()
        page.get_by_role("option", name=f"#{ids['align']} align (failed)").click()
        expect(progress).to_contain_text(f"Run #{ids['align']} · align · failed")
        findings.append(inspect(page, "Runs, failed run", "#runs-progress"))

        tab("Progress")
        expect(page.locator("#progress-confounds")).to_contain_text("Round 0")
        findings.append(inspect(page, "Progress", "#progress-confounds"))

        tab("Export")
        page.get_by_role("button", name="Export", exact=True).click()
        expect(page.get_by_text(re.compile(r"\d+ rows exported as"))).to_be_visible()
        findings.append(inspect(page, "Export", "#export-card"))
    finally:
        context.close()
    bad = [f for f in findings if f.ran or f.elements or f.hidden]
    fault_report(
        "inert_payloads",
        {
            "payloads": len(PAYLOADS),
            "views": len(findings),
            "payload_views_checked": len(PAYLOADS) * len(findings),
            "ran": sum(bool(f.ran) for f in findings),
            "became_markup": sum(len(f.elements) for f in findings),
            "not_shown_as_text": sum(len(f.hidden) for f in findings),
            "tolerated_inert_markup": sorted({t for f in findings for t in f.tolerated}),
        },
    )
    assert bad == [], "\n".join(map(str, bad))
