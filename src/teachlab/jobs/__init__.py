"""Durable jobs: runs recorded in the study database, carried to a worker by huey."""

from __future__ import annotations

from teachlab.jobs.context import Cancelled, LocalContext, Stage, StageContext, StageTable

__all__ = ["Cancelled", "LocalContext", "Stage", "StageContext", "StageTable"]
