"""`/healthz` and `/readyz`: checks' answers become 200 or 503 with the failing reasons."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from events.telemetry import HEALTH_PATH, READY_PATH, Telemetry
from ranvier.health import Heartbeat


def test_probe_lists_the_failing_checks_and_their_reasons() -> None:
    telemetry = Telemetry()
    state = {"connected": True}
    telemetry.add_check("loop", alive=lambda: None)
    telemetry.add_check("nats", ready=lambda: None if state["connected"] else "not connected")
    telemetry.add_check("engine", ready=lambda: None)
    assert telemetry.probe(READY_PATH) == (True, {"status": "ok", "checks": ["engine", "nats"]})
    state["connected"] = False
    assert telemetry.probe(READY_PATH) == (
        False,
        {"status": "failing", "failed": {"nats": "not connected"}},
    )
    assert telemetry.probe(HEALTH_PATH)[0] is True


def test_a_check_that_raises_is_a_failed_probe() -> None:
    telemetry = Telemetry()

    def broken() -> str | None:
        raise KeyError("gone")

    telemetry.add_check("router", ready=broken)
    fine, body = telemetry.probe(READY_PATH)
    assert not fine
    assert "KeyError" in body["failed"]["router"]


def test_a_stalled_heartbeat_is_not_alive() -> None:
    beat = Heartbeat(stale_after=5.0)
    assert beat.alive() is None
    beat.last = time.monotonic() - 6.0
    reason = beat.alive()
    assert reason is not None
    assert "has not turned" in reason


@pytest.mark.parametrize(("path", "status"), [("/readyz", 503), ("/healthz", 200)])
def test_the_metrics_port_serves_probes_and_metrics(path: str, status: int) -> None:
    telemetry = Telemetry()
    telemetry.add_check("loop", alive=lambda: None)
    telemetry.add_check("nats", ready=lambda: "not connected to NATS")
    server = telemetry.serve(0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        answer = httpx.get(base + path, timeout=5.0)
        assert answer.status_code == status
        body: dict[str, Any] = answer.json()
        assert body["status"] == ("ok" if status == 200 else "failing")
        assert httpx.get(base + "/metrics", timeout=5.0).status_code == 200
    finally:
        server.close()
