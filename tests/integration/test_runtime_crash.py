"""THE crash test: the engine is SIGKILLed at random moments while events flow, and restarted.

Afterwards every action request the pure engine asks for (over the same events, in stream order)
exists exactly once in RANVIER_ACTIONS, by idempotency key, and nothing else does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from pathlib import Path

import pytest

from events.bus import Bus
from events.server import EmbeddedServer
from sensors.axons import AxonStore
from tests.integration.runtime_kit import (
    caught_up,
    duplicates,
    expected_keys,
    stored_actions,
    stream_events,
    two_step_axon,
    workload,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EVENTS = 5000
KILLS = 10
CHUNK = 100


async def start_engine(url: str) -> asyncio.subprocess.Process:
    """An engine process, returned once it is consuming."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.engine_process",
        url,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        line = await proc.stdout.readline()
    assert line.strip() == b"ready", f"engine process did not start: {line!r}"
    return proc


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL, and reap."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


@pytest.mark.timeout(170)
async def test_sigkilled_engine_requests_every_expected_action_exactly_once(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    rng = random.Random()
    axon = two_step_axon()
    await AxonStore(bus).submit(axon)
    events = workload(EVENTS)

    async def publish() -> None:
        for i in range(0, len(events), CHUNK):
            await bus.publish_many(events[i : i + CHUNK])
            await asyncio.sleep(rng.uniform(0.05, 0.2))

    publisher = asyncio.create_task(publish())
    proc = await start_engine(nats_server.url)
    kills = 0
    try:
        while kills < KILLS or not publisher.done():
            await asyncio.sleep(rng.uniform(0.02, 0.8))
            await kill(proc)
            kills += 1
            proc = await start_engine(nats_server.url)
        await publisher
        await caught_up(bus, limit=90)
    finally:
        await kill(proc)
        if not publisher.done():
            publisher.cancel()
    stored = await stored_actions(bus)
    keys = [msg_id for msg_id, _ in stored]
    assert all(msg_id == event.id for msg_id, event in stored)
    want = expected_keys(axon, await stream_events(bus))
    assert len(want) > EVENTS // 2  # the workload does request actions
    assert not duplicates(keys)
    assert set(keys) == set(want)
    assert len(keys) == len(want)
    assert kills >= KILLS
