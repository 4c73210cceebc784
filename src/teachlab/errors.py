"""The one error hierarchy of TeachLab.

Every message says what happened, why, and what to do. Pages turn these into
``gr.Error``; the CLI prints the message on one line and exits non-zero.
"""

from __future__ import annotations


class TeachlabError(Exception):
    """Base class: a problem the user can act on (never a bug)."""


class ConfigError(TeachlabError):
    """A setting or configuration value is invalid."""


class ModelError(TeachlabError):
    """A model reference cannot be resolved or loaded."""


class DataError(TeachlabError):
    """Task data is missing or malformed."""


class NotFoundError(TeachlabError):
    """A study, round, run or pair does not exist."""


class ConflictError(TeachlabError):
    """A change was made on a stale view (someone else changed the row first)."""


class PermissionDenied(TeachlabError):
    """The user's role does not allow this action."""


class JobError(TeachlabError):
    """A job cannot be started, resumed or cancelled."""
