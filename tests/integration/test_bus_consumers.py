"""KV reads and watches leave no consumers behind on the server.

nats-py gives a KV watch's ordered consumer a 5-minute inactivity threshold, so every `kv_keys`
(each `get axon`, each scrape tick, each progress poll) used to leave a consumer on the bucket's
stream for 5 minutes: a `ranvier up` left running for a few minutes piled up thousands, until
JetStream refused new ones ("maximum consumers limit reached") and `up` died.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from events import subjects
from events.bus import Bus

pytestmark = pytest.mark.integration

READS = 30


async def consumers(bus: Bus) -> int:
    info = await bus.js.stream_info(f"KV_{subjects.MODELS_BUCKET}")
    return int(info.state.consumer_count)


async def test_kv_reads_and_watches_leave_no_consumers(bus: Bus) -> None:
    await bus.kv_put(subjects.MODELS_BUCKET, "a.b", b"1")
    before = await consumers(bus)
    for _ in range(READS):
        assert await bus.kv_keys(subjects.MODELS_BUCKET) == ["a.b"]
    async for change in bus.kv_watch(subjects.MODELS_BUCKET):
        assert change.key == "a.b"
        break
    assert await consumers(bus) > before  # still there right after: the server sweeps them
    deadline = time.monotonic() + 40.0  # 5 s keys / 10 s watch thresholds, plus the sweep
    while await consumers(bus) > before:
        assert time.monotonic() < deadline, f"{await consumers(bus) - before} consumers left"
        await asyncio.sleep(0.5)
