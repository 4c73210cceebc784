"""The researcher's pages in a real headless Chromium against the real app on a free port: the
review keyboard, live run progress, inert model output, roles, and the README's screenshots.

Debian's Chromium drives the pages (Playwright's own browser download is not used); one browser
serves the whole module and each test gets a fresh tab, its own storage and its own app.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from browsing import SHOTS, VIEWPORT, _png_size, login, open_study, run_rows, tab
from playwright.sync_api import Browser, Page, expect
from seeding import Seeded, pair_status, running_run

from teachlab import review, studies
from teachlab.db import Draft, Metric, Pair, Run, write_session
from teachlab.jobs import runs
from teachlab.settings import get_settings

pytestmark = pytest.mark.browser

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'


def first_proposed(round_id: int) -> Pair:
    return review.queue(round_id, status="proposed", order="margin")[0]


def test_a_key_press_decides_a_pair_and_the_decision_survives_a_reload(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    url = serve()
    total = len(seeded.pairs[seeded.current])
    first = first_proposed(seeded.current)
    open_study(page, url, seeded)
    tab(page, "Review")
    shown, progress = page.locator("#review-pair"), page.locator("#review-progress")
    expect(shown).to_contain_text(f"Pair #{first.id}")
    expect(progress).to_contain_text(f"Reviewed 0 / {total}")

    # An "a" typed into the note box is text, not a decision; the same key outside it approves.
    note = page.locator("#review-note textarea")
    note.click()
    page.keyboard.type("a")
    expect(note).to_have_value("a")
    page.get_by_role("heading", name="Review", exact=True).click()
    page.keyboard.press("a")
    expect(page.locator("#review-message")).to_contain_text(f"Pair #{first.id}: approved")
    expect(progress).to_contain_text(f"Reviewed 1 / {total}")
    assert pair_status(first.id) == "approved"  # type: ignore[arg-type]
    events = review.history(first.id)  # type: ignore[arg-type]
    assert [(e.annotator, e.action, e.note) for e in events] == [("local", "approve", "a")]

    page.reload()
    open_study(page, url, seeded)
    tab(page, "Review")
    expect(progress).to_contain_text(f"Reviewed 1 / {total}")
    expect(shown).not_to_contain_text(f"Pair #{first.id} ")  # off the to-review queue
    page.locator("#review-pair-id input").fill(str(first.id))
    page.locator("#review-open").click()
    expect(shown).to_contain_text(f"Pair #{first.id}")
    expect(shown).to_contain_text("status approved")
    expect(shown).to_contain_text("last decided by local (a)")


def test_runs_page_follows_progress_without_a_reload(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    run_id = running_run(seeded.study, seeded.current, "align", total=40)
    held = runs.Lease(run_id, runs.get_run(run_id).lease)  # as the executor holds it
    runs.set_progress(held, 3, 40, "DPO step 3/40")
    url = serve()
    open_study(page, url, seeded, settle=False)  # the Runs page reads the study itself
    tab(page, "Runs")
    bar = page.locator("#runs-progress")
    expect(bar).to_contain_text(f"Run #{run_id} · align · running")
    expect(bar).to_contain_text("3/40")
    page.evaluate("window.__sameDocument = true")

    runs.set_progress(held, 17, 40, "DPO step 17/40")  # what the training process writes
    expect(bar).to_contain_text("17/40 · 42%")
    expect(bar).to_contain_text("DPO step 17/40")
    expect(bar.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "42")
    with write_session() as s:
        s.add_all(Metric(run_id=run_id, step=i, name="loss", value=0.7 - i / 100) for i in (1, 2))
    runs.finish(held, "succeeded")
    expect(bar).to_contain_text(f"Run #{run_id} · align · succeeded")
    assert page.evaluate("window.__sameDocument") is True


def test_model_output_is_shown_as_text_and_never_runs(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    bad = seeded.rejected_draft[seeded.current]
    first = first_proposed(seeded.current)
    with write_session() as s:
        draft = s.get(Draft, bad)
        draft.raw_output = PAYLOAD  # type: ignore[union-attr]
        s.add(draft)
        pair = s.get(Pair, first.id)
        pair.chosen = PAYLOAD  # type: ignore[union-attr]
        s.add(pair)
    url = serve()
    open_study(page, url, seeded)
    tab(page, "Drafts")
    page.get_by_role("combobox", name="Status").click()
    page.get_by_role("option", name="rejected").click()
    table = page.locator("#drafts-table")
    expect(table.get_by_role("row")).to_have_count(2)  # the header and the parse failure
    expect(table).to_contain_text(PAYLOAD)
    page.locator("#drafts-id input").fill(str(bad))
    page.locator("#drafts-show").click()
    detail = page.locator("#drafts-detail")
    expect(detail).to_contain_text(PAYLOAD)  # the literal text, on screen
    tab(page, "Review")
    shown = page.locator("#review-pair")
    expect(shown).to_contain_text(f"Pair #{first.id}")
    expect(shown).to_contain_text(PAYLOAD)
    expect(page.locator("#review-edit-chosen textarea")).to_have_value(PAYLOAD)
    page.wait_for_timeout(500)  # a failed <img> load fires late
    assert page.locator("#drafts-detail img, #review-pair img, #drafts-table img").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_an_annotator_cannot_launch_a_run_but_an_admin_can(
    browser: Browser, page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    url = serve(auth="admin:pw:admin,ann:pw:annotator")
    before = run_rows()
    login(page, url, "ann")
    open_study(page, url, seeded, load=False, settle=False)
    tab(page, "Runs")
    # An annotator is not offered Launch (the server refuses it too: tests/test_pages.py).
    expect(page.locator("#runs-progress")).to_be_visible()
    expect(page.get_by_role("button", name="Launch")).to_be_hidden()
    assert run_rows() == before

    # The same click by an admin queues a run (so the refusal above is about the role).
    admin = browser.new_context(viewport=VIEWPORT).new_page()
    try:
        login(admin, url, "admin")
        open_study(admin, url, seeded, load=False, settle=False)
        tab(admin, "Runs")
        admin.get_by_role("button", name="Launch").click()
        expect(admin.locator("#runs-message")).to_contain_text("Queued run")
    finally:
        admin.context.close()
    new = [r for r in run_rows() if r not in before]
    assert [(kind, who) for _, kind, who in new] == [("round", "admin")]


def _shoot(page: Page, name: str, anchor: str) -> Path:
    """Scroll ``anchor`` to the top, then save the 1280×900 viewport as docs/screenshots/."""
    page.locator(anchor).first.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(1000)  # plots draw once on screen, with a transition
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _mid_training(seeded: Seeded) -> int:
    """A DPO run half way: progress, curves so far and a log, as the Runs page shows it live."""
    run_id = running_run(seeded.study, seeded.current, "align", total=40)
    log = get_settings().runs_dir / f"run-{run_id:05d}" / "log.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    lines = ["loading bundled:gemma-3-270m (LoRA r=16) on cpu", "12 approved pairs, 3 epochs"]
    with write_session() as s:
        for step in range(1, 25):
            loss, margin = 0.69 - 0.011 * step, 0.018 * step
            s.add(Metric(run_id=run_id, step=step, name="loss", value=loss))
            s.add(Metric(run_id=run_id, step=step, name="rewards/margins", value=margin))
            lines.append(f"step {step}/40 loss {loss:.3f} rewards/margins {margin:.3f}")
        run = s.get(Run, run_id)
        run.provenance = {"log": str(log)}  # type: ignore[union-attr]
        s.add(run)
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    runs.set_progress(runs.Lease(run_id, runs.get_run(run_id).lease), 24, 40, "DPO step 24/40")
    return run_id


def test_screenshots_of_every_page(page: Page, serve: Callable[..., str], seeded: Seeded) -> None:
    studies.duplicate_study(seeded.study, "dates-margin-rule")
    run_id = _mid_training(seeded)
    url = serve()
    SHOTS.mkdir(parents=True, exist_ok=True)
    open_study(page, url, seeded)
    page.get_by_text("Create a study").click()
    expect(page.get_by_text("dates-margin-rule").filter(visible=True)).to_have_count(1)
    shots = [_shoot(page, "studies", "#masthead")]

    tab(page, "Drafts")
    expect(page.locator("#drafts-parse-rate")).to_contain_text("parsed")
    rationale = seeded.drafts[seeded.current][2]
    page.locator("#drafts-id input").fill(str(rationale))
    page.locator("#drafts-show").click()
    expect(page.locator("#drafts-detail")).to_contain_text(f"Draft #{rationale}")
    shots.append(_shoot(page, "drafts", "#drafts-parse-rate"))

    tab(page, "Scores")
    expect(page.locator("#scores-baseline")).to_contain_text("Zero-shot baseline")
    page.locator("#scores-id input").fill(str(rationale))
    page.locator("#scores-show").click()
    expect(page.locator("#scores-detail")).to_contain_text(f"Draft #{rationale}")
    shots.append(_shoot(page, "scores", "[role=tablist]"))

    tab(page, "Review")
    pair = next(
        p
        for p in review.queue(seeded.current, order="margin")
        if p.level == "rationale" and p.chosen.split("<ans>")[-1] != p.rejected.split("<ans>")[-1]
    )
    page.locator("#review-pair-id input").fill(str(pair.id))
    page.locator("#review-open").click()
    expect(page.locator("#review-pair")).to_contain_text(f"Pair #{pair.id}")
    shots.append(_shoot(page, "review", "#review-keys"))

    tab(page, "Runs")
    expect(page.locator("#runs-progress")).to_contain_text(f"Run #{run_id} · align · running")
    expect(page.locator("#runs-log")).to_contain_text("step 24/40")
    shots.append(_shoot(page, "runs", "#runs-pick"))

    tab(page, "Progress")
    expect(page.locator("#progress-signal")).to_contain_text("Round 1")
    shots.append(_shoot(page, "progress", "#progress-accuracy"))

    tab(page, "Export")
    page.get_by_role("button", name="Export", exact=True).click()
    expect(page.get_by_text(re.compile(r"\d+ rows exported as"))).to_be_visible()
    shots.append(_shoot(page, "export", "[role=tablist]"))

    assert [p.stem for p in shots] == [
        "studies",
        "drafts",
        "scores",
        "review",
        "runs",
        "progress",
        "export",
    ]
    assert all(_png_size(p) == (1280, 900) for p in shots)
