"""The CLI's contract: user mistakes are one-line errors with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from ranvier import __version__
from ranvier.cli import command, main
from ranvier.commands.common import cli_logging


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_unknown_command_is_a_usage_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "No such command" in err
    assert "Traceback" not in err


def test_version_flag_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_says_what_to_type_not_python_types(capsys: pytest.CaptureFixture[str]) -> None:
    paths = list(_commands(command()))
    assert len(paths) > 20
    for path in paths:
        assert main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        options = text[text.index("Options:") :]
        for python_type in ("<str>", "<int>", "<float>", "<path>", "list[", "<bool>"):
            assert python_type not in options, (path, python_type)
    main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--role <role,...>" in text
    assert "--state-dir <dir>" in text
    assert "--creds <file>" in text
    assert "--concurrency <n>" in text


def test_shell_completion_completes_commands_and_options() -> None:
    env = {**os.environ, "_RANVIER_COMPLETE": "complete_bash"}
    for words, cword, want in (("ranvier ev", "1", "events"), ("ranvier run --ro", "2", "--role")):
        done = subprocess.run(
            [sys.executable, "-m", "ranvier"],
            env={**env, "COMP_WORDS": words, "COMP_CWORD": cword},
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.split() == [want]
    script = subprocess.run(
        [sys.executable, "-m", "ranvier", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "_RANVIER_COMPLETE=complete_bash" in script.stdout


def test_json_logs_are_one_object_per_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANVIER_LOG_FORMAT", "json")
    monkeypatch.setenv("RANVIER_LOG_LEVEL", "info")
    with cli_logging():
        structlog.get_logger("t").info("role.started", role="engine", n=3)
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert {k: record[k] for k in ("event", "level", "role", "n")} == {
        "event": "role.started",
        "level": "info",
        "role": "engine",
        "n": 3,
    }
    assert record["timestamp"].endswith("Z")


def test_an_unknown_log_format_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANVIER_LOG_FORMAT", "xml")
    assert main(["version"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: RANVIER_LOG_FORMAT=xml: not a log format (set text or json)"
    )
