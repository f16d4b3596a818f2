"""`ranvier up` outlives crashes of its embedded nats-server, and says why when it cannot.

- examples/02-retrain-on-feedback under `ranvier up -d`: SIGKILL the nats-server three times;
  each time the server comes back on the same port and store, the fixed URL answers and the
  bus serves again within 10 s, and what was recorded is still there. Bad feedback sent after
  the last restart then retrains exactly once and redeploys exactly once, and the retrained
  version answers at the fixed URL.
- a server that keeps dying: after the fifth crash within a minute `ranvier up` stops (model
  servers too) and exits with a one-line reason, which `up.json` records; no traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import subjects
from events.bus import OUTAGE_ERRORS, Bus, ConnectOptions, kv_key
from tests.e2e import kit
from tests.e2e.kit import REPO, alive, state_token
from tests.e2e.test_retrain_on_feedback import (
    FEEDBACK,
    NAME,
    PAYLOAD,
    Pipeline,
    prepare,
    until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

KILLS = 3
BACK_WITHIN = 10.0
"""The acceptance bound: after each kill the endpoint and the bus answer again within this."""


def children(pid: int) -> list[int]:
    """The child processes of `pid`, started by any of its threads."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def nats_child(up_pid: int) -> int | None:
    """The pid of the nats-server that `ranvier up` runs now (alive, not a zombie)."""
    found = [p for p in children(up_pid) if "nats-server" in cmdline(p) and alive(p)]
    return found[0] if found else None


def up_status(state: Path) -> dict[str, Any]:
    """What `ranvier up` reports in up.json."""
    found: dict[str, Any] = json.loads((state / "up.json").read_text())
    return found


def start(axon: Path, state: Path) -> int:
    """`ranvier up -d --until deployed`; its pid."""
    up = kit.ranvier("up", str(axon), "-d", "--until", "deployed", "--timeout", "150", state=state)
    assert up.returncode == 0, up.stdout + up.stderr
    pid: int = up_status(state)["pid"]
    return pid


def endpoint(name: str, state: Path) -> str:
    shown = kit.ranvier("endpoint", name, "-o", "json", state=state)
    assert shown.returncode == 0, shown.stderr
    url: str = json.loads(shown.stdout)["fixedUrl"]
    return url


async def answers(http: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await http.post(f"{url}predict", json=PAYLOAD, timeout=2.0)).status_code == 200
    except httpx.HTTPError:
        return False


async def bus_answers(bus: Bus) -> bool:
    try:
        return await bus.kv_get(subjects.AXONS_BUCKET, kv_key("default", NAME)) is not None
    except OUTAGE_ERRORS:
        return False


async def bad_feedback(http: httpx.AsyncClient, url: str) -> None:
    """A prediction, then the example header's feedback: request and a reward of 0."""
    answer = await http.post(f"{url}predict", json=PAYLOAD)
    assert answer.status_code == 200, answer.text
    sent = await http.post(f"{url}send-feedback", json=FEEDBACK)
    assert sent.status_code == 200, sent.text


async def idle(bus: Bus) -> bool:
    """No action waiting or running, and every consumer of the events has handled them all."""
    if (await bus.stream_info(subjects.ACTIONS_STREAM)).state.messages:
        return False
    consumers = await bus.js.consumers_info(subjects.EVENTS_STREAM)
    durable = [c for c in consumers if c.config.durable_name]
    return bool(durable) and not any(c.num_pending or c.num_ack_pending for c in durable)


