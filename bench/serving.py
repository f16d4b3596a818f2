"""Model servers and the router as real subprocesses on free ports (serving benchmarks, tests).

Each process is told `--port 0` and announces its URL on stdout (`ranvier: listening on URL`);
a thread keeps draining its output so a chatty server never blocks on a full pipe, and the
lines are kept for assertions and for the failure message when a server does not come up.
The serving benchmarks also share their set-up here: a model server behind a router that
routes one axon's `/predict` to it, and raw HTTP/1.1 requests.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from executors.serving.routing import (
    Backend,
    DeployerTable,
    ModelRoute,
    Node,
    RouteTable,
    RoutingTable,
)

_LISTENING = re.compile(r"ranvier: listening on (http://\S+)")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class ServerProcess:
    """A running server subprocess and its announced URL."""

    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def output(self) -> str:
        """Everything it printed so far."""
        return "".join(self.lines)


@contextmanager
def running(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    stop: signal.Signals = signal.SIGTERM,
) -> Iterator[ServerProcess]:
    """Run `argv`, wait for its `listening on` line, stop it on exit (`stop`, then kill).

    `stop=SIGINT` stops it like Ctrl-C, which lets a profiled server write its stats.
    """
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
    lines, urls, reader = _read_output(process)
    try:
        try:
            url = urls.get(timeout=timeout)
        except queue.Empty:
            url = None
        if url is None:
            raise RuntimeError(f"{argv} did not start:\n{''.join(lines)}")
        yield ServerProcess(process, url, lines)
    finally:
        process.send_signal(stop)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _read_output(
    process: subprocess.Popen[str],
) -> tuple[list[str], queue.Queue[str | None], threading.Thread]:
    """Drain `process`'s output in a thread: its lines, and the URLs it announces (then None)."""
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
    return lines, urls, reader


def serve_argv(model_class: str, *extra: str) -> list[str]:
    """argv of `ranvier serve CLASS --port 0 ...` with this interpreter."""
    return [sys.executable, "-m", "ranvier", "serve", model_class, "--port", "0", *extra]


def router_argv(table: Path, *extra: str, python: Sequence[str] = ()) -> list[str]:
    """argv of the router serving the table file `table`, with this interpreter (and `python`'s
    options before the module, e.g. `-m cProfile -o FILE`)."""
    return [sys.executable, *python, "-m", "executors.serving.router", str(table), *extra]


def one_model(
    revision: int,
    *backends: Backend,
    routes: list[RouteTable] | None = None,
    axon: str = "quickstart",
) -> RoutingTable:
    """A table with one deployer (`<axon>/deploy`) serving model `m` from `backends`."""
    return RoutingTable(
        revision=revision,
        deployers=[
            DeployerTable(
                axon=axon,
                name="deploy",
                routes=routes or [RouteTable(path="/predict", dag=[Node(model="m")])],
                models=[ModelRoute(name="m", backends=list(backends))],
            )
        ],
    )


def model_behind_router(
    stack: ExitStack,
    workdir: Path,
    serve: list[str],
    *,
    env: dict[str, str] | None = None,
    python: Sequence[str] = (),
) -> tuple[ServerProcess, ServerProcess]:
    """A model server (`serve`'s argv) and a router sending `/bench/predict` to it, both
    stopped with `stack` (SIGINT: a profiled router writes its stats)."""
    model = stack.enter_context(running(serve, cwd=workdir, env=env, stop=signal.SIGINT))
    backend = Backend(name="m", version="1", url=model.url, weight=100)
    table = workdir / "table.json"
    table.write_text(one_model(1, backend, axon="bench").model_dump_json(by_alias=True))
    router = stack.enter_context(
        running(router_argv(table, python=python), cwd=workdir, stop=signal.SIGINT)
    )
    return model, router


def request_bytes(url: str, body: bytes) -> bytes:
    """A raw HTTP/1.1 POST of a JSON `body` to `url` (keep-alive)."""
    parts = urlsplit(url)
    return (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (NaN when there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
