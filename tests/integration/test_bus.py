"""The bus against a real nats-server: topology, dedupe, consume, KV, replay, auth, outages."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from events import subjects
from events.bus import (
    AuthError,
    Bus,
    BusError,
    ConnectError,
    ConnectOptions,
    Outgoing,
    Received,
    RevisionMismatch,
    StreamLimits,
)
from events.model import Event, EventError, LifecycleData, MetricData
from events.server import EmbeddedServer
from tests.conftest import MakeServer

pytestmark = pytest.mark.integration


def metric(i: int, axon: str = "ml", name: str = "acc") -> Event:
    return MetricData(axon=axon, name=name, value=float(i)).to_event(source="test")


def lifecycle(task: str, axon: str = "ml") -> Event:
    data = LifecycleData(axon=axon, task=task, run_id=f"r-{task}", phase="Succeeded")
    return data.to_event(source="test")


async def test_streams_and_buckets_are_created_as_designed(bus: Bus) -> None:
    events = await bus.stream_info(subjects.EVENTS_STREAM)
    assert events.config.subjects == [subjects.EVENTS_SUBJECTS]
    assert events.config.max_age == timedelta(days=7).total_seconds()
    assert events.config.duplicate_window == 120
    assert str(events.config.storage) in ("file", "StorageType.FILE")
    actions = await bus.stream_info(subjects.ACTIONS_STREAM)
    assert str(actions.config.retention) in ("workqueue", "RetentionPolicy.WORK_QUEUE")
    decisions = await bus.stream_info(subjects.DECISIONS_STREAM)
    assert decisions.config.subjects == [subjects.DECISIONS_SUBJECTS]
    streams = {s.config.name for s in await bus.js.streams_info()}
    for bucket in ("ranvier_axons", "ranvier_state", "ranvier_runs", "ranvier_models"):
        assert f"KV_{bucket}" in streams


async def test_topology_is_idempotent_and_updates_limits(
    bus: Bus, nats_options: ConnectOptions
) -> None:
    await bus.publish(metric(1))
    async with Bus.connect(nats_options) as again:
        info = await again.stream_info()
        assert info.state.messages == 1  # nothing recreated
    limits = StreamLimits(events_max_age=timedelta(hours=1))
    async with Bus.connect(nats_options, limits=limits) as changed:
        info = await changed.stream_info()
        assert info.config.max_age == 3600
        assert info.state.messages == 1


async def test_publish_dedupes_on_the_event_id(bus: Bus) -> None:
    ev = lifecycle("Train")
    first = await bus.publish(ev)
    second = await bus.publish(ev)
    assert first.stream == subjects.EVENTS_STREAM
    assert not first.duplicate
    assert second.duplicate
    assert second.seq == first.seq
    other = await bus.publish(ev, msg_id="another-id")
    assert not other.duplicate
    assert (await bus.stream_info()).state.messages == 2


async def test_publish_many_is_ordered_and_dedupes(bus: Bus) -> None:
    events = [metric(i) for i in range(2000)]
    acks = await bus.publish_many(events, max_in_flight=64)
    assert [a.seq for a in acks] == list(range(1, 2001))
    again = await bus.publish_many(events[:100])
    assert all(a.duplicate for a in again)
    assert (await bus.stream_info()).state.messages == 2000
    stored = [r.event.id async for r in bus.replay()]
    assert stored == [e.id for e in events]


async def test_oversized_events_are_refused_before_publishing(make_nats_server: MakeServer) -> None:
    small = make_nats_server(max_payload=2048)
    async with Bus.connect(ConnectOptions(servers=[small.url])) as bus:
        assert bus.max_payload == 2048
        big = MetricData(axon="ml", name="m", value=1.0, labels={"x": "y" * 4000})
        with pytest.raises(EventError, match="max payload of 2048 bytes"):
            await bus.publish(big.to_event(source="t"))
        with pytest.raises(EventError):
            await bus.publish_many([metric(1), big.to_event(source="t")])
        assert (await bus.stream_info()).state.messages == 0


async def test_consume_ack_nak_term_and_malformed_messages(bus: Bus) -> None:
    events = [metric(i) for i in range(3)]
    await bus.publish_many(events)
    await bus.nc.publish("ranvier.ev.ml.metric.junk", b"not an event")
    consumer = await bus.consumer(subjects.EVENTS_STREAM, "t1", ack_wait=30)
    first = await consumer.fetch(10, wait=2)
    assert [m.seq for m in first] == [1, 2, 3, 4]
    assert [m.event.id if m.event else None for m in first] == [*(e.id for e in events), None]
    junk = first[3]
    assert junk.error is not None
    assert "not a ranvier event" in str(junk.error)
    await first[0].ack()
    await first[1].nak()  # redeliver now
    await first[2].in_progress()
    await first[2].term()
    await junk.term()
    again = await consumer.fetch(10, wait=2)
    assert [(m.seq, m.num_delivered) for m in again] == [(2, 2)]
    await again[0].ack()
    assert await consumer.fetch(10, wait=0.3) == []
    assert await consumer.num_pending() == 0
    await consumer.close()


async def test_consume_batches_resume_from_the_durable_position(bus: Bus) -> None:
    await bus.publish_many([metric(i) for i in range(250)])
    seen: list[int] = []
    async for batch in bus.consume(subjects.EVENTS_STREAM, "d", batch=100, stop_when_empty=True):
        assert len(batch) <= 100
        for msg in batch[:50] if not seen else batch:
            await msg.ack()
            seen.append(msg.seq)
        if len(seen) == 50:
            break  # the other 50 of the first batch stay unacked
    await bus.publish_many([metric(i) for i in range(250, 260)])
    rest: list[Received] = []
    consumer = await bus.consumer(subjects.EVENTS_STREAM, "d", ack_wait=30)
    while got := await consumer.fetch(500, wait=0.5):
        rest.extend(got)
    # New work from where the durable stopped delivering; unacked ones come back after ack_wait.
    assert [m.seq for m in rest] == list(range(101, 261))
    await consumer.close()


async def test_kv_create_is_an_exactly_once_claim(bus: Bus) -> None:
    key = "claims.k1"
    results = await asyncio.gather(
        *(bus.kv_create(subjects.RUNS_BUCKET, key, f"w{i}".encode()) for i in range(10))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    got = await bus.kv_get(subjects.RUNS_BUCKET, key)
    assert got is not None
    assert got[1] == winners[0]
    await bus.kv_delete(subjects.RUNS_BUCKET, key)
    assert await bus.kv_get(subjects.RUNS_BUCKET, key) is None
    assert await bus.kv_create(subjects.RUNS_BUCKET, key, b"again") is not None


async def test_kv_compare_and_set(bus: Bus) -> None:
    rev = await bus.kv_put(subjects.STATE_BUCKET, "s", b"v1")
    rev2 = await bus.kv_update(subjects.STATE_BUCKET, "s", b"v2", rev)
    assert rev2 > rev
    with pytest.raises(RevisionMismatch, match=f"no longer at revision {rev}"):
        await bus.kv_update(subjects.STATE_BUCKET, "s", b"v3", rev)
    assert await bus.kv_get(subjects.STATE_BUCKET, "s") == (b"v2", rev2)


async def test_kv_keys_use_subject_wildcards(bus: Bus) -> None:
    for key in ("ml.a", "ml.b", "other.a", "ml.deep.c"):
        await bus.kv_put(subjects.AXONS_BUCKET, key, b"x")
    await bus.kv_delete(subjects.AXONS_BUCKET, "ml.b")
    assert sorted(await bus.kv_keys(subjects.AXONS_BUCKET, "ml.*")) == ["ml.a"]
    assert sorted(await bus.kv_keys(subjects.AXONS_BUCKET, "ml.>")) == ["ml.a", "ml.deep.c"]
    assert await bus.kv_keys(subjects.MODELS_BUCKET) == []


async def test_kv_watch_sees_current_values_then_changes(bus: Bus) -> None:
    await bus.kv_put(subjects.MODELS_BUCKET, "m.v1", b"one")
    changes = bus.kv_watch(subjects.MODELS_BUCKET, "m.*")
    first = await anext(changes)
    assert (first.key, first.value) == ("m.v1", b"one")
    await bus.kv_put(subjects.MODELS_BUCKET, "m.v2", b"two")
    await bus.kv_delete(subjects.MODELS_BUCKET, "m.v1")
    second = await anext(changes)
    third = await anext(changes)
    assert (second.key, second.value) == ("m.v2", b"two")
    assert (third.key, third.value) == ("m.v1", None)
    await changes.aclose()


async def test_replay_filters_and_starts_at_a_sequence_or_time(bus: Bus) -> None:
    await bus.publish_many([metric(i, axon="a") for i in range(5)])
    marker = [r.stored async for r in bus.replay()][-1]
    await bus.publish_many([lifecycle(f"T{i}", axon="b") for i in range(5)])
    assert [r.seq async for r in bus.replay(since=3)] == list(range(3, 11))
    only_b = [r async for r in bus.replay(filter_subject=subjects.events_filter("b"))]
    assert [r.event.subject for r in only_b] == [f"T{i}" for i in range(5)]
    assert only_b[0].raw == only_b[0].event.to_json()
    after = [r.seq async for r in bus.replay(since=marker + timedelta(microseconds=1))]
    assert after == list(range(6, 11))
    assert [r async for r in bus.replay(since=99)] == []
    nothing = subjects.events_filter("nobody")
    assert [r async for r in bus.replay(filter_subject=nothing)] == []


async def test_replay_stops_at_the_end_as_it_was_when_it_began(bus: Bus) -> None:
    await bus.publish_many([metric(i) for i in range(100)])
    seen = []
    async for item in bus.replay():
        seen.append(item.seq)
        if item.seq % 10 == 0:
            await bus.publish(metric(1000 + item.seq))  # the stream grows during the replay
    assert seen == list(range(1, 101))


async def test_follow_delivers_new_events(bus: Bus) -> None:
    await bus.publish(metric(0))
    follow = bus.follow(filter_subject=subjects.events_filter("ml", "metric"))
    task = asyncio.ensure_future(anext(follow))
    await asyncio.sleep(0)  # subscription set up inside anext; publish afterwards
    while not task.done():
        await bus.publish(metric(1))
        await asyncio.wait([task], timeout=0.2)
    assert task.result().seq >= 2
    await follow.aclose()


async def test_kill_and_restart_while_publishing_stores_each_event_once(
    make_nats_server: MakeServer,
) -> None:
    srv = make_nats_server()
    port, store = srv.port, srv.store_dir
    options = ConnectOptions(
        servers=[srv.url], request_timeout=1.0, reconnect_wait=0.05, publish_retry_for=60
    )
    events = [metric(i) for i in range(10_000)]
    async with Bus.connect(options) as bus:
        with capture_logs() as logs:
            publishing = asyncio.ensure_future(bus.publish_many(events, max_in_flight=128))
            while (await bus.stream_info()).state.messages < 1000:  # noqa: ASYNC110 -- polls the server, no local event to wait on
                await asyncio.sleep(0.005)
            assert not publishing.done(), "publisher finished before the crash: test is vacuous"
            srv.kill()
            restarted = await asyncio.to_thread(make_nats_server, store_dir=store, port=port)
            assert restarted.port == port
            acks = await publishing
        assert len(acks) == 10_000
        assert any(e["event"] == "bus.reconnected" for e in logs)
        info = await bus.stream_info()
        assert info.state.messages == 10_000
        stored = [r.event.id async for r in bus.replay()]
    assert len(stored) == 10_000
    assert sorted(stored) == sorted(e.id for e in events)


@pytest.mark.parametrize(
    ("server_auth", "client_auth", "ok"),
    [
        ({"user": "ana", "password": "s3cret"}, {"user": "ana", "password": "s3cret"}, True),
        ({"user": "ana", "password": "s3cret"}, {"user": "ana", "password": "wrong"}, False),
        ({"user": "ana", "password": "s3cret"}, {}, False),
        ({"token": "t0ken"}, {"token": "t0ken"}, True),
        ({"token": "t0ken"}, {"token": "nope"}, False),
    ],
)
async def test_authorization(
    make_nats_server: MakeServer,
    server_auth: dict[str, str],
    client_auth: dict[str, str],
    ok: bool,
) -> None:
    srv: EmbeddedServer = make_nats_server(**server_auth)
    options = ConnectOptions(servers=[srv.url], **client_auth)  # type: ignore[arg-type]  # test table
    if ok:
        async with Bus.connect(options) as bus:
            assert (await bus.publish(metric(1))).seq == 1
        return
    with pytest.raises(AuthError, match=f"authorization failed at {srv.url}") as err:
        async with Bus.connect(options):
            pass
    assert "\n" not in str(err.value)
    assert "wrong" not in str(err.value)
    assert "nope" not in str(err.value)


async def test_unreachable_server_says_which_url_and_how_to_start_one(
    make_nats_server: MakeServer,
) -> None:
    srv = make_nats_server()
    url = srv.url
    srv.stop()  # the port was just free'd: nothing listens there now
    with pytest.raises(ConnectError, match="cannot reach a NATS server") as err:
        async with Bus.connect(ConnectOptions(servers=[url], connect_timeout=1)):
            pass
    message = str(err.value)
    assert url in message
    assert "ranvier server" in message
    assert "\n" not in message


async def test_a_server_without_jetstream_is_a_clear_error(make_nats_server: MakeServer) -> None:
    srv = make_nats_server(extra_args=("--jetstream=false",))
    with pytest.raises(Exception, match="JetStream"):
        async with Bus.connect(ConnectOptions(servers=[srv.url], request_timeout=1)):
            pass


async def test_fetch_waits_for_new_messages_and_tops_up_the_batch(bus: Bus) -> None:
    consumer = await bus.consumer(subjects.EVENTS_STREAM, "waiter")
    assert await consumer.fetch(10, wait=0.2) == []  # nothing yet: waited, got nothing

    async def publish_later() -> None:
        await asyncio.sleep(0.2)
        await bus.publish_many([metric(i) for i in range(5)])

    later = asyncio.ensure_future(publish_later())
    got = await consumer.fetch(10, wait=10)
    await later
    assert 1 <= len(got) <= 5
    while len(got) < 5:
        got += await consumer.fetch(10, wait=1)
    assert [m.seq for m in got] == [1, 2, 3, 4, 5]
    for m in got:
        await m.ack()
    assert await consumer.num_pending() == 0
    await consumer.close()


async def test_consumer_on_a_missing_stream_is_a_clear_error(bus: Bus) -> None:
    with pytest.raises(BusError, match="no stream named 'NOPE'"):
        await bus.consumer("NOPE", "d")


async def test_kv_watch_can_skip_current_values(bus: Bus) -> None:
    await bus.kv_put(subjects.MODELS_BUCKET, "w.old", b"old")
    await bus.kv_put(subjects.MODELS_BUCKET, "w.older", b"older")
    changes = bus.kv_watch(subjects.MODELS_BUCKET, "w.*", include_current=False)
    pending = asyncio.ensure_future(anext(changes))
    writes = 0
    while not pending.done():  # a write before the watch began is a current value: write again
        writes += 1
        await bus.kv_put(subjects.MODELS_BUCKET, "w.new", f"new-{writes}".encode())
        await asyncio.wait({pending}, timeout=0.05)
    change = pending.result()
    assert (change.key, change.initial) == ("w.new", False)
    assert change.value is not None
    assert change.value.startswith(b"new-")
    await changes.aclose()


async def test_kv_watch_marks_current_values_initial_by_revision(bus: Bus) -> None:
    first = await bus.kv_put(subjects.MODELS_BUCKET, "m.a", b"1")
    await bus.kv_put(subjects.MODELS_BUCKET, "m.b", b"2")
    changes = bus.kv_watch(subjects.MODELS_BUCKET, "m.*")
    got = [await anext(changes), await anext(changes)]
    assert [(c.key, c.initial) for c in got] == [("m.a", True), ("m.b", True)]
    assert got[0].revision == first
    await bus.kv_put(subjects.MODELS_BUCKET, "m.a", b"3")
    later = await anext(changes)
    assert (later.key, later.value, later.initial) == ("m.a", b"3", False)
    await changes.aclose()


async def test_consuming_continues_across_a_server_restart(make_nats_server: MakeServer) -> None:
    srv = make_nats_server()
    options = ConnectOptions(servers=[srv.url], request_timeout=1.0, reconnect_wait=0.05)
    async with Bus.connect(options) as bus:
        await bus.publish_many([metric(i) for i in range(10)])
        consumer = await bus.consumer(subjects.EVENTS_STREAM, "survivor")
        first = await consumer.fetch(5, wait=1)
        for m in first:
            await m.ack()
        await bus.nc.flush()
        srv.kill()
        await asyncio.to_thread(make_nats_server, store_dir=srv.store_dir, port=srv.port)
        assert [m.seq for m in first] == [1, 2, 3, 4, 5]
        seen: set[int] = set()
        while not seen >= set(range(6, 11)):
            for m in await consumer.fetch(5, wait=1):
                seen.add(m.seq)
                await m.ack()
        # Acks the crash may have lost can come back once; nothing else and nothing missing.
        assert seen <= set(range(1, 11))
        await consumer.close()


def _decisions(prefix: str, count: int) -> list[Outgoing]:
    return [
        Outgoing(f"ranvier.dec.ml.s{i % 3}", f'{{"n":{i}}}'.encode(), f"{prefix}-{i}")
        for i in range(count)
    ]


async def test_publish_tail_acked_takes_one_ack_when_the_sequence_adds_up(bus: Bus) -> None:
    stream = subjects.DECISIONS_STREAM
    first = await bus.publish_tail_acked(_decisions("a", 5), last_seq=None)  # unknown: all acked
    assert first == 5
    acks_before = bus.nc.stats["in_msgs"]
    second = await bus.publish_tail_acked(_decisions("b", 50), last_seq=first)
    assert second == 55
    assert bus.nc.stats["in_msgs"] - acks_before == 1  # the last message's ack, nothing else
    assert (await bus.stream_info(stream)).state.messages == 55


async def test_publish_tail_acked_publishes_again_when_the_sequence_does_not_add_up(
    bus: Bus,
) -> None:
    """Another writer, or messages already stored (a batch published again after a crash):
    the last ack's sequence is not `last_seq + n`, so every message is published again with an
    ack of its own; their Msg-Ids keep each stored once."""
    stream = subjects.DECISIONS_STREAM
    seq = await bus.publish_tail_acked(_decisions("a", 10), last_seq=None)
    await bus.publish_many_encoded([Outgoing("ranvier.dec.ml.other", b"{}", "foreign")])
    acks_before = bus.nc.stats["in_msgs"]
    seq = await bus.publish_tail_acked(_decisions("b", 10), last_seq=seq)  # stale: 10, not 11
    assert seq == 21
    assert bus.nc.stats["in_msgs"] - acks_before == 1 + 10  # the tail ack, then one per message
    # The same messages again (as after a crash): all duplicates, none stored twice.
    again = await bus.publish_tail_acked(_decisions("b", 10), last_seq=seq)
    assert again is None  # nothing new stored: the stream's last sequence is not known here
    info = await bus.stream_info(stream)
    assert info.state.messages == 21


async def test_publish_tail_acked_never_loses_a_message_the_server_refused_silently(
    bus: Bus,
) -> None:
    """Without a reply subject a refused message says nothing; the sequence check notices the
    gap, and publishing again with acks surfaces the refusal as an error (the server does not
    even answer a message over a stream's max_msg_size: the publish times out)."""
    await bus.js.add_stream(name="LOSSY", subjects=["lossy.>"], max_msg_size=100)
    items = [
        Outgoing("lossy.a", b"small-1", "l-1"),
        Outgoing("lossy.b", b"x" * 200, "l-2"),  # over the stream's max_msg_size
        Outgoing("lossy.c", b"small-2", "l-3"),
    ]
    quick = bus.options.model_copy(update={"request_timeout": 0.5, "publish_retry_for": 1.0})
    async with Bus.connect(quick, ensure=False) as impatient:
        with pytest.raises(BusError, match="could not publish 1 message"):
            await impatient.publish_tail_acked(items, last_seq=0)
    assert (await bus.stream_info("LOSSY")).state.messages == 2  # the refused one: never stored
