"""What is wrong with an Axon file and where: one issue per mistake, and the error holding them."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from events.errors import RanvierError
from sensors.checks import Loc


@dataclass(frozen=True)
class SpecIssue:
    """One mistake in an Axon file, with its 1-based position (0 when it has none)."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: error: {what}"


class SpecError(RanvierError, ValueError):
    """An Axon file is invalid; `issues` holds every mistake found, in file order."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.column))
        first = str(self.issues[0]) if self.issues else "invalid Axon"
        more = len(self.issues) - 1
        super().__init__(
            first + (f" (and {more} more)" if more else ""),
            hint=None,
        )


def issue_at(
    file: str, mark: yaml.Mark | None, path: str, message: str, offset: int = 0
) -> SpecIssue:
    """The issue at a YAML mark (0-based) moved `offset` columns right; no position without one."""
    if mark is None:
        return SpecIssue(file, 0, 0, path, message)
    return SpecIssue(file, mark.line + 1, mark.column + 1 + offset, path, message)


def format_loc(loc: Loc) -> str:
    """`sensors[1].triggers[0].task` for ("spec", "sensors", 1, "triggers", 0, "task")."""
    if loc[:1] == ("spec",) and len(loc) > 1:
        loc = loc[1:]
    out = ""
    for segment in loc:
        if isinstance(segment, int):
            out += f"[{segment}]"
        else:
            out += f".{segment}" if out else str(segment)
    return out
