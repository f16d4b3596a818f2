"""What `/healthz` and `/readyz` say about the roles of one `ranvier run` process.

Alive means the process's event loop turns: a heartbeat task stamps the time every second, and
a loop stuck in a blocking call (or a deadlock) stops stamping, so the liveness probe fails and
Kubernetes restarts the pod. Ready means each role does its job: connected to NATS, the engine's
partitions loaded and consuming, the executor's recovery done and its consumer running, the
router listening with its table loaded. The checks only read attributes (they run in the probe
server's thread); each returns None when fine and a reason when not.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping
from typing import Any, Final

from events.bus import Bus
from events.telemetry import Telemetry
from executors.runner import ExecutorRunner
from executors.serving.kv_table import RouterRole
from sensors.runtime import EngineRuntime

BEAT_EVERY: Final = 1.0
STALE_AFTER: Final = 30.0


class Heartbeat:
    """Stamps the time from the event loop; `alive()` fails when the stamps stop."""

    def __init__(self, *, every: float = BEAT_EVERY, stale_after: float = STALE_AFTER) -> None:
        self.every = every
        self.stale_after = stale_after
        self.last = time.monotonic()

    async def run(self) -> None:
        """Stamp every `every` seconds until cancelled."""
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(self.every)

    def alive(self) -> str | None:
        """None while the loop turns; else how long it has not."""
        quiet = time.monotonic() - self.last
        if quiet > self.stale_after:
            return f"the event loop has not turned for {quiet:.0f} s"
        return None


def _connected(bus: Bus) -> str | None:
    return None if bus.nc.is_connected else "not connected to NATS"


def _role_ready(role: Any) -> str | None:
    """Whether one role serves (None) or why not; roles without a notion of ready are ready."""
    if isinstance(role, EngineRuntime):
        return None if role.ready.is_set() else "partitions not loaded yet"
    if isinstance(role, ExecutorRunner):
        return None if role.ready.is_set() else "recovery not finished"
    if isinstance(role, RouterRole):
        if not role.listening.is_set():
            return "not listening yet"
        return None if role.table_loaded else "no routing table loaded yet"
    listening = getattr(role, "listening", None)  # the API role, or any other server role
    if isinstance(listening, asyncio.Event) and not listening.is_set():
        return "not listening yet"
    return None


def add_role_checks(
    telemetry: Telemetry, bus: Bus, roles: Mapping[str, Any], heartbeat: Heartbeat
) -> None:
    """Register the process's liveness check and each role's readiness check."""
    telemetry.add_check("loop", alive=heartbeat.alive)
    telemetry.add_check("nats", ready=lambda: _connected(bus))
    for name, role in roles.items():
        telemetry.add_check(name, ready=functools.partial(_role_ready, role))
