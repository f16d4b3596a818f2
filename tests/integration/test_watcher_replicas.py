"""Two watcher replicas against one nats-server store what one replica would.

Nothing coordinates watcher replicas (a rolling update overlaps two, high availability keeps
two): each event id is a function of what the event reports, so whichever replica publishes
first, the events stream's duplicate window (Nats-Msg-Id) keeps one copy and acks the other as
a duplicate. The ids are

- metric values: the query's (namespace, axon, sensor, trigger, key) and the interval's index
  since the epoch (`metric_event_id`);
- Calendar ticks: the trigger and the scheduled time (`tick_event_id`);
- cluster lifecycle: the run and the phase (`lifecycle_event_id`).

Each replica has a connection of its own, as separate processes have, through `AckedBus`: a
real `Bus` that keeps the server's ack of every event it published. So the tests assert both
that every tick or transition is stored once and that the other replica's copy of it was
really published and dropped by the server; ids that differed between replicas would store
two. The Calendar test also runs an engine: one action request per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from events import subjects
from events.bus import Bus, Published
from events.model import ActionRequest, CalendarData, Event, LifecycleData, MetricData
from events.watchers.calendar import tick_event_id
from events.watchers.calendar_watcher import CalendarWatcher
from events.watchers.lifecycle import LifecycleWatcher, run_event_id
from executors.backends import k8s_objects as k8s
from executors.cluster import ClusterReporter
from ranvier.app import calendar_provider
from sensors import engine
from sensors.axons import AxonStore
from sensors.loader import load_axon_text
from sensors.watcher import MetricsWatcher, metric_event_id, plan_axon
from tests.integration.k8s_kit import COMPLETE, RUNNING, Env, env, set_job_status, settings_for
from tests.integration.runtime_kit import as_action, caught_up, running, stored_actions
from tests.integration.test_metric_watcher import axon_text, deploy_record, feedback, model_server

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(60)]

WAIT = 20.0
"""Seconds a test waits for the replicas to have published what it needs."""
TICKS = 4
"""Ticks each replica must have published before the watchers are stopped."""

Key = Callable[[Event], Hashable]
"""What an event stands for (a tick of a query or trigger, a run's transition)."""


class AckedBus(Bus):
    """A `Bus` that keeps every event it published with the server's ack of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acks: list[tuple[Event, Published]] = []

    async def publish(
        self, event: Event, *, msg_id: str | None = None, subject: str | None = None
    ) -> Published:
        assert msg_id is None  # the watchers publish with the event's id
        ack = await super().publish(event, subject=subject)
        self.acks.append((event, ack))
        return ack

    async def publish_many(
        self, events: Iterable[Event], *, max_in_flight: int = 256
    ) -> list[Published]:
        sent = list(events)
        acks = await super().publish_many(sent, max_in_flight=max_in_flight)
        self.acks += zip(sent, acks, strict=True)
        return acks


@contextlib.asynccontextmanager
async def replica_bus(bus: Bus) -> AsyncIterator[AckedBus]:
    """A connection of its own to `bus`'s server, as a watcher process has."""
    async with AckedBus.connect(bus.options) as own:
        assert isinstance(own, AckedBus)
        yield own


@contextlib.asynccontextmanager
async def together(*runs: Coroutine[Any, Any, None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """The replicas' `run()`s as tasks, cancelled on exit (what stopped one early is raised)."""
    tasks = [asyncio.create_task(run) for run in runs]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(
    check: Callable[[], bool], what: str, tasks: Iterable[asyncio.Task[None]] = ()
) -> None:
    """Poll `check` until it holds; fail if it does not within WAIT or a replica stopped."""
    try:
        async with asyncio.timeout(WAIT):
            while not check():
                for task in tasks:
                    if task.done():
                        task.result()  # raises what stopped it
                        pytest.fail(f"a replica stopped before {what}")
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not {what} within {WAIT}s")


def keys_of(replica: AckedBus, key: Key) -> set[Hashable]:
    """What one replica published, by `key`."""
    return {key(event) for event, _ in replica.acks}


def assert_one_copy_each(replicas: Sequence[AckedBus], stored: Sequence[Event], key: Key) -> int:
    """Each thing a replica published (`key`: the tick or transition an event stands for) is
    stored once, and the server stored it for one replica and acked every other copy as a
    duplicate. Returns how many things both replicas published."""
    counts = Counter(key(event) for event in stored)
    assert not {k: n for k, n in counts.items() if n > 1}, "stored more than once"
    published = set().union(*(keys_of(r, key) for r in replicas))
    assert set(counts) == published
    new = Counter(key(event) for r in replicas for event, ack in r.acks if not ack.duplicate)
    assert new == Counter(published), "the server stored a copy from each replica, or none"
    return len(set.intersection(*(keys_of(r, key) for r in replicas)))


def event_id(event: Event) -> str:
    return event.id


async def test_two_metric_watchers_store_each_query_tick_once(bus: Bus, tmp_path: Path) -> None:
    stored = await AxonStore(bus).submit(load_axon_text(axon_text("scrape")))
    plan = plan_axon(stored, None)
    assert plan is not None
    watches = len(plan.watches)
    with model_server(tmp_path) as server:
        await deploy_record(bus, server.url)
        await feedback(server.url, 0.5)  # a known value is published every tick
        async with replica_bus(bus) as one, replica_bus(bus) as two:
            watchers = [MetricsWatcher(one, refresh=0.2), MetricsWatcher(two, refresh=0.2)]
            async with together(*(w.run() for w in watchers)) as tasks:
                await until(
                    lambda: all(w.stats.ticks > TICKS for w in watchers),
                    f"{TICKS + 1} ticks of each replica",
                    tasks,
                )
            metric = subjects.events_filter(plan.name, "metric")
            items = [item async for item in bus.replay(filter_subject=metric)]
            # An event's id is its (query, tick): the same query and tick, the same id.
            both = assert_one_copy_each([one, two], [i.event for i in items], event_id)
    assert both >= watches, "the replicas published no (query, tick) in common"
    for item in items:
        data = MetricData.model_validate(item.event.data)
        assert data.sensor is not None
        assert data.trigger is not None
        where = (data.namespace, data.axon, data.sensor, data.trigger, data.name)
        tick = int(item.event.id.rsplit(".", 1)[1])
        assert item.event.id == metric_event_id(where, tick)
        assert data.value == pytest.approx(0.5)
    for watcher, own in zip(watchers, (one, two), strict=True):
        assert watcher.stats.published == len(own.acks)
        assert watcher.stats.failures == 0


CALENDAR_AXON = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: ticking}
spec:
  tasks:
    - {name: T, container: {image: busybox}}
  sensors:
    - name: often
      concurrency: Allow
      triggers: [{name: tick, type: Calendar, interval: 500ms}]
      tasks: [{resourceExecutor: {task: T}}]
"""


def scheduled(event: Event) -> datetime:
    return CalendarData.model_validate(event.data).scheduled_time


async def test_two_calendar_watchers_store_each_tick_once_and_fire_once(bus: Bus) -> None:
    await AxonStore(bus).submit(load_axon_text(CALENDAR_AXON, "axon.yaml"))
    async with replica_bus(bus) as one, replica_bus(bus) as two, running(bus, replica="engine"):
        watchers = [CalendarWatcher(b, calendar_provider(AxonStore(b))) for b in (one, two)]
        async with together(*(w.run() for w in watchers)) as tasks:
            # The KV mark lets a replica skip the ticks the other published already; replicas
            # that read the mark at the same time both publish the tick, which must dedupe.
            await until(
                lambda: (
                    len(keys_of(one, scheduled) | keys_of(two, scheduled)) > TICKS
                    and bool(keys_of(one, scheduled) & keys_of(two, scheduled))
                ),
                f"{TICKS + 1} ticks, one of them published by both replicas",
                tasks,
            )
        calendar = subjects.events_filter("ticking", "calendar")
        items = [item async for item in bus.replay(filter_subject=calendar)]
        assert assert_one_copy_each([one, two], [i.event for i in items], scheduled) >= 1
        await caught_up(bus)
        actions = [
            as_action(event)
            for _, event in await stored_actions(bus)
            if event.data.get("axon") == "ticking"
        ]
    for item in items:
        tick = scheduled(item.event)
        assert item.event.id == tick_event_id("default", "ticking", "often", "tick", tick)
    assert all(w.published > 0 for w in watchers)
    # The engine saw one firing per tick: one action request each, for the tick's event.
    assert len(actions) == len({scheduled(item.event) for item in items})
    runs = Counter(a.sensor_run_id for a in actions)
    assert runs == Counter(engine.sensor_run_id(item.event.id, "often") for item in items)
    assert {(a.sensor, a.step, a.task) for a in actions} == {("often", 0, "T")}


LIFECYCLE_AXON = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: clustered}
spec:
  tasks:
    - {name: Prep, container: {image: busybox}}
  sensors:
    - name: start
      triggers: [{name: manual, type: Rest}]
      tasks: [{resourceExecutor: {task: Prep}}]
"""


def published_by_each(replicas: Iterable[AckedBus], count: int) -> bool:
    return all(len(r.acks) >= count for r in replicas)


def transition(event: Event) -> tuple[str, str]:
    data = LifecycleData.model_validate(event.data)
    return data.run_id, data.phase


async def test_two_cluster_watchers_store_each_transition_once(bus: Bus, env: Env) -> None:
    axon = load_axon_text(LIFECYCLE_AXON, "axon.yaml")
    task = axon.spec.task("Prep")
    assert task is not None
    request = ActionRequest(
        axon="clustered",
        sensor="start",
        sensor_run_id="sr-1",
        step=0,
        kind="resourceExecutor",
        task="Prep",
    )
    job: Any = k8s.task_job(  # a plain body: the client sends dicts as they are
        axon, task, k8s.Run(request, "run-1"), "busybox", settings=settings_for(env), owner=None
    )
    name = job["metadata"]["name"]
    second_api = client.ApiClient(env.api.configuration)  # a replica has its own client
    async with replica_bus(bus) as one, replica_bus(bus) as two:
        reporters = [ClusterReporter(one), ClusterReporter(two)]
        watchers = [
            LifecycleWatcher(api, reporter, namespace="default", retry_delay=0.05)
            for api, reporter in zip((env.api, second_api), reporters, strict=True)
        ]
        try:
            async with watchers[0], watchers[1]:
                # Both watch (Jobs and Deployments) before the Job exists, so each replica sees
                # every transition itself, before the other's write-back says it was reported;
                # with no task-run record in KV, neither reporter skips one: both publish all.
                await until(lambda: all(w.connects >= 2 for w in watchers), "both watching")
                await asyncio.to_thread(
                    env.batch.create_namespaced_job, "default", job, _preload_content=False
                )
                for count, status in enumerate((None, RUNNING, COMPLETE), start=1):
                    if status is not None:
                        await set_job_status(env, name, status)
                    await until(
                        functools.partial(published_by_each, (one, two), count),
                        f"both replicas published {count} transitions",
                    )
        finally:
            await asyncio.to_thread(second_api.close)
        lifecycle = subjects.events_filter("clustered", "lifecycle")
        items = [item async for item in bus.replay(filter_subject=lifecycle)]
    assert assert_one_copy_each([one, two], [i.event for i in items], transition) == 3
    assert [transition(i.event) for i in items] == [
        ("run-1", "Pending"),
        ("run-1", "Running"),
        ("run-1", "Succeeded"),
    ]
    assert all(i.event.id == run_event_id(*transition(i.event)) for i in items)
    assert [(r.published, r.skipped) for r in reporters] == [(3, 0), (3, 0)]
