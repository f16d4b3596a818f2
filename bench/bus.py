"""Bus throughput against plain nats-py, same server, same sizes, same concurrency, same run.

What is compared:
- publish: `Bus.publish_many(events)` (encoding each Event, subject from its payload, Msg-Id
  header, bounded in-flight acks) vs nats-py `js.publish_async` of the same bytes with the same
  Msg-Id header and the same bound (`publish_async_max_pending`), then
  `publish_async_completed()`.
- consume: `Bus.consume(...)` batches (each event parsed, each message acked) vs nats-py
  `pull_subscribe(...).fetch(batch)` with `msg.ack()` per message.

- partitioning: how the events stream partitions events. The server's subject transform
  (`{{partition(P,1)}}`, publishers unaware of P) vs a partition token that publishers would put
  in the subject themselves: raw nats-py publishes of the same events to a stream with the
  transform (`transform_publish_per_s`) and to one without, the token already in the subject
  (`token_publish_per_s`).

Each side gets its own fresh stream with the same configuration (file storage, 2 min duplicate
window). Rounds alternate raw/bus and the best round of each is kept, which damps the noise of
a shared machine. The last line of output is one JSON object (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import nats
from nats.js import api

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from events import subjects
from events.bus import Bus, ConnectOptions
from events.model import Event, MetricData
from events.server import EmbeddedServer

RAW_STREAM = "RAW_BENCH"
RAW_SUBJECTS = "rawbench.>"
TOKEN_STREAM = "RAW_TOKEN"
TRANSFORM_STREAM = "RAW_TRANSFORM"


def make_events(n: int) -> list[Event]:
    """Metric events of a realistic size (~400 bytes)."""
    labels = {"job": "model-server", "instance": "10.0.0.7:9000", "model": "gpt2-shakespeare"}
    return [
        MetricData(axon="ml-gpt2", name="accuracy", value=i / n, labels=labels).to_event(
            source="bench"
        )
        for i in range(n)
    ]


async def fresh_streams(bus: Bus) -> None:
    """Empty the Bus's events stream and recreate the raw stream with the same config."""
    await bus.js.purge_stream(subjects.EVENTS_STREAM)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await bus.js.delete_stream(RAW_STREAM)
    events_config = bus.stream_configs()[0]
    await bus.js.add_stream(
        api.StreamConfig(
            name=RAW_STREAM,
            subjects=[RAW_SUBJECTS],
            retention=events_config.retention,
            storage=events_config.storage,
            max_age=events_config.max_age,
            duplicate_window=events_config.duplicate_window,
        )
    )
    for name, prefix, transform in (
        (TOKEN_STREAM, "rawtok", None),
        (TRANSFORM_STREAM, "rawtr", _transform("rawtr", bus.partitions)),
    ):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await bus.js.delete_stream(name)
        await bus.js.add_stream(
            api.StreamConfig(
                name=name,
                subjects=[f"{prefix}.>"],
                retention=events_config.retention,
                storage=events_config.storage,
                max_age=events_config.max_age,
                duplicate_window=events_config.duplicate_window,
                subject_transform=transform,
            )
        )
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, "bench-bus")


def _transform(prefix: str, partitions: int) -> api.SubjectTransform:
    """The events stream's partition transform, under another prefix."""
    source, dest = subjects.partition_transform(partitions)
    return api.SubjectTransform(
        src=source.replace(subjects.PREFIX, prefix, 1),
        dest=dest.replace(subjects.PREFIX, prefix, 1),
    )


async def raw_publish(url: str, items: list[tuple[str, bytes, str]], window: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=window)
    start = time.perf_counter()
    for subject, data, msg_id in items:
        await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id})
    await js.publish_async_completed()
    elapsed = time.perf_counter() - start
    await nc.drain()
    return len(items) / elapsed


async def bus_publish(options: ConnectOptions, events: list[Event], window: int) -> float:
    async with Bus.connect(options, ensure=False) as bus:
        start = time.perf_counter()
        acks = await bus.publish_many(events, max_in_flight=window)
        elapsed = time.perf_counter() - start
    assert len(acks) == len(events)
    return len(events) / elapsed


