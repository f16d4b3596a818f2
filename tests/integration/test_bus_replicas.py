"""Streams and KV buckets with replicas, on a real three-node NATS cluster.

The replica count comes from settings (`--replicas`, `RANVIER_REPLICAS`): what is created gets
it, an existing stream or bucket is scaled to it, and leaving it unset never changes a count
(a client on a laptop must not scale a cluster's streams down). More replicas than servers is
a clear error naming both numbers.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from events import subjects
from events.bus import Bus, BusError, ConnectOptions, StreamLimits
from events.model import MetricData
from events.server import NatsCluster
from tests.conftest import MakeServer
from tests.integration.cluster_kit import cluster_options, wait_current

pytestmark = pytest.mark.integration

STREAMS = (subjects.EVENTS_STREAM, subjects.ACTIONS_STREAM, subjects.DECISIONS_STREAM)
BUCKET_STREAMS = tuple(
    f"KV_{b}"
    for b in (
        subjects.AXONS_BUCKET,
        subjects.STATE_BUCKET,
        subjects.RUNS_BUCKET,
        subjects.MODELS_BUCKET,
    )
)


async def replica_counts(bus: Bus) -> dict[str, int]:
    return {
        name: int((await bus.js.stream_info(name)).config.num_replicas or 1)
        for name in STREAMS + BUCKET_STREAMS
    }


async def test_streams_and_buckets_get_the_replicas_asked_for(nats_cluster: NatsCluster) -> None:
    async with Bus.connect(cluster_options(nats_cluster), limits=StreamLimits(replicas=3)) as bus:
        assert set((await replica_counts(bus)).values()) == {3}
        for name in STREAMS + BUCKET_STREAMS:
            await wait_current(bus, name, 3)  # three servers really hold a copy
        await bus.kv_put(subjects.STATE_BUCKET, "k", b"v")
        assert await bus.kv_get(subjects.STATE_BUCKET, "k") == (b"v", 1)


async def test_an_existing_topology_is_scaled_from_one_to_three_replicas(
    nats_cluster: NatsCluster,
) -> None:
    options = cluster_options(nats_cluster)
    async with Bus.connect(options) as bus:  # unset: created with one replica
        assert set((await replica_counts(bus)).values()) == {1}
        await bus.publish(MetricData(axon="ml", name="acc", value=1.0).to_event(source="test"))
        await bus.kv_put(subjects.RUNS_BUCKET, "kept", b"1")
    with capture_logs() as logs:
        async with Bus.connect(options, limits=StreamLimits(replicas=3)) as bus:
            assert set((await replica_counts(bus)).values()) == {3}
            await wait_current(bus, subjects.EVENTS_STREAM, 3)
            assert (await bus.stream_info()).state.messages == 1
            assert await bus.kv_get(subjects.RUNS_BUCKET, "kept") == (b"1", 1)
    scaled = {e["stream"]: e for e in logs if e["event"] == "bus.stream_updated"}
    assert set(scaled) == set(STREAMS + BUCKET_STREAMS)
    assert {(e["was_replicas"], e["replicas"]) for e in scaled.values()} == {(1, 3)}
    with capture_logs() as logs:
        async with Bus.connect(options) as bus:  # unset again: the count stays
            assert set((await replica_counts(bus)).values()) == {3}
    assert not [e for e in logs if e["event"] == "bus.stream_updated"]
    async with Bus.connect(options, limits=StreamLimits(replicas=1)) as bus:  # and down, asked
        assert set((await replica_counts(bus)).values()) == {1}


async def test_more_replicas_than_servers_is_a_clear_error(nats_cluster: NatsCluster) -> None:
    options = cluster_options(nats_cluster)
    with pytest.raises(BusError) as raised:
        async with Bus.connect(options, limits=StreamLimits(replicas=5)):
            pass
    message = str(raised.value)
    assert "with 5 replicas" in message
    assert "has 3 server(s) up" in message
    assert raised.value.hint == (
        "lower --replicas (RANVIER_REPLICAS) to at most 3, or add servers to the cluster"
    )
    async with Bus.connect(options, limits=StreamLimits(replicas=3)):
        pass
    with pytest.raises(BusError, match="with 5 replicas"):  # scaling up an existing one too
        async with Bus.connect(options, limits=StreamLimits(replicas=5)):
            pass


async def test_replicas_on_a_single_server_is_a_clear_error(make_nats_server: MakeServer) -> None:
    srv = make_nats_server()
    with pytest.raises(BusError) as raised:
        async with Bus.connect(ConnectOptions(servers=[srv.url]), limits=StreamLimits(replicas=3)):
            pass
    assert "is not part of a cluster" in str(raised.value)
    assert raised.value.hint is not None
    assert "--replicas 1" in raised.value.hint


async def test_a_consumer_made_while_its_stream_has_no_leader_waits_for_one(
    nats_cluster: NatsCluster,
) -> None:
    """A process that starts while a stream has no leader (an executor binding its durable
    consumer as the stream's leader dies) waits for the election instead of failing on the
    server's silence. Two of three nodes down: no majority, so no leader until one is back."""
    async with Bus.connect(
        cluster_options(nats_cluster, request_timeout=1.0), limits=StreamLimits(replicas=3)
    ) as bus:
        await wait_current(bus, subjects.ACTIONS_STREAM, 3)
        for node in (1, 2):
            await asyncio.to_thread(nats_cluster.kill, node)
        binding = asyncio.create_task(bus.consumer(subjects.ACTIONS_STREAM, "late-starter"))
        await asyncio.sleep(4)  # four request timeouts
        if binding.done():  # bound already (a leader that had not noticed yet), or gave up
            assert binding.exception() is None, f"gave up: {binding.exception()!r}"
        await asyncio.to_thread(nats_cluster.restart, 1)
        async with asyncio.timeout(30):
            consumer = await binding
        try:
            assert await consumer.num_pending() == 0  # bound, and answering
        finally:
            await consumer.close()
        await asyncio.to_thread(nats_cluster.restart, 2)
