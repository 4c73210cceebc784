"""What a public demo lets a visitor spend: study sizes, runs at a time, upload size.

Demo mode (``TEACHLAB_DEMO_MODE``, on for a public Space) keeps the heavy stages off and holds
every study to these limits, checked on the server where studies are made and runs launched, so
the page's limits cannot be stepped around through the API.
"""

from __future__ import annotations

from sqlmodel import col, func, select

from teachlab.config import StudyConfig
from teachlab.errors import ConfigError, JobError

# The most each size setting may be in a demo study (a round stays within minutes on a CPU).
SIZE_LIMITS = {
    "n_questions": 16,
    "n_rationales": 4,
    "n_probe": 32,
    "n_test": 48,
    "n_tailored": 16,
    "max_new_tokens": 512,
    "dpo_max_steps": 8,
    "sft_max_steps": 8,
}
RUNS_PER_VISITOR = 1  # queued or running at once, per visitor
RUNS_IN_ALL = 3  # queued or running at once, all visitors together
UPLOAD_MB = 2


def check_config(config: StudyConfig) -> None:
    """ConfigError naming every setting above its demo limit (a step cap of 0 means whole
    epochs, so it is over the limit too)."""
    over = [
        f"{name}={getattr(config, name)} (at most {limit})"
        for name, limit in SIZE_LIMITS.items()
        if getattr(config, name) > limit
        or (name.endswith("_max_steps") and not getattr(config, name))
    ]
    if over:
        raise ConfigError(
            "This public demo keeps studies small: "
            + ", ".join(over)
            + ". Lower them (the demo preset fits), or run TeachLab yourself for larger studies."
        )


def check_runs(requested_by: str) -> None:
    """JobError when the visitor, or the demo as a whole, already has its runs going."""
    from teachlab.db import Run, read_session
    from teachlab.jobs.runs import ACTIVE

    with read_session() as session:
        active = col(Run.status).in_(ACTIVE) & col(Run.parent_id).is_(None)
        mine = session.exec(
            select(func.count()).select_from(Run).where(active, Run.requested_by == requested_by)
        ).one()
        everyone = session.exec(select(func.count()).select_from(Run).where(active)).one()
    if mine >= RUNS_PER_VISITOR:
        raise JobError(
            f"You already have {mine} run going; this public demo runs {RUNS_PER_VISITOR} per "
            "visitor at a time. Wait for it to finish (the Runs page shows it), or cancel it."
        )
    if everyone >= RUNS_IN_ALL:
        raise JobError(
            f"The demo is busy ({everyone} runs going, {RUNS_IN_ALL} at most); try again in a few "
            "minutes, or duplicate the Space to run your own."
        )


def describe() -> str:
    """The limits as the page's demo banner states them."""
    sizes = ", ".join(f"{name} ≤ {limit}" for name, limit in SIZE_LIMITS.items())
    return (
        f"studies up to {sizes}; {RUNS_PER_VISITOR} run at a time per visitor ({RUNS_IN_ALL} in "
        f"all); uploads up to {UPLOAD_MB} MB"
    )
