"""Helpers for the engine runtime tests: a two-step Axon, its events, and reading the streams.

The expected results are never written out by hand: `expected_keys` runs the pure engine over
the very events the stream holds (in stream order), which is what the runtime must agree with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import nats.js.errors

from events import subjects
from events.bus import Bus
from events.model import AXON, ActionRequest, Event, LifecycleData, utcnow
from sensors import engine
from sensors.loader import load_axon_text
from sensors.runtime import DURABLE, EngineRuntime, partition_durable
from sensors.runtime import caught_up as engine_caught_up
from sensors.spec import Axon

NAME = "pipe"
READY_WITHIN = 60.0
"""Seconds a test waits for a runtime to load its state and consume."""

AXON_YAML = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: pipe}
spec:
  tasks:
    - {name: Prep, container: {image: busybox}}
    - {name: Train, train: {image: trainer}}
    - {name: Eval, container: {image: busybox}}
  sensors:
    - name: retrain
      concurrency: Allow
      triggers:
        - {name: prepped, type: Lifecycle, task: Prep, condition: Succeeded}
      tasks:
        - trainer: {task: Train}
        - resourceExecutor: {task: Eval}
"""


CHANGED_SENSOR = """\
    - name: audit
      triggers:
        - {name: evaluated, type: Lifecycle, task: Eval, condition: Succeeded}
      tasks:
        - resourceExecutor: {task: Prep}
"""


def two_step_axon(extra_sensor: str = "", name: str = NAME) -> Axon:
    """The test Axon: Prep succeeding runs Train then Eval (plus `extra_sensor` YAML lines)."""
    text = AXON_YAML.replace(f"name: {NAME}}}", f"name: {name}}}")
    return load_axon_text(text + extra_sensor, "axon.yaml")


