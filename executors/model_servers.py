"""Model servers on this machine: what to launch for a model version, and knowing it is up.

A routed version is served by `ranvier serve` processes (replicas) started from the deploy
task's sources (`working_dir`, the local backend's rule) with the version's MODEL_PATH. What a
server is started with (argv, working directory, environment) is hashed into its `spec`, so a
deploy reuses a running server exactly when nothing about it changed. A server is up once it
logs the URL it listens on and that URL answers `/health`; each is recorded on disk
(`ServerRecord`) so that nothing outlives its executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from events.model import ActionRequest
from executors.backends.local_setup import (
    TaskSetupError,
    checkout_dir,
    local_base,
    task_source,
    working_dir_in,
)
from executors.backends.processes import SessionRecord, last_line
from executors.deploy_flow import DeployError
from sensors.spec import Axon, EnvVar, Task

_POLL: Final = 0.05
_LISTENING: Final = re.compile(rb"ranvier: listening on (http://\S+)")
_LOG_HEAD: Final = 65536


def working_dir(axon: Axon, task: Task, axon_dir: Path, workspace: Path) -> Path:
    """Where a deploy task's class file is: the local backend's rule (`task_source`).

    A git artifact is the checkout the trainer already cloned into the workspace.
    """
    try:
        source = task_source(axon, task)
        base = local_base(source, axon_dir)
        if base is None:
            assert source.artifact is not None  # local_base: only a git artifact has no base
            base = checkout_dir(workspace, source.artifact)
            if not base.is_dir():
                raise DeployError(
                    f"git artifact {source.artifact.name!r} of task {task.name!r} is not "
                    f"checked out",
                    hint="run a task from it first (the trainer clones it)",
                )
        return working_dir_in(base, source, task)
    except TaskSetupError as exc:
        raise DeployError(exc.message, hint=exc.hint) from None


def server_env(items: Iterable[EnvVar] | object, where: str) -> dict[str, str]:
    """Environment variables of a task or deployer spec; valueFrom only resolves on Kubernetes."""
    if not items:
        return {}
    out: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        var = item if isinstance(item, EnvVar) else EnvVar.model_validate(item)
        if var.value_from is not None:
            raise DeployError(
                f"{where}: env {var.name} takes its value from a Secret or ConfigMap",
                hint="give it a value for local deploys",
            )
        out[var.name] = var.value or ""
    return out


@dataclass(frozen=True)
class ServerRecord(SessionRecord):
    """A model server process, as written to disk so that nothing outlives its executor."""

    id: str
    namespace: str
    axon: str
    deployer: str
    task: str
    backend: str
    version: str
    replica: int
    spec: str
    log_path: str
    model_path: str
    started: str
    url: str | None = None


@dataclass(frozen=True)
class ServerLaunch:
    """Everything needed to start the servers of one backend model version."""

    backend: str
    version: str
    spec: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    model_path: Path
    replicas: int
    task: str


def serve_argv(
    python: str, model: str, *, model_path: Path, host: str, cwd: Path, version: int
) -> list[str]:
    """The `ranvier serve` command of one server of a model version (on a free port)."""
    return [
        python,
        "-m",
        "ranvier",
        "serve",
        model,
        "--model-path",
        str(model_path),
        "--port",
        "0",
        "--host",
        host,
        "--workdir",
        str(cwd),
        "--model-version",
        str(version),
    ]


def launch_spec(
    request: ActionRequest,
    deployer: str,
    *,
    backend: str,
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
) -> str:
    """A short hash of everything a server is started with: equal specs, reusable servers."""
    what = [request.namespace, request.axon, deployer, backend, argv, str(cwd), sorted(env.items())]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


async def await_healthy(
    proc: asyncio.subprocess.Process, log_path: Path, what: str, within: float
) -> str:
    """The URL of a started server once it answers `/health`; DeployError if it exits first
    or is not healthy within `within` seconds (with the last line of its log)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    url: str | None = None
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if proc.returncode is not None:
                last = last_line(log_path, 300, 8192)
                raise DeployError(
                    f"{what} did not start: exited with code {proc.returncode}"
                    + (f": {last}" if last else "")
                )
            if url is None:
                url = listening_url(log_path)
            if url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/health")).status_code == 200:
                        return url
            if loop.time() >= deadline:
                last = last_line(log_path, 300, 8192)
                raise DeployError(
                    f"{what} not healthy after {within:g}s" + (f": {last}" if last else ""),
                    hint="see its log " + str(log_path),
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL):
                    await asyncio.shield(proc.wait())


def listening_url(log_path: Path) -> str | None:
    """The URL a server logged it listens on (`ranvier: listening on http://...`), if yet."""
    try:
        with log_path.open("rb") as f:
            head = f.read(_LOG_HEAD)
    except OSError:
        return None
    match = _LISTENING.search(head)
    return match.group(1).decode() if match else None
