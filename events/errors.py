"""The root of ranvier's errors.

Every error a user can cause (a bad file, an unreachable server, a wrong password) is a
`RanvierError`: the CLI prints its message on one line and exits non-zero, never a traceback.
Errors also inherit the builtin they resemble, so callers can catch either.
"""

from __future__ import annotations


class RanvierError(Exception):
    """A failure the user can act on; `str()` is the one-line message, `hint` what to do."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
