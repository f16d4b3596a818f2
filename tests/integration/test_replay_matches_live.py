"""A recording of a live run replays exactly: the property test.

Random scenarios (metric values crossing an Alert's threshold with random `for`,
`keepFiringFor` and `cooldown`; lifecycle events; Calendar ticks) run live through the engine
runtime on a real nats-server with real timing: events arrive at random moments, and the
engine ticks on the wall clock between them. Then the stream is read back (what `ranvier
events export` writes) and each scenario's Axon is dry-run over it (`sensors.replay`, what
`ranvier sensors test` runs): every decision, fired or not, with its sensor run id, reason
and actions, must be the one the live engine recorded, in the same order.

The scenarios are drawn from a seeded generator (the seed is in every failure message); a
live run cannot be shrunk the way hypothesis shrinks pure inputs, so many small scenarios run
at once instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from typing import Any

import pytest

from events import subjects
from events.bus import Bus
from events.model import (
    TICK,
    CalendarData,
    DecisionData,
    Event,
    LifecycleData,
    MetricData,
    utcnow,
)
from sensors.axons import AxonStore
from sensors.loader import load_axon_text
from sensors.replay import decision_line, replay
from sensors.spec import Axon
from tests.integration.runtime_kit import caught_up, running, stored_decisions

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(170)]

SCENARIOS = 200
SPAN = 3.0  # seconds of events per scenario

AXON = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {{name: {name}}}
spec:
  tasks:
    - {{name: T, container: {{image: busybox}}}}
    - {{name: U, container: {{image: busybox}}}}
  sensors:
    - name: alerting
      concurrency: {concurrency}
      triggers:
        - name: low
          type: Alert
          condition: "{{{{m}}}} < 0.5"
          for: {for_}s
          keepFiringFor: {keep}s
          cooldown: {cooldown}s
      tasks: [{{resourceExecutor: {{task: T}}}}]
    - name: chained
      triggers: [{{name: done, type: Lifecycle, task: T, condition: Succeeded}}]
      tasks: [{{resourceExecutor: {{task: U}}}}]
    - name: scheduled
      concurrency: Allow
      triggers: [{{name: every, type: Calendar, interval: 1s}}]
      tasks: [{{resourceExecutor: {{task: U}}}}]
"""


def scenario(rng: random.Random, k: int) -> tuple[Axon, list[tuple[float, Event]]]:
    """An Axon with random timings and its events, each with the delay before it is sent."""
    name = f"live-{k}"
    axon = load_axon_text(
        AXON.format(
            name=name,
            concurrency=rng.choice(["Allow", "Forbid"]),
            for_=rng.choice([0, 0.1, 0.25, 0.5]),
            keep=rng.choice([0, 0, 0.2, 0.4]),
            cooldown=rng.choice([0, 0, 0.3, 1]),
        ),
        f"{name}.yaml",
    )
    timeline: list[tuple[float, Event]] = []
    clock = 0.0
    n = 0
    while clock < SPAN:
        clock += rng.uniform(0.02, 0.35)
        n += 1
        roll = rng.random()
        data: MetricData | LifecycleData | CalendarData
        if roll < 0.7:
            data = MetricData(axon=name, name="m", value=round(rng.random(), 2))
        elif roll < 0.85:
            data = LifecycleData(axon=name, task="T", run_id=f"{name}-t{n}", phase="Succeeded")
        else:
            data = CalendarData(
                axon=name, sensor="scheduled", trigger="every", scheduled_time=utcnow()
            )
        timeline.append((clock, data.to_event(source="test", id=f"{name}-e{n}")))
    return axon, timeline


async def play(bus: Bus, timeline: list[tuple[float, Event]]) -> None:
    """Publish each event at its moment, stamped with the time it is sent (as producers do)."""
    start = time.monotonic()
    for at, event in timeline:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        await bus.publish(event.model_copy(update={"time": utcnow()}))


def lines(decisions: Any) -> list[dict[str, Any]]:
    return [decision_line(d) for d in decisions]


async def test_every_live_decision_replays_identically(bus: Bus) -> None:
    seed = int(os.environ.get("RANVIER_TEST_SEED", time.time_ns() % 10**9))
    rng = random.Random(seed)
    scenarios = [scenario(rng, k) for k in range(SCENARIOS)]
    store = AxonStore(bus)
    for axon, _ in scenarios:
        await store.submit(axon)
    async with running(bus, lease_ttl=4.0):
        await asyncio.gather(*(play(bus, timeline) for _, timeline in scenarios))
        await settled(bus)
        recording = [item.event for item in await _all(bus)]
        decisions = await stored_decisions(bus)
    by_axon: dict[str, list[Event]] = defaultdict(list)
    for event in recording:
        by_axon[str(event.data.get("axon"))].append(event)
    live: dict[str, list[Any]] = defaultdict(list)
    for record in decisions:
        live[str(record["axon"])].append(record)

    ticks = sum(1 for e in recording if e.type == TICK)
    timed_fires = 0
    without_ticks_differ = 0
    for axon, _ in scenarios:
        name = axon.metadata.name
        events = by_axon[name]
        want = [decision_line(DecisionData.model_validate(r)) for r in live[name]]
        got = lines(replay(axon, events))
        assert got == want, f"seed {seed}: {name} replayed differently"
        timed_fires += sum(1 for r in want if r["fired"] and r["reason"].startswith("tick at"))
        no_ticks = lines(replay(axon, [e for e in events if e.type != TICK]))
        without_ticks_differ += no_ticks != want
    # The scenarios exercised what the test is about: the live engine ticked, alerts fired on
    # those ticks, and without them a dry run would have told another story.
    assert ticks > SCENARIOS // 4, f"seed {seed}: only {ticks} ticks"
    assert timed_fires > 0, f"seed {seed}: no alert fired on a tick"
    assert without_ticks_differ > 0, f"seed {seed}: the ticks changed nothing"


async def settled(bus: Bus) -> None:
    """Wait until the engine has handled every event and no deadline is left to tick: the
    stream stays the same over a second (the longest wait here is a 1 s cooldown)."""
    last = -1
    while True:
        await caught_up(bus, limit=60)
        now = int((await bus.stream_info()).state.last_seq or 0)
        if now == last:
            return
        last = now
        await asyncio.sleep(1.2)


async def _all(bus: Bus) -> list[Any]:
    return [item async for item in bus.replay(filter_subject=subjects.events_filter())]
