"""Engine replicas: aggregate events per second with 1, 2, 4 ... engine processes.

Per replica count, on a fresh nats-server: one Axon per partition (so every partition has
work; `--sensors` each) is submitted and applied, then N engine processes start
(`--serve-engine`, each its own replica) and the bench waits until they hold the partitions as
`sensors.leases.assign` spreads them. Then the events (the engine bench's runtime mix, every
action reported back, interleaved over the Axons) are published as fast as one client can,
and the time from the first publish to the last event acked by the engines gives the
aggregate events/s. The raw reference, in the same run on the same server, is one plain
nats-py durable consumer (fetch + ack) reading the same stored events.

Two cores are shared by nats-server, the publisher and every engine process here: more
replicas cannot run faster than one on this machine; what the figure shows is what
partitioning and leases cost (or not) when the work is split.

Last line: {"bench": "scale", "events", "sensors", "results": [{"replicas", "events_per_s",
"raw_consume_per_s", "ratio", "publish_s"}]}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.engine import (  # noqa: E402 -- after making the repo importable
    _bench_server,
    _options,
    _quiet_logs,
    _raw_consume,
    build_axon,
    build_runtime_events,
)


def axon_names(partitions: int) -> list[str]:
    """One Axon name per partition."""
    from events import subjects

    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        name = f"scale-{i}"
        found.setdefault(subjects.partition_of(name, partitions), name)
        i += 1
    return [found[p] for p in range(partitions)]


async def _prepare(url: str, sensors: int) -> list[str]:
    """Submit one Axon per partition and let a runtime apply them (not timed)."""
    from events.bus import Bus
    from sensors.axons import AxonStore
    from sensors.runtime import EngineRuntime

    async with Bus.connect(_options(url, "scale-prepare")) as bus:
        names = axon_names(bus.partitions)
        for name in names:
            await AxonStore(bus).submit(build_axon(sensors, name))
        runtime = EngineRuntime(bus, replica="prepare")
        task = asyncio.create_task(runtime.run())
        await _until_caught_up(bus)
        task.cancel()  # a graceful hand-over: the leases are free for the measured replicas
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return names


async def _balanced(url: str, replicas: int, limit: float = 60.0) -> None:
    """Wait until `replicas` replicas are alive and hold the partitions as assigned."""
    from events.bus import Bus
    from sensors.leases import LeaseTable, assign

    async with Bus.connect(_options(url, "scale-watch")) as bus:
        table = LeaseTable(bus, replica="scale-watch", partitions=bus.partitions, ttl=1)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            members = await table.members()
            if len(members) == replicas and await table.owners() == assign(members, bus.partitions):
                return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{replicas} replicas did not settle on the partitions in {limit}s")


async def _publish_and_wait(
    url: str, names: list[str], sensors: int, count: int
) -> tuple[float, float, int]:
    """Publish the events, return (seconds until all acked, seconds publishing, last seq)."""
    from events.bus import Bus

    per_axon = count // len(names)
    groups = [build_runtime_events(sensors, per_axon, name) for name in names]
    events = [ev for group in zip(*groups, strict=True) for ev in group]
    async with Bus.connect(_options(url, "scale-publish")) as bus:
        encoded = [bus.outgoing(e) for e in events]
        started = time.perf_counter()
        await bus.publish_many_encoded(encoded, max_in_flight=1024)
        published = time.perf_counter() - started
        await _until_caught_up(bus)
        elapsed = time.perf_counter() - started
        last = int((await bus.stream_info()).state.last_seq or 0)
    return elapsed, published, len(events) if last else 0


async def _until_caught_up(bus: Any) -> None:
    from sensors.runtime import caught_up

    while True:  # polled: the engines are other processes
        if await caught_up(bus):
            return
        await asyncio.sleep(0.02)


def _start_engine(url: str, replica: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-engine", url, replica],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError("an engine process did not start")
    return proc


def measure(replicas: int, sensors: int, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, _bench_server(Path(tmp)) as server:
        names = asyncio.run(_prepare(server.url, sensors))
        procs = [_start_engine(server.url, f"scale-{i}") for i in range(replicas)]
        try:
            asyncio.run(_balanced(server.url, replicas))
            elapsed, published, total = asyncio.run(
                _publish_and_wait(server.url, names, sensors, count)
            )
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        last = asyncio.run(_last_seq(server.url))
        raw = asyncio.run(_raw_consume(server.url, last, 256))
    through = total / elapsed
    return {
        "replicas": replicas,
        "events_per_s": round(through),
        "raw_consume_per_s": round(raw),
        "ratio": round(through / raw, 3),
        "publish_s": round(published, 3),
    }


async def _last_seq(url: str) -> int:
    from events.bus import Bus

    async with Bus.connect(_options(url, "scale-info")) as bus:
        return int((await bus.stream_info()).state.last_seq or 0)


def serve_engine(url: str, replica: str) -> None:
    """One engine replica until killed."""
    from events.bus import Bus
    from sensors.runtime import EngineRuntime

    async def go() -> None:
        async with Bus.connect(_options(url, f"scale-{replica}")) as bus:
            runtime = EngineRuntime(bus, replica=replica)
            task = asyncio.create_task(runtime.run())
            await runtime.ready.wait()
            print("ready", flush=True)
            await task

    asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicas", default="1,2,4", help="comma-separated replica counts")
    parser.add_argument("--sensors", type=int, default=100, help="sensors per Axon")
    parser.add_argument("--events", type=int, default=None, help="events per replica count")
    parser.add_argument("--quick", action="store_true", help="fewer events (under a minute)")
    parser.add_argument(
        "--serve-engine", nargs=2, metavar=("URL", "REPLICA"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    _quiet_logs()
    if args.serve_engine:
        serve_engine(*args.serve_engine)
        return 0
    count = args.events or (16_000 if args.quick else 64_000)
    results = []
    for replicas in (int(x) for x in args.replicas.split(",")):
        row = measure(replicas, args.sensors, count)
        results.append(row)
        print(f"# {replicas} replicas: {row}", file=sys.stderr)
    print(
        json.dumps({"bench": "scale", "events": count, "sensors": args.sensors, "results": results})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
