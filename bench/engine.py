"""Engine throughput: events per second through the pure engine (and, later, the runtime).

The pure part steps pre-built events through `sensors.engine.step` for Axons of 1, 100, 1,000
and 10,000 sensors, so it measures deciding alone: no bus, no serialisation of the input. Every
sensor has a Lifecycle trigger on its own task, an Alert on its own metric and a Rest trigger,
so each event concerns one sensor and the figure shows whether the indexes keep the cost of an
event independent of the sensors it cannot concern. The mix is a third each of: a task run
succeeding (fires a sensor, requests an action), a metric sample flipping an alert (fires on
every other sample), and the lifecycle report of an action requested earlier (ends its run).

The runtime part (`measure_runtime`) starts a fresh nats-server per size, submits the Axon,
stores the events (`build_runtime_events`: every action is reported back, as in a live system,
so state stays bounded), then reads the whole stream twice: with plain nats-py (durable pull
fetch + ack, the raw reference) and through `EngineRuntime`. `measure_latency` runs the engine
in its own process and times each event from publish to its action request, at 1,000 events/s
over 1,000 sensors. `--pure-only` runs without the bus. The last line is ONE JSON
object (docs/benchmarks.md): {"bench": "engine", "results": [{"sensors", "events_per_s",
"raw_consume_per_s", "ratio", "pure_events_per_s"}], "latency": {...}}; keys that the run did
not measure are absent.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from events.model import AxonData, Event, LifecycleData, MetricData  # noqa: E402 -- after making the repo importable
from sensors import engine  # noqa: E402 -- after making the repo importable
from sensors.spec import Axon  # noqa: E402 -- after making the repo importable

SIZES = (1, 100, 1000, 10_000)
AXON = "bench"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def build_axon(sensors: int, name: str = AXON) -> Axon:
    """An Axon with `sensors` sensors, each watching its own task and metric."""
    tasks = [{"name": f"t{i}", "container": {"image": "busybox"}} for i in range(sensors)]
    specs: list[dict[str, Any]] = [
        {
            "name": f"s{i}",
            "triggers": [
                {"name": "done", "type": "Lifecycle", "task": f"t{i}", "condition": "Succeeded"},
                {"name": "low", "type": "Alert", "condition": f"{{{{m{i}}}}} < 0.5"},
                {"name": "poke", "type": "Rest"},
            ],
            "tasks": [{"resourceExecutor": {"task": f"t{(i + 1) % sensors}"}}],
            "concurrency": "Allow",
        }
        for i in range(sensors)
    ]
    return Axon.model_validate(
        {
            "apiVersion": "ranvier.dev/v1alpha1",
            "kind": "Axon",
            "metadata": {"name": name},
            "spec": {"tasks": tasks, "sensors": specs},
        }
    )


def build_events(sensors: int, count: int) -> list[Event]:
    """`count` events in thirds: task succeeded, metric sample, report of an earlier action."""
    events: list[Event] = []
    pending: list[tuple[str, int]] = []  # (run id, sensor) of actions requested, oldest first
    for n in range(count):
        i = (n * 7919) % sensors  # spread over sensors deterministically
        time_ = T0 + timedelta(milliseconds=n)
        ev_id = f"ev{n:08d}"
        kind = n % 3
        data: LifecycleData | MetricData
        if kind == 0 or (kind == 2 and not pending):
            data = LifecycleData(axon=AXON, task=f"t{i}", run_id=f"run{n}", phase="Succeeded")
            pending.append((engine.sensor_run_id(ev_id, f"s{i}"), i))
        elif kind == 1:
            data = MetricData(axon=AXON, name=f"m{i}", value=0.3 if (n // 3) % 2 else 0.7)
        else:
            run_id, owner = pending.pop(0)
            data = LifecycleData(
                axon=AXON,
                task=f"t{(owner + 1) % sensors}",
                run_id=f"act{n}",
                phase="Succeeded",
                sensor=f"s{owner}",
                sensor_run_id=run_id,
                step=0,
            )
        events.append(data.to_event(source="bench", id=ev_id, time=time_))
    return events


def measure_pure(sensors: int, count: int, repeats: int = 3) -> float:
    """Events per second through `engine.step` alone: the best of `repeats` runs, each on a
    fresh state (the machine is shared, so the best run is the one least disturbed)."""
    axon = build_axon(sensors)
    events = build_events(sensors, count)
    warm, timed = events[: len(events) // 10], events[len(events) // 10 :]
    submit = AxonData(axon=AXON, generation=1, action="submitted").to_event(
        source="bench", id="submit", time=T0
    )
    best = 0.0
    for _ in range(repeats):
        state = engine.EngineState()
        engine.submit(state, axon, 1, submit, T0)
        for event in warm:
            engine.step(state, event, event.time)
        # As the runtime does after applying a generation: the spec and state are frozen out
        # of the collector's sight (full collections over 10,000 sensors' spec cost more than
        # the stepping); objects made while stepping are collected as usual.
        gc.collect()
        gc.freeze()
        started = time.perf_counter()
        decisions = 0
        for event in timed:
            decisions += len(engine.step(state, event, event.time).decisions)
        elapsed = time.perf_counter() - started
        gc.unfreeze()
        assert decisions >= len(timed) * 2 // 3, (
            "events that should concern a sensor decided nothing"
        )
        best = max(best, len(timed) / elapsed)
    return best


def build_runtime_events(sensors: int, count: int, name: str = AXON) -> list[Event]:
    """`count` events where, as in a live system, every requested action is reported back.

    A quarter are tasks succeeding (fire a sensor), a quarter metric samples (fire an alert
    every other sample), half the executor's reports of actions requested earlier (Failed: it
    ends their runs and fires no other sensor), oldest first; the pure engine says which
    actions were requested. So the number of active runs, and the state the runtime writes
    per batch, stays bounded.
    """
    state = engine.EngineState()
    submit = AxonData(axon=name, generation=1, action="submitted").to_event(
        source="bench", id="submit", time=T0
    )
    engine.submit(state, build_axon(sensors, name), 1, submit, T0)
    requested: list[Any] = []  # ActionRequest, oldest first
    events: list[Event] = []
    for n in range(count):
        i = (n * 7919) % sensors
        time_ = T0 + timedelta(milliseconds=n)
        data: LifecycleData | MetricData
        if n % 4 == 1:
            data = MetricData(axon=name, name=f"m{i}", value=0.3 if (n // 4) % 2 else 0.7)
        elif n % 4 in (2, 3) and requested:
            act = requested.pop(0)
            data = LifecycleData(  # Failed: ends the run without firing the task's sensor
                axon=name,
                task=act.task,
                run_id=f"act{n}",
                phase="Failed",
                sensor=act.sensor,
                sensor_run_id=act.sensor_run_id,
                step=act.step,
            )
        else:
            data = LifecycleData(axon=name, task=f"t{i}", run_id=f"run{n}", phase="Succeeded")
        event = data.to_event(source="bench", id=f"{name}-ev{n:08d}", time=time_)
        requested += engine.step(state, event, time_).actions
        events.append(event)
    return events


def _bench_server(tmp: Path) -> Any:
    from events.server import EmbeddedServer

    return EmbeddedServer(store_dir=tmp / "nats")


def _options(url: str, name: str) -> Any:
    from events.bus import ConnectOptions

    return ConnectOptions(servers=[url], name=name)


async def _fill(url: str, sensors: int, count: int) -> tuple[Axon, int]:
    """Submit the bench Axon, let an engine apply it, then store `count` events; returns the
    Axon and the last seq.

    Applying an Axon (compiling 10,000 sensors takes a second) happens once per generation, not
    per event, so it is left out of the timing, as `measure_pure` leaves it out: a runtime
    applies it and stops, and the one measured loads that state when it starts, as an engine
    restarted in a running system does.
    """
    from events.bus import Bus
    from sensors.axons import AxonStore

    axon = build_axon(sensors)
    async with Bus.connect(_options(url, "bench-fill")) as bus:
        await AxonStore(bus).submit(axon)
        await _through_runtime(url, 1)
        await bus.publish_many(build_runtime_events(sensors, count), max_in_flight=1024)
        last = int((await bus.stream_info()).state.last_seq)
    return axon, last


async def _raw_consume(url: str, total: int, batch: int) -> float:
    """Plain nats-py: a durable pull consumer, fetch + ack every message of the stream."""
    import nats

    from events import subjects

    nc = await nats.connect(url, name="bench-raw")
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            subjects.STORED_EVENTS, durable="bench-raw", stream=subjects.EVENTS_STREAM
        )
        got = 0
        started = time.perf_counter()
        while got < total:
            msgs = await sub.fetch(batch, timeout=5)
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
        elapsed = time.perf_counter() - started
        await sub.unsubscribe()
    finally:
        await nc.close()
    return total / elapsed


async def _through_runtime(url: str, events: int) -> float:
    """Events per second through a fresh `EngineRuntime` (its default settings), timed from when
    it is ready (state loaded) until it has acked `events` events."""
    import asyncio
    import contextlib

    from events.bus import Bus
    from sensors.runtime import EngineRuntime

    async with Bus.connect(_options(url, "bench-engine")) as bus:
        runtime = EngineRuntime(bus)
        task = asyncio.create_task(runtime.run())
        ready = asyncio.create_task(runtime.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # raises what stopped it
        started = time.perf_counter()
        while runtime.stats.acked < events:
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return events / elapsed


def measure_runtime(sensors: int, count: int, batch: int = 256) -> dict[str, float]:
    """Events/s through the runtime vs a raw nats-py fetch + ack of the same stream, same server.

    One fresh nats-server per size: the Axon is submitted and `count` events stored first, then
    the raw consumer and the runtime each read the whole stream with their own durable. The raw
    consumer fetches `batch` (256) at a time: 128 and 512 measured the same, and nats-py's fetch
    cannot take more than the consumer's default 1,000 unacked messages. The runtime runs with
    its defaults (batches of 1,024).
    """
    import asyncio
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, _bench_server(Path(tmp)) as server:
        _, total = asyncio.run(_fill(server.url, sensors, count))
        raw = asyncio.run(_raw_consume(server.url, total, batch))
        through = asyncio.run(_through_runtime(server.url, count))
    return {
        "events_per_s": round(through),
        "raw_consume_per_s": round(raw),
        "ratio": round(through / raw, 3),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _latency_run(url: str, sensors: int, rate: int, seconds: float) -> list[float]:
    """Publish "task succeeded" events at `rate`/s; time each until its action request arrives
    (a core subscription on the actions subjects, in this process: one clock)."""
    import asyncio
    import contextlib

    from events import subjects
    from events.bus import MSG_ID, Bus

    count = int(rate * seconds)
    events = [
        LifecycleData(
            axon=AXON, task=f"t{(n * 7919) % sensors}", run_id=f"lat{n}", phase="Succeeded"
        ).to_event(source="bench", id=f"lat{n:08d}", time=T0)
        for n in range(count)
    ]
    owner = {
        engine.sensor_run_id(e.id, f"s{(n * 7919) % sensors}"): n for n, e in enumerate(events)
    }
    sent: list[float] = [0.0] * count
    latencies: list[float] = []
    done = asyncio.Event()

    async def on_action(msg: Any) -> None:
        run_id = str(msg.headers.get(MSG_ID, "")).split("/")[2]
        n = owner.get(run_id)
        if n is not None and sent[n]:
            latencies.append((time.perf_counter() - sent[n]) * 1000)
            if len(latencies) >= count:
                done.set()

    async with Bus.connect(_options(url, "bench-latency")) as bus:
        await bus.nc.subscribe(subjects.ACTIONS_SUBJECTS, cb=on_action)
        encoded = [bus.outgoing(e) for e in events]
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, item in enumerate(encoded):
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[n] = time.perf_counter()
            await bus.nc.publish(item.subject, item.data, headers={MSG_ID: item.msg_id})
        with contextlib.suppress(TimeoutError):  # report what arrived
            async with asyncio.timeout(30):
                await done.wait()
    return latencies


def measure_latency(sensors: int, rate: int, seconds: float) -> dict[str, float]:
    """p50/p99 ms from event publish to action request, the engine in its own process."""
    import asyncio
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, _bench_server(Path(tmp)) as server:
        asyncio.run(_fill(server.url, sensors, 0))
        engine_proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-engine", server.url],
            stdout=subprocess.PIPE,
        )
        try:
            assert engine_proc.stdout is not None
            if engine_proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("the engine process did not start")
            latencies = asyncio.run(_latency_run(server.url, sensors, rate, seconds))
        finally:
            engine_proc.kill()
            engine_proc.wait()
            if engine_proc.stdout is not None:
                engine_proc.stdout.close()
    if not latencies:
        raise RuntimeError("no action request arrived")
    return {
        "rate_per_s": rate,
        "sensors": sensors,
        "events": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.50), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
    }


def serve_engine(url: str) -> None:
    """Run the runtime until killed (the latency bench's engine process)."""
    import asyncio

    from events.bus import Bus
    from sensors.runtime import EngineRuntime

    async def go() -> None:
        async with Bus.connect(_options(url, "bench-engine")) as bus:
            runtime = EngineRuntime(bus)
            task = asyncio.create_task(runtime.run())
            await runtime.ready.wait()  # the Axon's state loaded (`_fill` had it applied)
            print("ready", flush=True)
            await task

    asyncio.run(go())


def _quiet_logs() -> None:
    import logging

    import structlog

    structlog.configure(
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pure-only", action="store_true", help="engine alone, no bus")
    parser.add_argument("--quick", action="store_true", help="fewer events (under a minute)")
    parser.add_argument("--events", type=int, default=None, help="events per size")
    parser.add_argument("--repeats", type=int, default=3, help="pure runs per size (best kept)")
    parser.add_argument("--serve-engine", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated sensor counts")
    args = parser.parse_args(argv)
    _quiet_logs()
    if args.serve_engine:
        serve_engine(args.serve_engine)
        return 0
    count = args.events or (15_000 if args.quick else 60_000)
    sizes = tuple(int(x) for x in args.sizes.split(",")) if args.sizes else SIZES
    results: list[dict[str, Any]] = []
    for sensors in sizes:
        row: dict[str, Any] = {"sensors": sensors}
        row["pure_events_per_s"] = round(measure_pure(sensors, count, args.repeats))
        if not args.pure_only:
            row.update(measure_runtime(sensors, count))
        results.append(row)
        print(f"# {sensors} sensors: {row}", file=sys.stderr)
    report: dict[str, Any] = {"bench": "engine", "events": count, "results": results}
    if not args.pure_only:
        report["latency"] = measure_latency(1000, 1000, 3.0 if args.quick else 10.0)
        print(f"# latency: {report['latency']}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
