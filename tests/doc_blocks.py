"""The shell commands the documentation tells users to run, found as a user reads them.

Documentation is tested as written: every shell block of `README.md`, of each
`examples/*/README.md` and of each example's header (the comment at the top of
`examples/*/axon.yaml`) is run by `tests/e2e/test_documented_commands.py`. This module only
finds the blocks (plain functions over text, tested in `tests/unit/test_doc_blocks.py`):

- Markdown: every fenced block whose language is `sh`, `bash` or `shell`.
- An Axon's header: every run of comment lines indented by three or more spaces after the `#`
  (`#   ranvier up ...`), the indentation they share removed.

A block that cannot run inside the test suite (it runs the whole suite, trains for minutes,
serves in the foreground until stopped) is marked right before it, with the reason, which the
test reports as the skip reason, so that nothing is dropped silently:

    <!-- docs-test: skip (runs the whole test suite) -->        in Markdown
    # docs-test: skip (trains GPT-2 for minutes)                 in an Axon's header

A Markdown marker may wrap over several lines up to its `-->`. Only blank lines may stand
between a marker and its block; a marker without a reason, or one that no block follows, is an
error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell"})

_FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
_MD_MARKER = re.compile(r"^\s*<!--\s*docs-test:(?P<body>.*?)-->\s*$", re.DOTALL)
_MD_MARKER_START = re.compile(r"^\s*<!--\s*docs-test:")
_YAML_MARKER = re.compile(r"^#\s*docs-test:(?P<body>.*)$")
_SKIP = re.compile(r"^\s*skip\s*\((?P<reason>.*\S.*)\)\s*$")
_HEADER_COMMAND = re.compile(r"^#(?P<indent> {3,})\S")


class DocBlockError(ValueError):
    """A docs-test marker that is malformed or marks nothing; the message names file and line."""


@dataclass(frozen=True)
class Block:
    """A documented shell block: where it is, its commands, and why it is skipped (if it is)."""

    path: str
    """The file, relative to the repository root."""
    line: int
    """Line of the block's first command (1-based)."""
    commands: str
    """The commands as a user would paste them."""
    skip: str | None = None
    """The marker's reason when the block is not run."""

    @property
    def id(self) -> str:
        """`FILE:LINE`, the block's test id."""
        return f"{self.path}:{self.line}"


def _skip_reason(body: str, where: str) -> str:
    match = _SKIP.match(body)
    if match is None:
        raise DocBlockError(
            f"{where}: docs-test marker {body.strip()!r} is not understood; "
            "write `docs-test: skip (the reason)`"
        )
    return match.group("reason").strip()


def markdown_blocks(text: str, path: str) -> list[Block]:
    """The shell blocks of a Markdown text, each with the skip reason marked before it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    pending: tuple[int, str] | None = None  # a marker's line and reason, awaiting its block
    index = 0
    while index < len(lines):
        line = lines[index]
        start = index
        if _MD_MARKER_START.match(line):  # a marker may wrap over lines, up to its `-->`
            while "-->" not in line and index + 1 < len(lines):
                index += 1
                line = f"{line} {lines[index].strip()}"
        marker = _MD_MARKER.match(line)
        fence = _FENCE.match(line)
        if _MD_MARKER_START.match(line) and marker is None:
            raise DocBlockError(f"{path}:{start + 1}: docs-test marker without its closing -->")
        if marker is not None:
            if pending is not None:
                raise DocBlockError(f"{path}:{pending[0]}: docs-test marker followed by another")
            pending = (start + 1, _skip_reason(marker.group("body"), f"{path}:{start + 1}"))
        elif fence is not None:
            close = fence.group("fence")
            end = index + 1
            while end < len(lines) and not lines[end].strip().startswith(close):
                end += 1
            if fence.group("lang") in SHELL_LANGUAGES:
                body = "\n".join(lines[index + 1 : end])
                skip = pending[1] if pending is not None else None
                blocks.append(Block(path, index + 2, body + "\n", skip))
            elif pending is not None:
                kind = fence.group("lang") or "plain"
                raise DocBlockError(
                    f"{path}:{pending[0]}: docs-test marker before a {kind} block; "
                    "markers go right before a shell block"
                )
            pending = None
            index = end
        elif line.strip() and pending is not None:
            raise DocBlockError(
                f"{path}:{pending[0]}: docs-test marker not followed by a shell block "
                "(only blank lines may stand between them)"
            )
        index += 1
    if pending is not None:
        raise DocBlockError(f"{path}:{pending[0]}: docs-test marker at the end, before no block")
    return blocks


def header_blocks(text: str, path: str) -> list[Block]:
    """The command blocks of a file's leading comment (an Axon's header)."""
    blocks: list[Block] = []
    current: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None

    def flush() -> None:
        nonlocal pending
        if not current:
            return
        indent = min(len(_indent(text)) for _, text in current)
        commands = "".join(f"{text[1 + indent :]}\n" for _, text in current)
        skip = pending[1] if pending is not None else None
        blocks.append(Block(path, current[0][0], commands, skip))
        current.clear()
        pending = None

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("#"):
            break
        if _HEADER_COMMAND.match(line):
            current.append((number, line))
            continue
        flush()
        marker = _YAML_MARKER.match(line)
        if marker is not None:
            if pending is not None:
                raise DocBlockError(f"{path}:{pending[0]}: docs-test marker followed by another")
            pending = (number, _skip_reason(marker.group("body"), f"{path}:{number}"))
        elif line.strip("# ") and pending is not None:
            raise DocBlockError(
                f"{path}:{pending[0]}: docs-test marker not followed by a command block "
                "(only empty comment lines may stand between them)"
            )
    flush()
    if pending is not None:
        raise DocBlockError(f"{path}:{pending[0]}: docs-test marker at the end, before no block")
    return blocks


def _indent(line: str) -> str:
    match = _HEADER_COMMAND.match(line)
    return match.group("indent") if match else ""


def documented_files(repo: Path) -> list[Path]:
    """The files whose commands are tested: the README, each example's README and header."""
    examples = repo / "examples"
    return [
        repo / "README.md",
        *sorted(examples.glob("*/README.md")),
        *sorted(examples.glob("*/axon.yaml")),
    ]


def documented_blocks(repo: Path) -> list[Block]:
    """Every shell block of the documented files, in file order."""
    blocks: list[Block] = []
    for file in documented_files(repo):
        text = file.read_text(encoding="utf-8")
        name = file.relative_to(repo).as_posix()
        if file.suffix == ".md":
            blocks.extend(markdown_blocks(text, name))
        else:
            blocks.extend(header_blocks(text, name))
    return blocks
