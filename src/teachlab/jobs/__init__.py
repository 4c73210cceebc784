"""Durable jobs: runs recorded in the study database, carried to a worker by huey."""

from __future__ import annotations

from teachlab.jobs.context import Cancelled, LocalContext, StageContext

__all__ = ["Cancelled", "LocalContext", "StageContext"]
