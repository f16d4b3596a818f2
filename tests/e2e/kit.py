"""What the end-to-end tests share: `ranvier` run as a user runs it, and process checks.

Every test runs the CLI as a child process in a fresh state dir, with none of the caller's
`RANVIER_*` settings, so that what it sees is what a user typing the command would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def state_token(state: Path) -> str:
    """The token `ranvier up` / `ranvier server` keep in their state dir, for a test's own
    connection to their server (the CLI reads it from there by itself)."""
    token: str = json.loads((state / "credentials.json").read_text(encoding="utf-8"))["token"]
    return token


def clean_env() -> dict[str, str]:
    """This process's environment without any `RANVIER_*` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")}


def ranvier(
    *argv: str, state: Path, env: Mapping[str, str] | None = None, timeout: float = 170
) -> subprocess.CompletedProcess[str]:
    """`ranvier ARGV --state-dir STATE` from STATE's parent (`env`: default `clean_env()`)."""
    return subprocess.run(
        [sys.executable, "-m", "ranvier", *argv, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=clean_env() if env is None else dict(env),
        cwd=state.parent,
        timeout=timeout,
        check=False,
    )


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
