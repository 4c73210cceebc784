"""TeachLab's web app entry point (`python app.py`, or a Hugging Face Space's app_file)."""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a plain checkout (a Space installs requirements.txt only, not the package).
ROOT = Path(__file__).resolve().parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from pages import launch  # noqa: E402

if __name__ == "__main__":
    launch()
