"""Engine throughput: events per second through the pure engine (and, later, the runtime).

The pure part steps pre-built events through `sensors.engine.step` for Axons of 1, 100, 1,000
and 10,000 sensors, so it measures deciding alone: no bus, no serialisation of the input. Every
sensor has a Lifecycle trigger on its own task, an Alert on its own metric and a Rest trigger,
so each event concerns one sensor and the figure shows whether the indexes keep the cost of an
event independent of the sensors it cannot concern. The mix is a third each of: a task run
succeeding (fires a sensor, requests an action), a metric sample flipping an alert (fires on
every other sample), and the lifecycle report of an action requested earlier (ends its run).

The runtime part (events through `sensors.runtime` on a real nats-server vs a raw nats-py
durable consume of the same stream, and publish-to-action latency) is added by the runtime's
author: `measure_runtime` is its slot. `--pure-only` runs without it. The last line is ONE JSON
object in DESIGN.md's shape: {"bench": "engine", "results": [{"sensors", "events_per_s",
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


def build_axon(sensors: int) -> Axon:
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
            "metadata": {"name": AXON},
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
        gc.collect()
        started = time.perf_counter()
        decisions = 0
        for event in timed:
            decisions += len(engine.step(state, event, event.time).decisions)
        elapsed = time.perf_counter() - started
        assert decisions >= len(timed) * 2 // 3, (
            "events that should concern a sensor decided nothing"
        )
        best = max(best, len(timed) / elapsed)
    return best


def measure_runtime(sensors: int, count: int) -> dict[str, float]:  # pragma: no cover - slot
    """Runtime figures (events_per_s, raw_consume_per_s, ratio): added with sensors/runtime.py."""
    raise NotImplementedError("the runtime bench is not written yet; use --pure-only")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pure-only", action="store_true", help="engine alone, no bus")
    parser.add_argument("--quick", action="store_true", help="fewer events (under a minute)")
    parser.add_argument("--events", type=int, default=None, help="events per size")
    parser.add_argument("--repeats", type=int, default=3, help="pure runs per size (best kept)")
    args = parser.parse_args(argv)
    count = args.events or (15_000 if args.quick else 60_000)
    results: list[dict[str, Any]] = []
    for sensors in SIZES:
        row: dict[str, Any] = {"sensors": sensors}
        row["pure_events_per_s"] = round(measure_pure(sensors, count, args.repeats))
        if not args.pure_only:
            row.update(measure_runtime(sensors, count))
        results.append(row)
        print(f"# {sensors} sensors: {row}", file=sys.stderr)
    print(json.dumps({"bench": "engine", "events": count, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
