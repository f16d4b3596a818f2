"""Every shell block of the README and of each example's README and header, run as written.

A documented command that fails is a bug users meet first, so each block found by
`tests/doc_blocks.py` runs in bash, verbatim, with only what a user's own machine provides:

- the working directory is a fresh directory holding a copy of the repository's `examples/`
  and `.venv` (a link to the virtualenv running the tests), as a checkout after `make install`
  is: `.venv/bin/ranvier` and `examples/...` resolve as the README says, and `ranvier up`
  keeps its state in that directory's `.ranvier`;
- the virtualenv's `bin` is first on PATH (the examples' headers call `ranvier`, as users
  whose virtualenv is active do), and PYTHONPATH starts with this tree, so the commands run the
  code under test; no `RANVIER_*` setting of the caller leaks in;
- `curl` fails on an HTTP error answer (`--fail-with-body`, `-sS`): a user sees the error
  body, the test sees the exit status. Nothing else is changed.

A block runs with `set -e -o pipefail`, so any failing command fails it. After each block,
pass or fail, `ranvier down` stops whatever it left running. Blocks marked
`docs-test: skip (reason)` are reported as skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_blocks import Block, documented_blocks
from tests.e2e import kit
from tests.e2e.kit import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BLOCK_TIMEOUT = 120.0
"""Seconds a block may take: `ranvier up ... --until deployed` takes about 10 s."""
USED_COMMANDS = ("bash", "curl", "jq")
"""What the documentation's blocks use besides ranvier (`.ci/run` installs curl and jq)."""


def _param(block: Block) -> object:
    marks = [pytest.mark.skip(reason=f"{block.id}: {block.skip}")] if block.skip else []
    return pytest.param(block, id=block.id, marks=marks)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory laid out as a user's checkout: `examples/` and `.venv`."""
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(
        REPO / "examples",
        work / "examples",
        ignore=shutil.ignore_patterns("__pycache__", ".ranvier*"),
    )
    venv = Path(sys.prefix)
    if not (venv / "bin" / "ranvier").exists():
        pytest.fail(f"run the tests from the virtualenv that `make install` made ({venv})")
    (work / ".venv").symlink_to(venv, target_is_directory=True)
    return work


@pytest.fixture
def block_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user with the virtualenv active, curl failing on HTTP errors."""
    missing = [c for c in USED_COMMANDS if shutil.which(c) is None]
    if missing:
        pytest.fail(f"the documented commands need {', '.join(missing)}; .ci/run installs them")
    shims = tmp_path / "shims"
    shims.mkdir()
    curl = shims / "curl"
    curl.write_text(f'#!/bin/sh\nexec {shutil.which("curl")} --fail-with-body -sS "$@"\n')
    curl.chmod(0o755)
    env = kit.clean_env()
    env["PATH"] = os.pathsep.join([str(shims), str(Path(sys.prefix) / "bin"), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `argv` in its own process group; on timeout the whole group is killed."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return -1, (
            f"{output}\n[timed out after {timeout:g} s: a block that runs until stopped, or for "
            "minutes, needs `<!-- docs-test: skip (the reason) -->` right before it]"
        )
    return process.returncode, output


@pytest.fixture
def stopped_afterwards(workdir: Path, block_env: dict[str, str]) -> Iterator[None]:
    """Whatever a block started in the background is stopped, even when the block fails."""
    yield
    if (workdir / ".ranvier").exists():
        _run([str(workdir / ".venv" / "bin" / "ranvier"), "down"], workdir, block_env, 60.0)


@pytest.mark.timeout(BLOCK_TIMEOUT + 60)
@pytest.mark.parametrize("block", [_param(b) for b in documented_blocks(REPO)])
@pytest.mark.usefixtures("stopped_afterwards")
def test_documented_block_runs_as_written(
    block: Block, workdir: Path, block_env: dict[str, str]
) -> None:
    script = workdir.parent / "block.sh"
    script.write_text(block.commands, encoding="utf-8")
    argv = ["bash", "-e", "-o", "pipefail", "-x", str(script)]
    code, output = _run(argv, workdir, block_env, BLOCK_TIMEOUT)
    if code != 0:
        pytest.fail(
            f"{block.id}: the documented commands failed (exit {code}):\n"
            f"{block.commands}\n--- output (bash -x) ---\n{output[-6000:]}",
            pytrace=False,
        )