async def test_three_server_crashes_then_a_retrain_happens_once(tmp_path: Path) -> None:
    axon = prepare(tmp_path, "scrape")
    state = tmp_path / "state"
    up_pid = start(axon, state)
    try:
        url = endpoint(NAME, state)
        nats_url = (state / "nats.url").read_text(encoding="utf-8").strip()
        options = ConnectOptions(
            servers=[nats_url],
            token=state_token(state),
            connect_timeout=2.0,
            request_timeout=2.0,
            reconnect_wait=0.1,
        )
        async with Bus.connect(options) as bus, httpx.AsyncClient(timeout=10.0) as http:
            pipe = Pipeline(bus, http, None)
            [first] = await pipe.backends()
            before = await pipe.status()
            stored_before = (await bus.stream_info(subjects.EVENTS_STREAM)).state.messages

            for kill in range(1, KILLS + 1):
                server = nats_child(up_pid)
                assert server is not None, (state / "up.log").read_text()
                os.kill(server, signal.SIGKILL)
                killed = time.monotonic()
                while not (await answers(http, url) and await bus_answers(bus)):
                    assert alive(up_pid), (state / "up.log").read_text()
                    assert time.monotonic() - killed < BACK_WITHIN, f"not back after kill {kill}"
                    await asyncio.sleep(0.1)
                back = time.monotonic() - killed
                restarted = nats_child(up_pid)
                print(f"\nkill {kill}: endpoint and bus answer again after {back:.2f}s")
                assert restarted not in (None, server)
                assert (state / "nats.url").read_text(encoding="utf-8").strip() == nats_url

            # Nothing lost: the records and the stored events are all still there.
            assert await pipe.status() == before
            stored = (await bus.stream_info(subjects.EVENTS_STREAM)).state.messages
            assert stored >= stored_before
            assert up_status(state)["state"] == "reached"

            # A retrain triggered now: bad feedback, the alert fires once, one redeploy.
            for _ in range(3):
                await bad_feedback(http, url)
            [run] = await until("the PostDeployment retrain", lambda: pipe.runs("PostDeployment"))
            assert run["trigger"] == "accuracy-low"

            async def moved() -> list[dict[str, Any]]:
                return [b for b in await pipe.backends() if b["version"] != first["version"]]

            [new] = await until("the retrained version deployed", moved)
            answer = await http.post(f"{url}predict", json=PAYLOAD)
            assert answer.status_code == 200, answer.text
            assert answer.json()["meta"]["modelVersion"] == new["version"]
            await until("the engine and the executor idle", lambda: idle(bus))
            after = await pipe.status()
            sensors = {s["name"]: s["runs"] for s in after["sensors"]}
            assert len(sensors["PostDeployment"]) == 1
            assert len(sensors["DeployOnTrained"]) == 2  # the first deploy and one redeploy
            assert len(await pipe.train_runs()) == 2  # the first training and one retrain
            phases = {r["phase"] for runs in sensors.values() for r in runs}
            phases |= {r["phase"] for t in after["tasks"] for r in t["runs"]}
            assert phases == {"Succeeded"}
    finally:
        down = kit.ranvier("down", state=state)
        assert down.returncode == 0, down.stdout + down.stderr
    log = (state / "up.log").read_text()
    assert "Traceback" not in log
    assert log.count("nats.restarted") == KILLS


async def test_a_server_that_keeps_crashing_stops_up_with_one_line(tmp_path: Path) -> None:
    axon = REPO / "examples" / "01-quickstart" / "axon.yaml"
    state = tmp_path / "state"
    up_pid = start(axon, state)
    url = endpoint("quickstart", state)
    served = [p for p in children(up_pid) if "ranvier serve" in cmdline(p)]
    assert served
    deadline = time.monotonic() + 60.0
    while alive(up_pid):
        server = nats_child(up_pid)
        if server is not None:
            os.kill(server, signal.SIGKILL)
        assert time.monotonic() < deadline, "ranvier up still runs after a minute of crashes"
        await asyncio.sleep(0.05)
    status = up_status(state)
    print(f"\nup stopped: {status['stopped']}")
    assert status["state"] == "stopped"
    assert status["stopped"].startswith("nats-server crashed 5 times in 60 s: ")
    log = (state / "up.log").read_text()
    assert "Traceback" not in log
    assert log.rstrip().splitlines()[-1] == f"error: {status['stopped']}"
    assert not [p for p in served if alive(p)]  # the model servers were stopped
    async with httpx.AsyncClient() as http:
        assert not await answers(http, url)
