"""An experiment's forest plot as a PNG, for reports: the Compare page's figure, drawn by
Chromium from plotly's offline HTML (no image export package needed).

    python experiments/figure.py cpu3 --out docs/screenshots/forest-cpu3.png

Chromium comes from the system (``/usr/bin/chromium``, or ``--chromium PATH``); Playwright
drives it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pages.compare import forest_figure
from teachlab.experiments.results import results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="experiment name or id")
    parser.add_argument("--out", type=Path, required=True, help="where the PNG goes")
    parser.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"))
    parser.add_argument("--width", type=int, default=900)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    figure = forest_figure(results(args.experiment))
    rows = len(figure.layout.yaxis.tickvals or []) or 12
    height = max(360, 90 + 26 * rows)
    figure.update_layout(width=args.width, height=height, margin={"l": 20, "r": 20})
    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "forest.html"
        page_file.write_text(figure.to_html(include_plotlyjs=True, full_html=True))
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(args.chromium),
                args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
                headless=True,
            )
            page = browser.new_page(viewport={"width": args.width + 40, "height": height + 40})
            page.goto(page_file.as_uri())
            page.wait_for_selector(".main-svg")
            page.locator(".plotly-graph-div").screenshot(path=str(args.out))
            browser.close()
    print(f"wrote {args.out} ({args.width}×{height})")


if __name__ == "__main__":
    main()
