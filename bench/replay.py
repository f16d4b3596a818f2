"""Dry-run speed: recorded events through `sensors.replay` vs an ordered raw read of them.

A user debugs an Axon by replaying what the bus recorded (`ranvier events export`, then
`ranvier sensors test AXON.yaml --events EVENTS.jsonl`). This measures that path end to end on
the stream: a fresh nats-server holds the events of `bench/engine.py` (1,000 sensors: tasks
succeeding, metric samples flipping alerts, reports of earlier actions), and

- the dry run reads them in order with `Bus.replay` (an ordered consumer, each message parsed
  into an Event) and prints nothing but makes every line `sensors test` would print
  (`replay_lines`: the pure engine on the events' own clock, canonical JSON per decision);
- the raw reference reads the same stream with a plain nats-py ordered consumer and touches
  each message's bytes.

The last line is ONE JSON object (docs/benchmarks.md): {"bench": "replay", "events",
"events_per_s", "raw_read_per_s", "ratio"}; the best of `--rounds` rounds of each (the machine
is shared), measured alternately on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.engine import _bench_server, _options, _quiet_logs, build_axon, build_events  # noqa: E402 -- after making the repo importable

SENSORS = 1000


async def _store(url: str, count: int) -> int:
    """Store `count` events; returns how many the stream holds."""
    from events.bus import Bus

    async with Bus.connect(_options(url, "bench-replay-fill")) as bus:
        await bus.publish_many(build_events(SENSORS, count), max_in_flight=1024)
        return int((await bus.stream_info()).state.messages)


async def _dry_run(url: str) -> tuple[int, int, float]:
    """(events, decision lines, seconds) of a dry run over the whole stream."""
    from events.bus import Bus
    from sensors.replay import replay_lines

    axon = build_axon(SENSORS)
    async with Bus.connect(_options(url, "bench-replay"), ensure=False) as bus:
        started = time.perf_counter()
        events = [item.event async for item in bus.replay()]
        lines = sum(1 for _ in replay_lines(axon, events))
        elapsed = time.perf_counter() - started
    return len(events), lines, elapsed


async def _raw_read(url: str, total: int) -> float:
    """Seconds for a plain nats-py ordered consumer to read `total` messages."""
    import nats

    from events import subjects

    nc = await nats.connect(url, name="bench-replay-raw")
    try:
        js = nc.jetstream()
        started = time.perf_counter()
        sub = await js.subscribe(
            subjects.STORED_EVENTS, stream=subjects.EVENTS_STREAM, ordered_consumer=True
        )
        size = 0
        for _ in range(total):
            msg = await sub.next_msg(timeout=10)
            size += len(msg.data)
        elapsed = time.perf_counter() - started
        await sub.unsubscribe()
    finally:
        await nc.close()
    if not size:
        raise RuntimeError("the raw read got no data")
    return elapsed


def measure(count: int, rounds: int) -> dict[str, Any]:
    """The replay figures for `count` events (best of `rounds` of each)."""
    with tempfile.TemporaryDirectory() as tmp, _bench_server(Path(tmp)) as server:
        total = asyncio.run(_store(server.url, count))
        dry: list[float] = []
        raw: list[float] = []
        lines = 0
        for _ in range(rounds):
            events, lines, seconds = asyncio.run(_dry_run(server.url))
            if events != total:
                raise RuntimeError(f"the dry run read {events} of {total} events")
            dry.append(seconds)
            raw.append(asyncio.run(_raw_read(server.url, total)))
    if lines < total // 2:
        raise RuntimeError(f"only {lines} decisions for {total} events: the bench Axon is wrong")
    events_per_s = total / min(dry)
    raw_per_s = total / min(raw)
    return {
        "bench": "replay",
        "events": total,
        "decisions": lines,
        "events_per_s": round(events_per_s),
        "raw_read_per_s": round(raw_per_s),
        "ratio": round(events_per_s / raw_per_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer events (seconds)")
    parser.add_argument("--events", type=int, default=None, help="events to replay")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (best kept)")
    args = parser.parse_args(argv)
    _quiet_logs()
    count = args.events or (15_000 if args.quick else 60_000)
    print(json.dumps(measure(count, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