def spread_names(count: int, partitions: int) -> list[str]:
    """`count` Axon names whose partitions lie evenly over `partitions` (so replicas that
    split the partitions evenly each get some of them)."""
    wanted = [k * partitions // count for k in range(count)]
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        name = f"{NAME}-{i}"
        p = subjects.partition_of(name, partitions)
        if p in wanted and p not in found:
            found[p] = name
        i += 1
    return [found[p] for p in wanted]


def prep_done(n: int, name: str = NAME) -> Event:
    """Task Prep's run `n` succeeded: fires `retrain`."""
    ev_id = f"prep-{n}" if name == NAME else f"{name}-prep-{n}"
    data = LifecycleData(axon=name, task="Prep", run_id=ev_id, phase="Succeeded")
    return data.to_event(source="test", id=ev_id)


def report(action: ActionRequest, phase: str = "Succeeded", n: int = 0) -> Event:
    """The executor's lifecycle report for an action request."""
    data = LifecycleData.model_validate(
        {
            "axon": action.axon,
            "task": action.task,
            "run_id": f"run-{action.sensor_run_id}-{action.step}-{n}",
            "phase": phase,
            "sensor": action.sensor,
            "sensor_run_id": action.sensor_run_id,
            "step": action.step,
            "index": action.index,
            "attempt": action.attempt,
        }
    )
    return data.to_event(source="test", id=f"rep-{action.idempotency_key}-{phase}-{n}")


def as_action(event: Event) -> ActionRequest:
    """The action request an action event carries."""
    return ActionRequest.model_validate(event.data)


def workload(count: int, name: str = NAME) -> list[Event]:
    """`count` lifecycle events: Prep runs succeeding and the reports of the Train actions
    they cause (so runs advance to Eval), interleaved deterministically."""
    events: list[Event] = []
    started: list[str] = []
    n = 0
    while len(events) < count:
        if n % 3 != 2 or not started:
            ev = prep_done(n, name)
            started.append(engine.sensor_run_id(ev.id, "retrain"))
            events.append(ev)
        else:
            rid = started.pop(0)
            train = ActionRequest(
                axon=name, sensor="retrain", sensor_run_id=rid, step=0, kind="trainer", task="Train"
            )
            events.append(report(train, n=n))
        n += 1
    return events


async def stream_events(bus: Bus) -> list[Event]:
    """Every valid event in RANVIER_EVENTS, in stream order."""
    return [item.event async for item in bus.replay()]


def expected_keys(axon: Axon | Mapping[str, Axon], events: Iterable[Event]) -> list[str]:
    """Idempotency keys the pure engine requests for these events, in order (submits use
    `axon`, or the Axon of the event's name, at the generation the event names)."""
    state = engine.EngineState()
    now = utcnow()
    keys: list[str] = []
    for event in events:
        if event.type == AXON and event.data.get("action") == "submitted":
            spec = axon if isinstance(axon, Axon) else axon[str(event.data["axon"])]
            result = engine.submit(state, spec, int(event.data["generation"]), event, now)
        else:
            result = engine.step(state, event, now)
        keys += [a.idempotency_key for a in result.actions]
    return keys


async def stored_actions(bus: Bus) -> list[tuple[str, Event]]:
    """(Nats-Msg-Id, event) of every message in the RANVIER_ACTIONS work queue, in order.

    A work-queue stream takes no ordered consumer, so messages are read one by one by sequence.
    """
    info = await bus.stream_info(subjects.ACTIONS_STREAM)
    if not info.state.messages:
        return []
    out: list[tuple[str, Event]] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await bus.js.get_msg(subjects.ACTIONS_STREAM, seq)
        except nats.js.errors.NotFoundError:
            continue
        headers = msg.headers or {}
        out.append((str(headers.get("Nats-Msg-Id")), Event.from_json(msg.data or b"")))
    return out


async def stored_decisions(bus: Bus) -> list[dict[str, Any]]:
    """The data of every decision record, in stream order."""
    return [item.event.data async for item in bus.replay(stream=subjects.DECISIONS_STREAM)]


def duplicates(keys: Iterable[str]) -> dict[str, int]:
    """Keys seen more than once, with their counts."""
    return {k: c for k, c in Counter(keys).items() if c > 1}


def durable_of(bus: Bus, axon: str = NAME) -> str:
    """The engine's durable consumer for an Axon's partition."""
    return partition_durable(DURABLE, subjects.partition_of(axon, bus.partitions))


async def caught_up(bus: Bus, *, durable: str = DURABLE, limit: float = 60.0) -> None:
    """Wait until, for every partition holding events, the engine's consumer of that
    partition has delivered and had acked every one of them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        if await engine_caught_up(bus, durable):
            return
        if loop.time() > deadline:
            last = (await bus.stream_info()).state.last_seq
            raise TimeoutError(f"the engine did not catch up with seq {last} in {limit}s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(bus: Bus, **options: Any) -> AsyncIterator[EngineRuntime]:
    """An `EngineRuntime` on its own connection to `bus`'s server, as a task, cancelled on exit.

    Like a real engine process it has a connection of its own: cancelling it must not leave
    anything half-done on the connection the test keeps using.
    """
    async with Bus.connect(bus.options) as own, _running_on(own, **options) as runtime:
        yield runtime


@contextlib.asynccontextmanager
async def _running_on(bus: Bus, **options: Any) -> AsyncIterator[EngineRuntime]:
    runtime = EngineRuntime(bus, **options)
    task = asyncio.create_task(runtime.run())
    try:
        ready = asyncio.create_task(runtime.ready.wait())
        done, _ = await asyncio.wait(
            {task, ready}, timeout=READY_WITHIN, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            ready.cancel()
            task.result()  # raises what stopped it
        if not done:  # it keeps retrying its start (the runtime logs why): fail, do not hang
            ready.cancel()
            raise TimeoutError(f"the engine runtime was not ready within {READY_WITHIN}s")
        yield runtime
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def record_of(raw: bytes) -> dict[str, Any]:
    """A KV JSON value."""
    value: dict[str, Any] = json.loads(raw)
    return value


REPO = Path(__file__).resolve().parents[2]


async def start_engine(
    url: str, replica: str = "engine", lease_ttl: float = 8.0, replicas: int | None = None
) -> asyncio.subprocess.Process:
    """An engine replica process (`engine_process`), returned once it is ready. A restart
    under the same `replica` name takes its partitions back at once. `replicas`: the
    streams' and buckets' replica count it asks for (on a NATS cluster)."""
    args = [url, replica, str(lease_ttl), *([str(replicas)] if replicas else [])]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.engine_process",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        line = await proc.stdout.readline()
    assert line.strip() == b"ready", f"engine process did not start: {line!r}"
    return proc


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL, and reap."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


async def terminate(proc: asyncio.subprocess.Process, within: float = 15.0) -> int:
    """SIGTERM (a graceful hand-over) and reap; SIGKILL if it takes longer than `within`."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        async with asyncio.timeout(within):
            return await proc.wait()
    except TimeoutError:
        await kill(proc)
        raise
