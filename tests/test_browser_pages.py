"""The pages as their users meet them, in a real headless Chromium: a careless user's refused
actions leave the page alone and their typed markup stays text; every page names the study it
shows and follows a switch; bulk review says what it will match; an annotator sees only their
own controls and lands on their own study; labels say what a number is."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from browsing import VIEWPORT, login, open_study, tab
from playwright.sync_api import Browser, Page, expect
from seeding import Seeded, running_run

from teachlab import review, studies
from teachlab.rounds import current_round

pytestmark = pytest.mark.browser

MARKUP_NAME = '<b>bold</b><img src=x onerror="window.__pwned=1">'


def toast(page: Page) -> object:
    """Gradio's toasts (warnings, errors), newest last."""
    return page.locator(".toast-body")


def no_error_badges(page: Page) -> None:
    """No component shows Gradio's red "Error" status (what a raised handler error leaves on
    every output of the event)."""
    expect(page.locator(".error").filter(has_text="Error")).to_have_count(0)


def test_a_refused_create_leaves_the_page_as_it_was(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    url = serve()
    open_study(page, url, seeded, settle=False)
    table = page.locator("#studies-table")
    expect(table).to_contain_text(seeded.name)
    page.get_by_text("Create a study").click()
    page.get_by_role("button", name="Create study").click()  # no name: refused

    message = page.locator(".toast-body").filter(has_text="Study name '' is not valid")
    expect(message).to_be_visible()
    expect(message).to_contain_text("use 1-64 letters")  # says how to fix it
    pick = page.get_by_role("combobox", name="Current study")
    expect(pick).to_have_value(f"#{seeded.study} {seeded.name}")
    expect(table).to_contain_text(seeded.name)
    no_error_badges(page)
    assert [s.name for s in studies.list_studies()] == [seeded.name]


def test_what_a_user_typed_shows_as_text_in_an_error(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    url = serve()
    open_study(page, url, seeded, settle=False)
    page.get_by_text("Create a study").click()
    page.get_by_label("Name", exact=True).fill(MARKUP_NAME)
    page.get_by_role("button", name="Create study").click()

    message = page.locator(".toast-body").filter(has_text="is not valid")
    expect(message).to_be_visible()
    expect(message).to_contain_text("<b>bold</b>")  # the characters, not bold text
    assert message.locator("b, img").count() == 0
    page.wait_for_timeout(500)  # a failed <img> load fires late
    assert page.evaluate("typeof window.__pwned") == "undefined"
    no_error_badges(page)


def test_every_page_names_the_study_it_shows_and_follows_a_switch(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    other = studies.duplicate_study(seeded.study, "empty-copy")  # no drafts, no scores
    url = serve()
    page.goto(url)
    context = page.locator("#current-context")
    expect(context).to_contain_text(f"Study #{other.id} empty-copy")  # the newest, on load
    pick = page.get_by_role("combobox", name="Current study")
    for _ in range(3):  # switch, then open Scores at once: the page must end on the new study
        for study_id, name, scored in ((seeded.study, seeded.name, True), (other.id, "", False)):
            name = name or "empty-copy"
            tab(page, "Studies")
            pick.click()
            page.get_by_role("option", name=f"#{study_id} {name}").click()
            tab(page, "Scores")
            expect(context).to_contain_text(f"Study #{study_id} {name}")
            # The seeded round has run draft, score and pairs; a fresh copy nothing yet.
            expect(context).to_contain_text("next: align" if scored else "next: draft")
            baseline = page.locator("#scores-baseline")
            if scored:
                expect(baseline).to_contain_text("Zero-shot baseline")
                expect(page.locator("#scores-table")).to_contain_text("rationale")
            else:
                expect(baseline).not_to_contain_text("Zero-shot baseline")


def test_the_drafts_page_says_a_run_is_drafting_rather_than_no_drafts(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    other = studies.duplicate_study(seeded.study, "fresh")
    run_id = running_run(other.id, current_round(other.id).id, "draft", total=3)
    url = serve()
    page.goto(url)  # the newest study, "fresh", is selected on load
    expect(page.locator("#current-context")).to_contain_text("fresh")
    tab(page, "Drafts")
    rates = page.locator("#drafts-parse-rate")
    expect(rates).to_contain_text(f"run #{run_id} (draft) is running")
    expect(rates).not_to_contain_text("launch a")


def test_bulk_review_shows_what_its_bounds_match_before_deciding(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    proposed = review.queue(seeded.current, status="proposed")
    margins = sorted({p.margin for p in proposed})
    assert len(margins) > 1, "the seeded pairs have margins to tell apart"
    cut = round(margins[len(margins) // 2], 6)
    wanted = [p for p in proposed if p.margin >= cut]
    url = serve()
    open_study(page, url, seeded)
    tab(page, "Review")
    page.get_by_text("Bulk decisions by margin").click()
    matched = page.locator("#review-bulk-match")
    page.locator("#review-bulk-min input, #review-bulk-min textarea").fill(str(cut))
    expect(matched).to_contain_text(f"{len(wanted)} unreviewed pairs match")

    # A ≤ bound below the ≥ one matches nothing: the page says so before anything is decided.
    upper = page.locator("#review-bulk-max input, #review-bulk-max textarea")
    upper.fill(str(cut - 1))
    expect(matched).to_contain_text("match no pair")
    page.locator("#review-bulk-approve").click()
    expect(page.locator(".toast-body").filter(has_text="match no pair")).to_be_visible()
    assert len(review.queue(seeded.current, status="proposed")) == len(proposed)

    upper.fill("")  # no upper bound
    expect(matched).to_contain_text(f"{len(wanted)} unreviewed pairs match")
    page.locator("#review-bulk-approve").click()
    expect(page.locator("#review-message")).to_contain_text(f"{len(wanted)}")
    left = review.queue(seeded.current, status="proposed")
    assert len(left) == len(proposed) - len(wanted)
    assert all(p.margin < cut for p in left)


def test_an_annotator_sees_their_controls_and_lands_on_their_study(
    browser: Browser, page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    first = review.queue(seeded.current, status="proposed")[0]
    review.decide(first.id, "approve", "ann", first.version)  # type: ignore[arg-type]
    newer = studies.duplicate_study(seeded.study, "newer")
    url = serve(auth="admin:pw:admin,ann:pw:annotator")
    login(page, url, "ann")
    pick = page.get_by_role("combobox", name="Current study")
    expect(pick).to_have_value(f"#{seeded.study} {seeded.name}")  # theirs, not the newest
    expect(page.locator("#current-user")).to_contain_text("Logged in as ann (annotator)")
    expect(page.get_by_role("link", name="Log out")).to_be_visible()
    expect(page.get_by_text("Create a study")).to_be_hidden()
    expect(page.get_by_role("button", name="Duplicate")).to_be_hidden()
    tab(page, "Export")
    expect(page.locator("#export-annotator-note")).to_be_visible()
    expect(page.get_by_role("button", name="Export", exact=True)).to_be_hidden()
    tab(page, "Runs")
    expect(page.locator("#runs-progress")).to_be_visible()  # watching runs is fine
    expect(page.locator("#runs-launch")).to_be_hidden()
    expect(page.locator("#runs-cancel")).to_be_hidden()
    tab(page, "Review")
    expect(page.locator("#review-pair")).to_contain_text("Pair #")
    expect(page.locator("#review-progress")).to_contain_text("ann decided 1")  # their own count
    expect(page.get_by_text("Bulk decisions by margin")).to_be_hidden()

    admin = browser.new_context(viewport=VIEWPORT).new_page()
    try:
        login(admin, url, "admin")
        expect(admin.get_by_role("combobox", name="Current study")).to_have_value(
            f"#{newer.id} newer"
        )
        expect(admin.locator("#current-user")).to_contain_text("(admin)")
        expect(admin.get_by_text("Create a study")).to_be_visible()
        tab(admin, "Runs")
        expect(admin.locator("#runs-launch")).to_be_visible()
    finally:
        admin.context.close()


def test_review_shows_a_rationale_pairs_question_and_names_its_scores(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    pair = next(p for p in review.queue(seeded.current) if p.level == "rationale")
    url = serve()
    open_study(page, url, seeded)
    tab(page, "Review")
    page.locator("#review-pair-id input").fill(str(pair.id))
    page.locator("#review-open").click()
    shown = page.locator("#review-pair")
    expect(shown).to_contain_text(f"Pair #{pair.id}")
    question = shown.locator(".tl-question")
    expect(question).to_be_visible()  # not folded away
    expect(question).to_contain_text("Question both rationales answer")
    expect(shown).to_contain_text("probe accuracy gap (chosen − rejected)")
    expect(shown).to_contain_text("zero-shot probe accuracy")


def test_table_headers_wrap_between_words_not_letters(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    url = serve()
    open_study(page, url, seeded, settle=False)
    headers = page.locator("#studies-table th")
    expect(headers.first).to_be_visible()
    heights = [box["height"] for box in (h.bounding_box() for h in headers.all()) if box]
    assert heights and max(heights) < 80, heights  # a letter-per-line "created" is > 100 px


def test_the_settings_form_names_bad_fields_and_stores_what_was_typed(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    url = serve()
    open_study(page, url, seeded, settle=False)
    page.get_by_text("Create a study").click()
    questions = page.get_by_label("Questions per round (n_questions)")
    expect(questions).to_have_value("8")  # the demo preset, as the demo study has it
    probes = page.get_by_label("Probe items (n_probe)")
    expect(probes).to_have_value("24")

    # An emptied box and an out-of-range one: named in words before anything is submitted.
    questions.fill("")
    probes.fill("9000")
    probes.press("Tab")
    check = page.locator("#create-check")
    expect(check).to_contain_text("Questions per round")
    expect(check).to_contain_text("Probe items")
    expect(check).to_contain_text("from 2 to 500")
    page.get_by_label("Name", exact=True).fill("typed")
    page.locator("#create-study").click()
    refused = page.locator(".toast-body").filter(has_text="n_questions")
    expect(refused).to_be_visible()
    assert [s.name for s in studies.list_studies()] == [seeded.name]

    # Typed values are stored as typed. The page scrolled with the mouse over a number box that
    # still has the focus: the browser would step the number (a typed 2 became an 8).
    questions.fill("2")
    box = questions.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 10, box["y"] + 5)
    for _ in range(6):
        page.mouse.wheel(0, -100)
        page.wait_for_timeout(50)
    expect(questions).to_have_value("2")
    probes.fill("12")
    page.locator("#create-study").click()
    expect(page.locator(".toast-body").filter(has_text="Created study")).to_be_visible()
    expect(page.locator("#current-context")).to_contain_text("typed")
    made = studies.get_study("typed")
    assert (made.config["n_questions"], made.config["n_probe"]) == (2, 12)
    assert made.config["pair_metric"] == "margin"  # the rest from the demo preset

    # Another preset fills every setting.
    page.get_by_label("Start from").click()
    page.get_by_role("option", name="paper (ARTE's settings; GPUs and a large teacher)").click()
    expect(questions).to_have_value("250")
    expect(probes).to_have_value("40")


def test_a_study_shows_its_settings_and_can_be_changed_archived_and_deleted(
    page: Page, serve: Callable[..., str], seeded: Seeded
) -> None:
    other = studies.duplicate_study(seeded.study, "scratch")
    url = serve()
    page.goto(url)  # "scratch", the newest, is current
    about = page.locator("#study-about")
    expect(about).to_contain_text(f"#{other.id} scratch")
    expect(about).to_contain_text(studies.get_study(other.id).description[:40])
    expect(about).to_contain_text("Probe items 8")  # a setting that differs from the defaults
    expect(page.locator("#study-about table")).to_contain_text("open")  # its round

    page.get_by_text("Change, archive or delete it").click()
    box = page.locator("#study-edit-description textarea")
    expect(box).to_have_value(studies.get_study(other.id).description)  # filled for this study
    box.fill("Scratch copy for <i>trying</i> things")
    page.get_by_label("Change a setting").click()
    page.get_by_role("option", name="DPO learning rate (dpo_lr)").click()
    page.locator("#study-edit-value input, #study-edit-value textarea").fill("0.0001")
    page.locator("#study-save").click()
    expect(about).to_contain_text("Scratch copy for <i>trying</i> things")  # as typed
    assert studies.get_study(other.id).config["dpo_lr"] == 1e-4

    page.locator("#study-archive").click()
    expect(about).to_contain_text("(archived)")
    expect(page.locator("#current-context")).to_contain_text("archived")
    assert studies.get_study(other.id).archived
    expect(page.locator("#study-archive")).to_have_text("Bring back from the archive")
    page.locator("#study-archive").click()
    expect(page.locator("#study-archive")).to_have_text("Archive")
    assert not studies.get_study(other.id).archived

    footprint = page.locator("#study-footprint")
    expect(footprint).to_contain_text("Deleting it removes 1 rounds")
    page.locator("#study-delete-confirm input, #study-delete-confirm textarea").fill("wrong")
    page.locator("#study-delete").click()
    expect(page.locator(".toast-body").filter(has_text="type its name 'scratch'")).to_be_visible()
    assert studies.get_study(other.id).name == "scratch"
    page.locator("#study-delete-confirm input, #study-delete-confirm textarea").fill("scratch")
    page.locator("#study-delete").click()
    expect(page.locator(".toast-body").filter(has_text="Deleted study scratch")).to_be_visible()
    expect(page.locator("#current-context")).to_contain_text(f"#{seeded.study} {seeded.name}")
    assert [s.name for s in studies.list_studies()] == [seeded.name]


def test_a_public_demo_states_its_limits_and_holds_to_them(
    page: Page, serve: Callable[..., str], seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEACHLAB_DEMO_MODE", "true")
    url = serve()
    open_study(page, url, seeded, settle=False)
    banner = page.locator("#demo-limits")
    expect(banner).to_contain_text("n_questions ≤ 16")
    expect(banner).to_contain_text("1 run at a time per visitor")
    expect(banner).to_contain_text("uploads up to 2 MB")

    page.get_by_text("Create a study").click()
    page.get_by_label("Name", exact=True).fill("too-big")
    page.get_by_label("Questions per round (n_questions)").fill("100")
    page.locator("#create-study").click()
    refused = page.locator(".toast-body").filter(has_text="keeps studies small")
    expect(refused).to_contain_text("n_questions=100 (at most 16)")
    assert [s.name for s in studies.list_studies()] == [seeded.name]

    tab(page, "Runs")
    page.locator("#runs-launch").click()  # a whole round: it trains, so it is off here
    expect(
        page.locator(".toast-body").filter(has_text="switched off in this public demo")
    ).to_be_visible()
