"""An Alert's pending `for` survives an engine SIGKILL: the firing is neither lost nor repeated.

The metric values come from the real metric watcher scraping a real model server (the retrain
example's class, gauge set by feedback), the engine is the real runtime in its own process:

1. the accuracy drops below the threshold; the engine records `inactive -> pending`;
2. the engine is SIGKILLed and stays down past the `for` deadline while values keep coming;
3. a new engine process fires the alert once (one trainer action), and never again while the
   alert still holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from events.bus import Bus
from events.server import EmbeddedServer
from sensors.axons import AxonStore
from sensors.loader import load_axon_text
from tests.integration.runtime_kit import (
    caught_up,
    kill,
    start_engine,
    stored_actions,
    stored_decisions,
)
from tests.integration.test_metric_watcher import (
    deploy_record,
    feedback,
    model_server,
    watching,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(170)]

FOR = 3.0
AXON = f"""
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {{name: watched}}
spec:
  metrics: {{interval: 0.5s}}
  tasks:
    - name: Train
      train: {{command: [python3, train.py]}}
  sensors:
    - name: Retrain
      triggers:
        - name: low
          type: Alert
          condition: "{{{{quickstart_accuracy}}}} < 0.9"
          for: {FOR:g}s
          cooldown: 1h
      tasks:
        - trainer: {{task: Train}}
"""


async def decided(bus: Bus, fragment: str) -> bool:
    return any(fragment in str(d.get("reason")) for d in await stored_decisions(bus))


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_pending_for_survives_an_engine_kill(
    bus: Bus, tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    url = nats_server.url
    await AxonStore(bus).submit(load_axon_text(AXON))
    engine = await start_engine(url)
    try:
        with model_server(tmp_path) as server:
            await deploy_record(bus, server.url)
            async with watching(bus):
                await feedback(server.url, 0.0)
                await wait_until("pending", lambda: decided(bus, "inactive -> pending"))
                assert await stored_actions(bus) == []
                await kill(engine)
                await asyncio.sleep(FOR + 1.0)  # the deadline passes while no engine runs
                engine = await start_engine(url)
                await wait_until("the firing", lambda: _actions(bus, 1))
                await asyncio.sleep(FOR + 1.0)  # values keep coming: still firing, no repeat
                await caught_up(bus)
        [(_key, action)] = await stored_actions(bus)
        assert action.data["sensor"] == "Retrain"
        assert action.data["kind"] == "trainer"
        assert await decided(bus, "firing; the alert still holds")
    finally:
        await kill(engine)


async def _actions(bus: Bus, count: int) -> bool:
    return len(await stored_actions(bus)) >= count
