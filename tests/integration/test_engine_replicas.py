"""Several engine replicas on one server: the same decisions, exactly once, as one engine.

Engines run as their own processes (`engine_process`), start while events flow (so partitions
move between replicas under load) and are stopped with SIGTERM (a graceful hand-over). What
is stored is compared with what the pure engine computes over the stream, never with numbers
written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import pytest

from events.bus import Bus, BusError
from events.model import Event, RestData
from events.server import EmbeddedServer
from sensors.axons import AxonStore
from sensors.leases import LeaseTable, assign
from sensors.loader import load_axon_text
from sensors.spec import Axon
from tests.integration.runtime_kit import (
    as_action,
    caught_up,
    duplicates,
    expected_keys,
    kill,
    spread_names,
    start_engine,
    stored_actions,
    stream_events,
    terminate,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE_TTL = 2.0
REST_EVENTS = 4000
CHUNK = 200

REST_AXON = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {{name: {name}}}
spec:
  tasks:
    - {{name: Train, train: {{image: trainer}}}}
  sensors:
    - name: once
      concurrency: Forbid
      triggers: [{{name: hook, type: Rest}}]
      tasks: [{{trainer: {{task: Train}}}}]
    - name: every
      concurrency: Allow
      triggers: [{{name: hook, type: Rest}}]
      tasks: [{{trainer: {{task: Train}}}}]
"""


def rest_axon(name: str) -> Axon:
    return load_axon_text(REST_AXON.format(name=name), "axon.yaml")


