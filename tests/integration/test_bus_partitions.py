"""The events stream's partitions: the server's transform, its record, and refusing a mismatch."""

from __future__ import annotations

import nats
import pytest
from nats.js import api

from events import subjects
from events.bus import Bus, BusError, ConnectOptions, StreamLimits
from events.model import MetricData

pytestmark = pytest.mark.integration


async def test_the_server_partitions_events_as_partition_of_says(bus: Bus) -> None:
    names = [f"axon-{i}" for i in range(200)] + ["a.b c", "ml-gpt2"]
    for name in names:
        await bus.publish(MetricData(axon=name, name="acc", value=1.0).to_event(source="test"))
    seq_of = {item.event.data["axon"]: item.seq async for item in bus.replay()}
    assert set(seq_of) == set(names)
    assert bus.partitions == subjects.DEFAULT_PARTITIONS
    for name in names:
        msg = await bus.js.get_msg(subjects.EVENTS_STREAM, seq_of[name])
        published = subjects.event_subject(name, "metric", "acc")
        assert msg.subject == subjects.stored_subject(published, bus.partitions)
        assert msg.subject.split(".")[2] == str(subjects.partition_of(name, bus.partitions))
    counts = [
        len([n for n in names if subjects.partition_of(n, bus.partitions) == p])
        for p in range(bus.partitions)
    ]
    assert min(counts) > 0  # 202 Axons reach every one of 16 partitions


async def test_the_partition_count_is_recorded_and_a_mismatch_is_refused(
    nats_options: ConnectOptions,
) -> None:
    async with Bus.connect(nats_options, limits=StreamLimits(partitions=4)) as four:
        info = await four.stream_info()
        assert info.config.metadata is not None
        assert info.config.metadata[subjects.PARTITIONS_KEY] == "4"
        assert four.partitions == 4
    async with Bus.connect(nats_options) as adopting:  # no count asked for: the stream's
        assert adopting.partitions == 4
    with pytest.raises(BusError) as caught:
        async with Bus.connect(nats_options, limits=StreamLimits(partitions=16)):
            pass
    message = str(caught.value)
    assert "has 4 partitions" in message
    assert "16 are configured" in message
    assert "--partitions 4" in (caught.value.hint or "")


async def test_a_stream_holding_unpartitioned_events_is_refused_not_rewritten(
    nats_options: ConnectOptions,
) -> None:
    nc = await nats.connect(nats_options.servers[0])
    try:
        js = nc.jetstream()
        await js.add_stream(
            api.StreamConfig(name=subjects.EVENTS_STREAM, subjects=[subjects.EVENTS_SUBJECTS])
        )
        await js.publish("ranvier.ev.old.metric.acc", b"{}")
        with pytest.raises(BusError, match="without partitions"):
            async with Bus.connect(nats_options):
                pass
        info = await js.stream_info(subjects.EVENTS_STREAM)
        assert info.config.subject_transform is None  # left exactly as it was
        assert info.state.messages == 1
    finally:
        await nc.close()
