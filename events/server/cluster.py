"""A NATS cluster on one machine: several embedded nats-servers routed to each other.

`NatsCluster` runs them over loopback (routes between them, JetStream on each, a store
directory each), which is what streams with replicas need: the scale-out tests run on it, and
it is the smallest way to try `--replicas 3` on one machine.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import structlog

from events.server.errors import PortTakenError, ServerError
from events.server.process import START_TIMEOUT, ContextManaged, EmbeddedServer

log = structlog.get_logger(__name__)


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


class NatsCluster(ContextManaged):
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
