"""THE crash test: the engine is SIGKILLed at random moments while events flow, and restarted.

Afterwards every action request the pure engine asks for (over the same events, in stream order)
exists exactly once in RANVIER_ACTIONS, by idempotency key, and nothing else does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable

import pytest

from events.bus import Bus
from events.server import EmbeddedServer
from sensors.axons import AxonStore
from tests.integration.runtime_kit import (
    NAME,
    caught_up,
    duplicates,
    expected_keys,
    kill,
    spread_names,
    start_engine,
    stored_actions,
    stream_events,
    two_step_axon,
    workload,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 5000
KILLS = 10
CHUNK = 100
LEASE_TTL = 2.0


@pytest.mark.timeout(170)
@pytest.mark.parametrize("replicas", [1, 3])
async def test_sigkilled_engine_requests_every_expected_action_exactly_once(
    bus: Bus, nats_server: EmbeddedServer, replicas: int
) -> None:
    """One replica, restarted under the same name (it takes its partitions back at once);
    or three, each killed one restarted under a new name, so the survivors take its
    partitions over when its leases expire (a short TTL keeps the test short)."""
    rng = random.Random()
    names = [NAME] if replicas == 1 else spread_names(replicas, bus.partitions)
    axons = {name: two_step_axon(name=name) for name in names}
    for axon in axons.values():
        await AxonStore(bus).submit(axon)
    streams = [workload(EVENTS // len(names), name) for name in names]
    events = [ev for group in zip(*streams, strict=True) for ev in group]

    async def publish() -> None:
        for i in range(0, len(events), CHUNK):
            await bus.publish_many(events[i : i + CHUNK])
            await asyncio.sleep(rng.uniform(0.05, 0.2))

    def start(i: int) -> Awaitable[asyncio.subprocess.Process]:
        replica = "engine-0" if replicas == 1 else f"engine-{i}-{rng.randrange(10**6)}"
        return start_engine(nats_server.url, replica, LEASE_TTL)

    publisher = asyncio.create_task(publish())
    procs = [await start(i) for i in range(replicas)]
    kills = 0
    try:
        while kills < KILLS or not publisher.done():
            await asyncio.sleep(rng.uniform(0.02, 0.8) * replicas)
            victim = rng.randrange(replicas)
            await kill(procs[victim])
            kills += 1
            procs[victim] = await start(victim)
        await publisher
        await caught_up(bus, limit=90)
    finally:
        for proc in procs:
            await kill(proc)
        if not publisher.done():
            publisher.cancel()
    stored = await stored_actions(bus)
    keys = [msg_id for msg_id, _ in stored]
    assert all(msg_id == event.id for msg_id, event in stored)
    want = expected_keys(axons, await stream_events(bus))
    assert len(want) > EVENTS // 2  # the workload does request actions
    assert not duplicates(keys)
    assert set(keys) == set(want)
    assert len(keys) == len(want)
    assert kills >= KILLS