def rest_events(names: list[str], count: int) -> list[Event]:
    """`count` Rest calls spread over the Axons, alternating between their two sensors."""
    out = []
    for i in range(count):
        name = names[i % len(names)]
        sensor = "once" if (i // len(names)) % 2 == 0 else "every"
        data = RestData(axon=name, sensor=sensor, trigger="hook", payload={"i": i})
        out.append(data.to_event(source="test", id=f"rest-{i}"))
    return out


class LeaseWatch:
    """Polls the lease bucket and measures, per partition, the longest time it had no holder
    (after it first had one): what a hand-over or a failover costs."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.unowned: dict[int, float] = {}
        self.holders: dict[int, set[str]] = {}

    async def run(self) -> None:
        table = LeaseTable(self._bus, replica="watch", partitions=self._bus.partitions, ttl=1)
        free_since: dict[int, float] = {}
        while True:
            with contextlib.suppress(BusError):
                owners = await table.owners()
                now = time.monotonic()
                for p, owner in enumerate(owners):
                    if owner is not None:
                        self.holders.setdefault(p, set()).add(owner)
                        if p in free_since:
                            gap = now - free_since.pop(p)
                            self.unowned[p] = max(self.unowned.get(p, 0.0), gap)
                    elif p in self.holders:
                        free_since.setdefault(p, now)
            await asyncio.sleep(0.02)


def test_assign_spreads_partitions_evenly_and_moves_few_on_a_join() -> None:
    for n in range(1, 8):
        members = [f"r{i}" for i in range(n)]
        owners = assign(members, 16)
        counts = Counter(owners)
        assert set(counts) == set(members)
        assert max(counts.values()) - min(counts.values()) <= 1
    before, after = assign(["a", "b"], 16), assign(["a", "b", "c"], 16)
    moved = sum(x != y for x, y in zip(before, after, strict=True))
    assert moved <= 16 * 2 // 3  # a third of the partitions go to the newcomer, plus reshuffle
    assert assign([], 4) == [None] * 4


@pytest.mark.timeout(170)
@pytest.mark.parametrize("replicas", [2, 3])
async def test_replicas_fire_forbid_once_and_allow_once_per_event(
    bus: Bus, nats_server: EmbeddedServer, replicas: int
) -> None:
    names = spread_names(replicas * 2, bus.partitions)
    axons = {name: rest_axon(name) for name in names}
    for axon in axons.values():
        await AxonStore(bus).submit(axon)
    events = rest_events(names, REST_EVENTS)
    watch = LeaseWatch(bus)
    watcher = asyncio.create_task(watch.run())
    procs = [await start_engine(nats_server.url, "engine-0", LEASE_TTL)]
    try:
        for i in range(0, len(events), CHUNK):  # the other replicas join while events flow
            await bus.publish_many(events[i : i + CHUNK])
            if len(procs) < replicas and i >= len(procs) * len(events) // (replicas + 1):
                procs.append(await start_engine(nats_server.url, f"engine-{len(procs)}", LEASE_TTL))
            await asyncio.sleep(0.05)
        await caught_up(bus, limit=90)
        holders = {h for owners in watch.holders.values() for h in owners}
        assert holders == {f"engine-{i}" for i in range(replicas)}  # every replica held some
        stored = await stored_actions(bus)
        keys = [msg_id for msg_id, _ in stored]
        want = expected_keys(axons, await stream_events(bus))
        assert not duplicates(keys)
        assert sorted(keys) == sorted(want)
        fired = Counter((a.axon, a.sensor) for a in (as_action(e) for _, e in stored))
        calls = Counter((e.data["axon"], e.data["sensor"]) for e in events)
        for name in names:
            assert fired[(name, "once")] == 1  # Forbid: the first run stays active
            assert fired[(name, "every")] == calls[(name, "every")]  # Allow: once per call

        # Stop every replica (gracefully), start them again: nothing fires twice, and new
        # calls are decided on the state the others left.
        for proc in procs:
            assert await terminate(proc) == 0
        procs = [
            await start_engine(nats_server.url, f"engine-{i}", LEASE_TTL) for i in range(replicas)
        ]
        more = [
            RestData(axon=name, sensor=sensor, trigger="hook").to_event(
                source="test", id=f"again-{name}-{sensor}"
            )
            for name in names
            for sensor in ("once", "every")
        ]
        await bus.publish_many(more)
        await caught_up(bus, limit=60)
        after = [msg_id for msg_id, _ in await stored_actions(bus)]
        assert not duplicates(after)
        assert sorted(after) == sorted(expected_keys(axons, await stream_events(bus)))
        assert len(after) == len(keys) + len(names)  # only each Allow sensor fired again
    finally:
        watcher.cancel()
        for proc in procs:
            await kill(proc)


@pytest.mark.timeout(120)
async def test_a_rolling_update_loses_and_doubles_nothing(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    """Engine B starts while A runs under load, then A gets SIGTERM (what a Kubernetes rolling
    update does): every partition is handed over, nothing is lost or decided twice."""
    names = spread_names(4, bus.partitions)
    axons = {name: rest_axon(name) for name in names}
    for axon in axons.values():
        await AxonStore(bus).submit(axon)
    events = rest_events(names, REST_EVENTS)
    watch = LeaseWatch(bus)
    watcher = asyncio.create_task(watch.run())
    old = await start_engine(nats_server.url, "engine-old", LEASE_TTL)
    new: asyncio.subprocess.Process | None = None
    try:
        for i in range(0, len(events), CHUNK):
            await bus.publish_many(events[i : i + CHUNK])
            if i == len(events) // 4:
                new = await start_engine(nats_server.url, "engine-new", LEASE_TTL)
            if i == len(events) // 2:
                assert await terminate(old) == 0
            await asyncio.sleep(0.05)
        await caught_up(bus, limit=90)
        table = LeaseTable(bus, replica="t", partitions=bus.partitions, ttl=1)
        async with asyncio.timeout(LEASE_TTL):  # released by the old one, taken at a beat
            while set(await table.owners()) != {"engine-new"}:  # noqa: ASYNC110  # other processes
                await asyncio.sleep(0.05)  # the new one comes to hold every partition
        stored = await stored_actions(bus)
        keys = [msg_id for msg_id, _ in stored]
        assert not duplicates(keys)
        assert sorted(keys) == sorted(expected_keys(axons, await stream_events(bus)))
        worst = max(watch.unowned.values())
        print(f"rolling update: partitions unowned at most {worst:.3f} s")
        assert worst < LEASE_TTL  # handed over, not left to expire
    finally:
        watcher.cancel()
        await kill(old)
        if new is not None:
            await kill(new)


async def test_a_lease_bucket_for_another_partition_count_is_refused(bus: Bus) -> None:
    await LeaseTable(bus, replica="a", partitions=4, ttl=2).open()
    with pytest.raises(BusError) as caught:
        await LeaseTable(bus, replica="b", partitions=bus.partitions, ttl=2).open()
    assert "made for 4 partitions" in str(caught.value)
    assert f"has {bus.partitions}" in str(caught.value)
