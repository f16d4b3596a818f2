"""The Calendar watcher and Rest triggers against a real nats-server.

Time is injected (`now` is an argument), so ticks are exact and nothing waits on the clock:
a restart (a new watcher over the same KV) neither repeats nor loses a tick, and ticks
published again after a lost mark are duplicates the stream drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from events import subjects
from events.bus import OUTAGE_ERRORS, Bus
from events.server import EmbeddedServer
from events.watchers.calendar import Schedule
from events.watchers.calendar_watcher import CalendarWatcher, ScheduledTrigger
from ranvier.app import AppError, calendar_provider, trigger_rest
from sensors.axons import AxonStore
from sensors.loader import load_axon

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def every_second(armed: datetime = T0) -> ScheduledTrigger:
    return ScheduledTrigger("default", "cal", "nightly", "tick", Schedule(interval=1.0), armed)


async def no_triggers() -> list[ScheduledTrigger]:
    return []


async def stored_ticks(bus: Bus) -> list[str]:
    return [
        item.event.data["scheduled_time"]
        async for item in bus.replay(filter_subject=subjects.events_filter("cal", "calendar"))
    ]


async def test_ticks_are_published_once_across_a_restart(bus: Bus) -> None:
    trigger = every_second()
    first = CalendarWatcher(bus, no_triggers)
    ticks = await first.publish_due(trigger, T0 + timedelta(seconds=10.5))
    assert ticks == [T0 + timedelta(seconds=s) for s in range(1, 11)]
    assert await first.publish_due(trigger, T0 + timedelta(seconds=10.9)) == []

    restarted = CalendarWatcher(bus, no_triggers)  # a new process: only KV carries over
    later = await restarted.publish_due(trigger, T0 + timedelta(seconds=12.2))
    assert later == [T0 + timedelta(seconds=11), T0 + timedelta(seconds=12)]
    times = await stored_ticks(bus)
    assert len(times) == len(set(times)) == 12


async def test_ticks_published_again_after_a_lost_mark_are_dropped(bus: Bus) -> None:
    trigger = every_second()
    await CalendarWatcher(bus, no_triggers).publish_due(trigger, T0 + timedelta(seconds=3.5))
    await bus.kv_delete(subjects.RUNS_BUCKET, trigger.key)  # as if the mark was never written
    again = await CalendarWatcher(bus, no_triggers).publish_due(
        trigger, T0 + timedelta(seconds=3.5)
    )
    assert len(again) == 3
    assert len(await stored_ticks(bus)) == 3


async def test_a_new_trigger_is_armed_without_publishing(bus: Bus) -> None:
    trigger = every_second(armed=T0 + timedelta(seconds=5))
    watcher = CalendarWatcher(bus, no_triggers)
    assert await watcher.publish_due(trigger, T0 + timedelta(seconds=5.5)) == []
    stored = await bus.kv_get(subjects.RUNS_BUCKET, trigger.key)
    assert stored is not None
    assert datetime.fromisoformat(json.loads(stored[0])["last"]) == trigger.armed


async def test_the_watcher_rides_out_a_server_restart(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    trigger = every_second()
    now = [T0 + timedelta(seconds=1.5)]

    async def provide() -> list[ScheduledTrigger]:
        return [trigger]

    watcher = CalendarWatcher(bus, provide, refresh=0.1, clock=lambda: now[0])
    running = asyncio.create_task(watcher.run())
    try:
        await _until_ticks(bus, 1)
        nats_server.requested_port = nats_server.port or 0
        nats_server.kill()  # its KV reads and publishes fail while the server is away
        now[0] = T0 + timedelta(seconds=3.5)
        await asyncio.sleep(3.0)
        assert not running.done()
        nats_server.start()  # same port and store: the bus reconnects
        await _until_ticks(bus, 3)
        assert not running.done()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _until_ticks(bus: Bus, count: int) -> None:
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(*OUTAGE_ERRORS):
                if len(await stored_ticks(bus)) >= count:
                    return
            await asyncio.sleep(0.1)


AXON = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: cal}
spec:
  tasks:
    - name: T
      container: {command: [%s, -c, "pass"]}
  sensors:
    - name: nightly
      triggers: [{name: tick, type: Calendar, schedule: "0 3 * * *", timezone: Europe/Paris}]
      tasks: [{resourceExecutor: {task: T}}]
    - name: manual
      triggers: [{name: button, type: Rest}]
      tasks: [{resourceExecutor: {task: T}}]
"""


async def submit(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "cal.yaml"
    path.write_text(AXON % json.dumps(sys.executable), encoding="utf-8")
    await AxonStore(bus).submit(load_axon(path), path)


async def test_provider_reads_calendar_triggers_of_submitted_axons(
    bus: Bus, tmp_path: Path
) -> None:
    await submit(bus, tmp_path)
    [found] = await calendar_provider(AxonStore(bus))()
    assert (found.axon, found.sensor, found.trigger) == ("cal", "nightly", "tick")
    assert found.schedule == Schedule(cron="0 3 * * *", timezone="Europe/Paris")
    await AxonStore(bus).delete("default", "cal")
    assert await calendar_provider(AxonStore(bus))() == []


async def test_rest_trigger_checks_the_sensor_then_publishes(bus: Bus, tmp_path: Path) -> None:
    await submit(bus, tmp_path)
    event_id = await trigger_rest(bus, "default", "cal", "manual", {"why": "test"})
    [item] = [i async for i in bus.replay(filter_subject=subjects.events_filter("cal", "rest"))]
    assert item.event.id == event_id
    assert item.event.data["trigger"] == "button"
    assert item.event.data["payload"] == {"why": "test"}
    with pytest.raises(AppError, match="has no Rest trigger"):
        await trigger_rest(bus, "default", "cal", "nightly", {})
    with pytest.raises(AppError, match=r"no sensor 'nope' \(sensors: nightly, manual\)"):
        await trigger_rest(bus, "default", "cal", "nope", {})
    with pytest.raises(AppError, match="no Axon default/ghost is submitted"):
        await trigger_rest(bus, "default", "ghost", "manual", {})
