"""Start `ranvier serve` (and the router) as real subprocesses on free ports, for tests.

Each process is told `--port 0` and announces its URL on stdout (`ranvier: listening on URL`);
a thread keeps draining its output so a chatty server never blocks on a full pipe, and the
lines are kept for assertions and for the failure message when a server does not come up.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from executors.serving.routing import (
    Backend,
    DeployerTable,
    ModelRoute,
    Node,
    RouteTable,
    RoutingTable,
)

_LISTENING = re.compile(r"ranvier: listening on (http://\S+)")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    """A running server subprocess and its announced URL."""

    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        """Everything it printed so far."""
        return "".join(self.lines)


@contextmanager
def running(
    argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[ServerProcess]:
    """Run `argv`, wait for its `listening on` line, stop it (SIGTERM, then kill) on exit."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p
    )
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    urls: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = _LISTENING.search(line)
            if match:
                urls.put(match.group(1))
        urls.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        try:
            url = urls.get(timeout=timeout)
        except queue.Empty:
            url = None
        if url is None:
            raise RuntimeError(f"{argv} did not start:\n{''.join(lines)}")
        yield ServerProcess(process, url, lines)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def serve_argv(model_class: str, *extra: str) -> list[str]:
    """argv of `ranvier serve CLASS --port 0 ...` with this interpreter."""
    return [sys.executable, "-m", "ranvier", "serve", model_class, "--port", "0", *extra]


def router_argv(table: Path, *extra: str) -> list[str]:
    """argv of the router serving the table file `table`, with this interpreter."""
    return [sys.executable, "-m", "executors.serving.router", str(table), *extra]


def one_model(
    revision: int, *backends: Backend, routes: list[RouteTable] | None = None
) -> RoutingTable:
    """A table with one deployer (`quickstart/deploy`) serving model `m` from `backends`."""
    return RoutingTable(
        revision=revision,
        deployers=[
            DeployerTable(
                axon="quickstart",
                name="deploy",
                routes=routes or [RouteTable(path="/predict", dag=[Node(model="m")])],
                models=[ModelRoute(name="m", backends=list(backends))],
            )
        ],
    )