async def raw_consume(url: str, n: int, batch: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        RAW_SUBJECTS,
        durable="bench-raw",
        stream=RAW_STREAM,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=10_000),
    )
    got = 0
    start = time.perf_counter()
    while got < n:
        for msg in await sub.fetch(batch, timeout=5):
            await msg.ack()
            got += 1
    elapsed = time.perf_counter() - start
    await nc.drain()
    return n / elapsed


async def bus_consume(options: ConnectOptions, n: int, batch: int) -> float:
    got = 0
    async with Bus.connect(options, ensure=False) as bus:
        start = time.perf_counter()
        async for msgs in bus.consume(subjects.EVENTS_STREAM, "bench-bus", batch=batch, max_wait=5):
            for msg in msgs:
                assert msg.event is not None  # the consumer's real work starts from the event
                await msg.ack()
            got += len(msgs)
            if got >= n:
                break
        elapsed = time.perf_counter() - start
    return n / elapsed


async def run(n: int, rounds: int, window: int, batch: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ranvier-bench-") as tmp:
        async with EmbeddedServer(store_dir=tmp) as srv:
            options = ConnectOptions(servers=[srv.url], name="bench")
            best = {
                "publish": 0.0,
                "raw_publish": 0.0,
                "consume": 0.0,
                "raw_consume": 0.0,
                "token_publish": 0.0,
                "transform_publish": 0.0,
            }
            async with Bus.connect(options) as admin:
                for r in range(rounds):
                    events = make_events(n)
                    raw_items = [
                        (f"rawbench.{ev.nats_subject}", ev.to_json(), ev.id) for ev in events
                    ]
                    p = admin.partitions
                    token_items = [
                        (f"rawtok.{subjects.stored_subject(s[9:], p)}", d, i)
                        for s, d, i in raw_items
                    ]
                    transform_items = [(f"rawtr.{s[9:]}", d, i) for s, d, i in raw_items]
                    await fresh_streams(admin)
                    steps: list[tuple[str, Callable[[], Awaitable[float]]]] = [
                        ("raw_publish", partial(raw_publish, srv.url, raw_items, window)),
                        ("publish", partial(bus_publish, options, events, window)),
                        ("raw_consume", partial(raw_consume, srv.url, n, batch)),
                        ("consume", partial(bus_consume, options, n, batch)),
                        ("token_publish", partial(raw_publish, srv.url, token_items, window)),
                        (
                            "transform_publish",
                            partial(raw_publish, srv.url, transform_items, window),
                        ),
                    ]
                    if r % 2:  # alternate who goes first, so neither always meets a busier server
                        steps = [steps[1], steps[0], steps[3], steps[2], steps[5], steps[4]]
                    for name, step in steps:
                        rate = await step()
                        best[name] = max(best[name], rate)
                        print(f"round {r + 1} {name}: {rate:,.0f}/s", file=sys.stderr)
    return {
        "bench": "bus",
        "events": n,
        "rounds": rounds,
        "max_in_flight": window,
        "batch": batch,
        "publish_per_s": round(best["publish"]),
        "raw_publish_per_s": round(best["raw_publish"]),
        "publish_ratio": round(best["publish"] / best["raw_publish"], 3),
        "consume_per_s": round(best["consume"]),
        "raw_consume_per_s": round(best["raw_consume"]),
        "consume_ratio": round(best["consume"] / best["raw_consume"], 3),
        "token_publish_per_s": round(best["token_publish"]),
        "transform_publish_per_s": round(best["transform_publish"]),
        "transform_ratio": round(best["transform_publish"] / best["token_publish"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run, under a minute")
    parser.add_argument("--events", type=int, default=None, help="events per round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (best one kept)")
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    n = args.events or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 5)
    result = asyncio.run(run(n, rounds, args.max_in_flight, args.batch))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
