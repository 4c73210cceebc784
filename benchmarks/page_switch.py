"""First paint of each page after switching study, as a user waits for it in a real browser.

    .venv/bin/python benchmarks/page_switch.py [--n 8] [--questions 40]

The app runs in its own process on a temporary storage folder with a realistic study
(tests/seeding.py: three rounds, a few hundred drafts and pairs) and an empty copy of it. In
headless Chromium (Debian's), each repetition selects the empty copy, then the seeded study on
the Studies page, opens a page's tab and times until that page shows the seeded study's content
(the slow path: every component of the page recomputed for a new study). The named baseline, in
the same run: opening the same tab again with the study unchanged (its content is there
already: the cost of showing a tab, and of its own refresh where it has one).
Prints median and p95 per page and condition.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from _setup import machine  # noqa: E402
from handler_latency import _free_port, _p95, _stop, _wait_up  # noqa: E402

# page -> (tab name, locator, text that shows the seeded study's content is painted)
PAGES = {
    "Studies": ("Studies", "#study-about", "#{study} bench"),
    "Drafts": ("Drafts", "#drafts-parse-rate", "parsed"),
    "Scores": ("Scores", "#scores-baseline", "Zero-shot baseline"),
    "Review": ("Review", "#review-pair", "Pair #"),
    "Runs": ("Runs", "#runs-progress", "Run #"),
    "Progress": ("Progress", "#progress-signal", "Round"),
}


def serve(port: int) -> None:
    """The app as ``launch`` builds it (queue, concurrency, theme), without the worker."""
    from pages import LOOK, build_app

    app = build_app()
    app.queue(default_concurrency_limit=8)
    app.launch(server_port=port, prevent_thread_lock=True, quiet=True, **LOOK)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="repetitions per page and condition")
    parser.add_argument("--questions", type=int, default=40, help="questions per round")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)

    storage = Path(tempfile.mkdtemp(prefix="teachlab-bench-")) / "storage"
    storage.mkdir()
    os.environ.update(
        TEACHLAB_STORAGE=str(storage),
        TEACHLAB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    os.environ.pop("TEACHLAB_AUTH", None)
    from playwright.sync_api import expect, sync_playwright
    from seeding import seed_study

    from teachlab import studies
    from teachlab.db import init_db

    init_db()
    seeded = seed_study("bench", n_questions=args.questions, n_rationales=6, rule="ranked")
    empty = studies.duplicate_study(seeded.study, "empty")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)],
        env=os.environ.copy(),
    )
    rows: list[tuple[str, str, list[float]]] = []
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_up(url, server)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=os.environ.get("TEACHLAB_TEST_CHROMIUM", "/usr/bin/chromium"),
                args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
                headless=True,
            )
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            expect.set_options(timeout=60_000)
            page.goto(url)
            context = page.locator("#current-context")
            pick = page.get_by_role("combobox", name="Current study")

            def choose(study_id: int, name: str) -> None:
                page.get_by_role("tab", name="Studies", exact=True).click()
                pick.click()
                page.get_by_role("option", name=f"#{study_id} {name}").click()

            for tab in {t for t, _, _ in PAGES.values()}:  # each tab's components exist once shown
                page.get_by_role("tab", name=tab, exact=True).click()
            for name, (tab, where, text) in PAGES.items():
                text = text.format(study=seeded.study)
                switch, same = [], []
                for _ in range(args.n):
                    choose(empty.id, "empty")  # type: ignore[arg-type]
                    expect(context).to_contain_text(f"#{empty.id} empty")
                    expect(page.locator(where)).not_to_contain_text(text)
                    choose(seeded.study, "bench")
                    start = time.perf_counter()
                    page.get_by_role("tab", name=tab, exact=True).click()
                    expect(page.locator(where)).to_contain_text(text)
                    expect(context).to_contain_text(f"#{seeded.study} bench")
                    switch.append(1000 * (time.perf_counter() - start))
                    # The baseline: leave the tab and come back, the study unchanged.
                    other = "Export" if tab != "Export" else "Studies"
                    page.get_by_role("tab", name=other, exact=True).click()
                    page.wait_for_timeout(300)
                    start = time.perf_counter()
                    page.get_by_role("tab", name=tab, exact=True).click()
                    expect(page.locator(where)).to_be_visible()
                    expect(page.locator(where)).to_contain_text(text)
                    same.append(1000 * (time.perf_counter() - start))
                rows += [
                    (name, "after switching study", switch),
                    (name, "tab again, same study (baseline)", same),
                ]
                print(f"{name}: switch {statistics.median(switch):.0f} ms", flush=True)
            browser.close()
    finally:
        _stop(server)

    print(f"\nMachine: {machine()}")
    print(f"Study: {args.questions} questions × 6 rationales per round, 3 rounds; n={args.n}\n")
    print("| page | condition | median ms | p95 ms |")
    print("|---|---|---|---|")
    for name, condition, values in rows:
        print(f"| {name} | {condition} | {statistics.median(values):.0f} | {_p95(values):.0f} |")


if __name__ == "__main__":
    main()
