"""What the browser tests share: Debian's Chromium driven by Playwright (its own browser download
is not used), one browser per module and a fresh tab per test, and the real app on a free port
with its own storage; helpers that click through the pages as a user does."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright
from seeding import Seeded, seed_study
from sqlmodel import select

from teachlab.db import Run, read_session
from teachlab.settings import get_settings

SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
CHROMIUM = Path(os.environ.get("TEACHLAB_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
# The Drafts, Scores and Review tabs refresh from their round picker when selected, and the
# study change fills the picker: a tab selected before that change lands stays empty (its
# refresh, sent with no round, answers last). The tests wait for the pickers to be filled.
ROUND_PICKERS = ("#drafts-round", "#scores-round", "#review-round")
WAIT_MS = 20_000  # two shared cores: a handler can take seconds while other work runs

expect.set_options(timeout=WAIT_MS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    fresh = context.new_page()
    fresh.set_default_timeout(WAIT_MS)
    yield fresh
    context.close()


@pytest.fixture
def seeded(db_path: Path) -> Seeded:
    return seed_study()


@pytest.fixture
def serve(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Start the app as ``launch`` does (same CSS and login), on a free port; returns its URL."""
    from pages import LOOK, auth_callback, build_app

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    apps = []

    def start(auth: str | None = None) -> str:
        if auth:
            monkeypatch.setenv("TEACHLAB_AUTH", auth)
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
        apps.append(app)
        return f"http://127.0.0.1:{port}/"

    yield start
    for app in apps:
        app.close()


def open_study(
    page: Page, url: str, seeded: Seeded, *, load: bool = True, settle: bool = True
) -> None:
    """Load the app and pick the study in the Studies page's dropdown, as a user does; with
    ``settle``, wait until the pages with a round picker have taken it in (``ROUND_PICKERS``)."""
    if load:
        page.goto(url)
    pick = page.get_by_role("combobox", name="Current study")
    expect(pick).to_be_visible()
    if settle:
        for name in ("Drafts", "Scores", "Review"):  # a tab's components exist once shown
            tab(page, name)
        tab(page, "Studies")
    pick.click()
    page.get_by_role("option", name=f"#{seeded.study} {seeded.name}").click()
    expect(pick).to_have_value(f"#{seeded.study} {seeded.name}")
    current = f"Round {len(seeded.rounds) - 1} (open)"
    for picker in ROUND_PICKERS if settle else ():
        expect(page.locator(f"{picker} input")).to_have_value(current)


def tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def login(page: Page, url: str, user: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill("pw")
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_role("combobox", name="Current study")).to_be_visible()


def run_rows() -> list[tuple[int, str, str | None]]:
    with read_session() as s:
        return [(r.id, r.kind, r.requested_by) for r in s.exec(select(Run)).all()]  # type: ignore[misc]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])
