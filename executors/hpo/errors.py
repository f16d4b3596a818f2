"""The two ways a study stops before its schedule ends."""

from __future__ import annotations

from typing import Final

from events.errors import RanvierError

SHUTDOWN: Final = "cancelled: executor shut down"
"""The message of a run stopped by an executor shutdown (the backends' default reason)."""


class StudyError(RanvierError, RuntimeError):
    """A study could not go on (its journal was changed by another executor, a bad record)."""


class StudyInterrupted(RuntimeError):
    """The executor is shutting down mid-study: leave the study to be resumed, report nothing."""
