"""TeachLab: human-in-the-loop teaching studies (teacher drafts, student scores, DPO, SFT)."""

from __future__ import annotations

__version__ = "0.1.0"
