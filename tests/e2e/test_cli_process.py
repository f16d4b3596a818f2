"""The `ranvier` process as a shell sees it: what goes to stdout, stderr, and the exit code.

- a usage mistake (an unknown flag) is typer's short message on stderr, naming the flag, with
  exit code 2 and nothing on stdout;
- logs go to stderr at RANVIER_LOG_LEVEL for every command (`ranvier.cli.main` sets that up
  once), so stdout only ever carries what the command prints; `ranvier serve` logs without
  going through the control plane's helpers, so it shows that this holds for all of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ECHO = """
class Echo:
    def predict(self, X, feature_names):
        return X
"""


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")}
    return {**base, "PYTHONUNBUFFERED": "1", **extra}


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["events", "export", "--no-such-flag"], "Usage: ranvier events export [OPTIONS]"),
        (["get", "axon", "x", "--no-such-flag"], "Usage: ranvier get axon [OPTIONS]"),
        (["--no-such-flag"], "Usage: ranvier [OPTIONS] COMMAND"),
    ],
)
def test_an_unknown_flag_is_a_usage_error_on_stderr(
    argv: list[str], usage: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ranvier", *argv],
        capture_output=True,
        text=True,
        env=env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(usage)
    assert lines[1].startswith("Try 'ranvier")
    assert lines[-1] == "Error: No such option: --no-such-flag"
    assert "Traceback" not in done.stderr


def serve_until_listening(tmp_path: Path, **extra: str) -> tuple[str, str]:
    """Run `ranvier serve Echo` until it listens, stop it; its (stdout, stderr)."""
    (tmp_path / "Echo.py").write_text(ECHO, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ranvier", "serve", "Echo", "--port", "0"],
        cwd=tmp_path,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out: list[str] = []
    for line in proc.stdout:
        out.append(line)
        if "listening on" in line:
            break
    proc.terminate()
    rest, err = proc.communicate(timeout=30)
    return "".join(out) + rest, err


def test_logs_go_to_stderr_at_the_level_asked_never_to_stdout(tmp_path: Path) -> None:
    out, err = serve_until_listening(tmp_path, RANVIER_LOG_LEVEL="info")
    assert "ranvier: listening on http://127.0.0.1:" in out
    assert "serving.listening" not in out
    assert "serving.listening" in err

    out, err = serve_until_listening(tmp_path)  # default level: warnings and worse only
    assert "listening on" in out
    assert "serving.listening" not in out + err
