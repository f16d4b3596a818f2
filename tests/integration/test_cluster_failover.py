"""Exactly-once across a NATS node crash: the stream leader SIGKILLed mid-work, then restarted.

On a three-node cluster with every stream and bucket at three replicas, the node leading the
stream being written is killed while writes are in flight, and brought back on its store:

- `Bus.publish` with fixed event ids: every event is stored once, and a durable consumer
  created before the crash reads each of them; the longest publish (the failover gap) is logged;
- KV create (a claim) and compare-and-set: two clients racing on the same keys each get a
  definite answer, one claimant wins each key, and a counter incremented by compare-and-set
  ends at exactly the number of increments that were reported done.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from events import subjects
from events.bus import Bus, RevisionMismatch, StreamLimits
from events.model import MetricData
from events.server import NatsCluster
from tests.integration.cluster_kit import cluster_options, stream_leader, wait_current

pytestmark = [pytest.mark.integration, pytest.mark.slow]

log = structlog.get_logger(__name__)
R3 = StreamLimits(replicas=3)


async def kill_when(
    cluster: NatsCluster, node: int, reached: asyncio.Event, work: asyncio.Future[None]
) -> float:
    """SIGKILL `node` once `reached` is set while `work` still runs; returns when it did."""
    waiting: asyncio.Future[Any] = asyncio.ensure_future(reached.wait())
    either: list[asyncio.Future[Any]] = [waiting, work]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if work.done():
        work.result()  # its error, if it failed
        raise AssertionError("the work finished before the crash: the test would be vacuous")
    await asyncio.to_thread(cluster.kill, node)
    return time.monotonic()


async def test_sigkilled_events_leader_mid_publish_stores_each_event_once(
    nats_cluster: NatsCluster,
) -> None:
    count, kill_at = 3000, 1000
    events = [
        MetricData(axon="ml", name="acc", value=float(i)).to_event(source="test", id=f"ev-{i:05d}")
        for i in range(count)
    ]
    options = cluster_options(nats_cluster, request_timeout=2.0, publish_retry_for=60.0)
    async with Bus.connect(options, limits=R3) as bus:
        await wait_current(bus, subjects.EVENTS_STREAM, 3)
        leader = await stream_leader(bus, nats_cluster, subjects.EVENTS_STREAM)
        consumer = await bus.consumer(subjects.EVENTS_STREAM, "failover-reader")
        reached = asyncio.Event()
        took: list[float] = []

        async def publish_all() -> None:
            for i, event in enumerate(events):
                if i == kill_at:
                    reached.set()
                began = time.monotonic()
                await bus.publish(event)
                took.append(time.monotonic() - began)

        with capture_logs() as logs:
            began = time.monotonic()
            publishing = asyncio.ensure_future(publish_all())
            killed = await kill_when(nats_cluster, leader, reached, publishing)
            await publishing
            elapsed = time.monotonic() - began
            new_leader = await stream_leader(
                bus, nats_cluster, subjects.EVENTS_STREAM, not_node=leader
            )
            await asyncio.to_thread(nats_cluster.restart, leader)
            await wait_current(bus, subjects.EVENTS_STREAM, 3)
        retries = [e for e in logs if e["event"] == "bus.publish_retry"]
        assert retries, "no publish was retried: the crash did not hit the publisher"
        info = await bus.stream_info()
        assert info.state.messages == count
        stored = collections.Counter([r.event.id async for r in bus.replay()])
        assert stored == collections.Counter(e.id for e in events)  # each once, none missing
        read: collections.Counter[str] = collections.Counter()
        async with asyncio.timeout(20):
            while sum(read.values()) < count:
                for got in await consumer.fetch(500, wait=1.0):
                    assert got.event is not None
                    read[got.event.id] += 1
                    await got.ack()
        assert read == stored
        assert not await consumer.fetch(10, wait=0.2)  # nothing more, nothing twice
    log.info(
        "cluster.failover_publish",
        events=count,
        killed_node=f"n{leader}",
        new_leader=f"n{new_leader}",
        longest_publish_s=round(max(took), 3),
        slow_publishes=sum(t > 0.1 for t in took),
        retried_publishes=len({e["msg_id"] for e in retries}),
        total_s=round(elapsed, 2),
        killed_after_s=round(killed - began, 2),
    )


async def test_kv_claims_and_compare_and_set_hold_across_a_leader_kill(
    nats_cluster: NatsCluster,
) -> None:
    keys, kill_at = 300, 100
    bucket = subjects.RUNS_BUCKET
    options = cluster_options(nats_cluster, request_timeout=2.0, publish_retry_for=60.0)
    async with (
        Bus.connect(options.model_copy(update={"name": "a"}), limits=R3) as a,
        Bus.connect(options.model_copy(update={"name": "b"}), limits=R3) as b,
    ):
        await wait_current(a, f"KV_{bucket}", 3)
        leader = await stream_leader(a, nats_cluster, f"KV_{bucket}")
        await a.kv_create(bucket, "counter", b"0")
        reached = asyncio.Event()
        won: dict[str, list[str]] = collections.defaultdict(list)
        increments = {"a": 0, "b": 0}
        steps: list[float] = []

        async def claim(bus: Bus, who: str, key: str) -> None:
            if await bus.kv_create(bucket, key, who.encode()) is not None:
                won[key].append(who)

        async def increment(bus: Bus, who: str) -> None:
            while True:
                got = await bus.kv_get(bucket, "counter")
                assert got is not None
                try:
                    await bus.kv_update(bucket, "counter", b"%d" % (int(got[0]) + 1), got[1])
                except RevisionMismatch:
                    continue
                increments[who] += 1
                return

        async def work() -> None:
            for i in range(keys):
                if i == kill_at:
                    reached.set()
                key = f"claim.k{i}"
                step = time.monotonic()
                await asyncio.gather(
                    claim(a, "a", key), claim(b, "b", key), increment(a, "a"), increment(b, "b")
                )
                steps.append(time.monotonic() - step)

        with capture_logs() as logs:
            began = time.monotonic()
            working = asyncio.ensure_future(work())
            killed = await kill_when(nats_cluster, leader, reached, working)
            await working
            elapsed = time.monotonic() - began
        await asyncio.to_thread(nats_cluster.restart, leader)
        await wait_current(a, f"KV_{bucket}", 3)
        assert {k: len(v) for k, v in won.items()} == {f"claim.k{i}": 1 for i in range(keys)}
        for key, [winner] in won.items():
            got = await b.kv_get(bucket, key)
            assert got is not None
            assert got[0] == winner.encode()
        counter = await a.kv_get(bucket, "counter")
        assert counter is not None
        assert int(counter[0]) == increments["a"] + increments["b"] == 2 * keys
    retried = {(e["key"], e["attempt"]) for e in logs if e["event"] == "bus.kv_retry"}
    assert retried, "no KV operation was retried: the crash did not hit the clients"
    log.info(
        "cluster.failover_kv",
        keys=keys,
        killed_node=f"n{leader}",
        retries=len(retried),
        lost_answers_found_stored=sum(e["event"] == "bus.kv_retry_stored" for e in logs),
        longest_step_s=round(max(steps), 3),
        total_s=round(elapsed, 2),
        killed_after_s=round(killed - began, 2),
    )
