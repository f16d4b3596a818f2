"""Git artifacts on this machine: each revision cloned once into the Axon's workspace.

A clone goes to a temporary directory and is renamed into place, with a marker file written
last, so a checkout that exists is complete even if an executor died mid-clone; clones of the
same revision by concurrent runs wait for each other. git never prompts and is stopped (its
whole process tree) when it takes longer than the timeout or its caller is cancelled.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import structlog

from events.model import new_id
from executors.backends.local_setup import TaskSetupError, checkout_dir
from executors.backends.processes import stop_tree
from sensors.spec import Artifact, format_duration

log = structlog.get_logger(__name__)

GIT_TIMEOUT: Final = 600.0
_CLONE_MARKER: Final = ".ranvier-clone-complete"


class GitCheckouts:
    """Clones git artifacts for the local backend, once per revision."""

    def __init__(self, git: str, *, timeout: float, grace: float, env: Mapping[str, str]) -> None:
        """`env`: the environment git runs with (the tasks' base environment)."""
        self.git = git
        self.timeout = timeout
        self.grace = grace
        self.env = dict(env)
        self._locks: dict[Path, asyncio.Lock] = {}

    async def clone(self, artifact: Artifact, ws: Path) -> Path:
        """The artifact's checkout at its revision, cloned into the workspace once per revision."""
        git = artifact.git
        assert git is not None
        dest = checkout_dir(ws, artifact)
        lock = self._locks.setdefault(dest, asyncio.Lock())
        async with lock:
            if (dest / _CLONE_MARKER).exists():
                return dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{dest.name}.{new_id()}.tmp"
            try:
                await self._git("clone", "--quiet", "--no-checkout", git.repo, str(tmp))
                try:
                    await self._git("-C", str(tmp), "checkout", "--quiet", "--detach", git.revision)
                except TaskSetupError:
                    # A branch other than the default exists only as a remote-tracking ref.
                    await self._git(
                        "-C", str(tmp), "checkout", "--quiet", "--detach", f"origin/{git.revision}"
                    )
                (tmp / _CLONE_MARKER).touch()
                try:
                    tmp.rename(dest)
                except OSError:
                    if not (dest / _CLONE_MARKER).exists():
                        raise
            finally:
                if tmp.exists():
                    await asyncio.to_thread(shutil.rmtree, tmp, ignore_errors=True)
            log.info(
                "artifact.cloned", artifact=artifact.name, revision=git.revision, path=str(dest)
            )
            return dest

    async def _git(self, *args: str) -> None:
        env = {**self.env, "GIT_TERMINAL_PROMPT": "0"}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.git,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise TaskSetupError(
                f"command not found: {self.git}", hint="install git to use git artifacts"
            ) from None
        try:
            async with asyncio.timeout(self.timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            await stop_tree(proc.pid, self.grace, proc)
            raise TaskSetupError(
                f"git {args[0]} timed out after {format_duration(self.timeout)}"
            ) from None
        except BaseException:
            await asyncio.shield(stop_tree(proc.pid, self.grace, proc))
            raise
        if proc.returncode != 0:
            lines = [ln for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()]
            detail = lines[-1] if lines else f"exit code {proc.returncode}"
            shown = " ".join(a for a in args if not a.startswith("--"))
            raise TaskSetupError(f"git {shown} failed: {detail}")
