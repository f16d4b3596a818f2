"""The Calendar watcher role: publish a `ranvier.calendar` event for every due tick, once.

The schedule maths is in `events.watchers.calendar`; this is the loop around it. For each
Calendar trigger it keeps the last tick it published in KV (`ranvier_runs`,
`calendar.<ns>.<axon>.<sensor>.<trigger>`), and on every wake-up publishes the ticks in
(last, now], then moves the mark forward. The order is publish, then persist, and every tick's
event id is deterministic (`tick_event_id`), so a crash between the two re-publishes ticks the
stream drops as duplicates: no tick is doubled, and none is missed because the mark only moves
past ticks that were published. A trigger seen for the first time is armed at the moment its
provider says (the Axon's submit time), so a tick between submit and the watcher's start counts.

The watcher may not import `sensors` (layers), so it takes plain `ScheduledTrigger`s from a
provider callable that the composition root builds from the submitted Axons.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import structlog

from events import subjects
from events.aio import checkpoint
from events.bus import OUTAGE_ERRORS, Bus, RevisionMismatch, kv_key
from events.model import CalendarData, format_time, utcnow
from events.watchers.calendar import DEFAULT_MAX_CATCH_UP, Schedule, tick_event_id

log = structlog.get_logger(__name__)

SOURCE: Final = "ranvier/calendar"
DEFAULT_REFRESH: Final = 5.0
RETRY_DELAY: Final = 1.0


@dataclass(frozen=True)
class ScheduledTrigger:
    """One Calendar trigger of one sensor, with its schedule and when it was armed."""

    namespace: str
    axon: str
    sensor: str
    trigger: str
    schedule: Schedule
    armed: datetime

    @property
    def key(self) -> str:
        """Where its last published tick is kept in `ranvier_runs`."""
        return kv_key("calendar", self.namespace, self.axon, self.sensor, self.trigger)


ScheduleProvider = Callable[[], Awaitable[Sequence[ScheduledTrigger]]]


class CalendarWatcher:
    """Publishes Calendar ticks for the triggers its provider returns; runs until cancelled."""

    def __init__(
        self,
        bus: Bus,
        provider: ScheduleProvider,
        *,
        refresh: float = DEFAULT_REFRESH,
        max_catch_up: int = DEFAULT_MAX_CATCH_UP,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.bus = bus
        self.provider = provider
        self.refresh = refresh
        self.max_catch_up = max_catch_up
        self.clock = clock
        self.published = 0

    async def run(self) -> None:
        """Publish due ticks, sleep until the next one (or `refresh`), repeat."""
        log.info("calendar.started")
        while True:
            checkpoint()
            wake = self.refresh
            try:
                triggers = await self.provider()
                now = self.clock()
                for trigger in triggers:
                    await self.publish_due(trigger, now)
                    until = (trigger.schedule.next_after(now) - now).total_seconds()
                    wake = min(wake, max(until, 0.01))
            except OUTAGE_ERRORS as exc:  # the mark did not move: the next turn publishes them
                log.warning("calendar.turn_failed", error=str(exc) or repr(exc))
                wake = min(wake, RETRY_DELAY)
            await asyncio.sleep(wake)

    async def publish_due(self, trigger: ScheduledTrigger, now: datetime) -> list[datetime]:
        """Publish the ticks of `trigger` in (last published, now]; the ticks published."""
        found = await self.bus.kv_get(subjects.RUNS_BUCKET, trigger.key)
        if found is None:
            last, revision = trigger.armed, None
        else:
            last, revision = datetime.fromisoformat(json.loads(found[0])["last"]), found[1]
        catch = trigger.schedule.catch_up(last, now, max_ticks=self.max_catch_up)
        if catch.truncated:
            log.warning(
                "calendar.catch_up_capped",
                axon=trigger.axon,
                sensor=trigger.sensor,
                trigger=trigger.trigger,
                kept=len(catch.ticks),
            )
        if not catch.ticks:
            if revision is None:  # remember when it was armed, so a restart catches up from it
                await self._mark(trigger, trigger.armed, None)
            return []
        events = [
            CalendarData(
                axon=trigger.axon,
                namespace=trigger.namespace,
                sensor=trigger.sensor,
                trigger=trigger.trigger,
                scheduled_time=tick,
            ).to_event(
                source=SOURCE,
                id=tick_event_id(
                    trigger.namespace, trigger.axon, trigger.sensor, trigger.trigger, tick
                ),
                time=tick,
            )
            for tick in catch.ticks
        ]
        await self.bus.publish_many(events)
        await self._mark(trigger, catch.ticks[-1], revision)
        self.published += len(events)
        log.info(
            "calendar.ticks",
            axon=trigger.axon,
            sensor=trigger.sensor,
            trigger=trigger.trigger,
            count=len(events),
            last=format_time(catch.ticks[-1]),
        )
        return catch.ticks

    async def _mark(self, trigger: ScheduledTrigger, tick: datetime, revision: int | None) -> None:
        """Move the mark to `tick` (CAS: another replica that moved it first wins)."""
        value = json.dumps({"last": tick.isoformat()}).encode("utf-8")
        try:
            if revision is None:
                await self.bus.kv_create(subjects.RUNS_BUCKET, trigger.key, value)
            else:
                await self.bus.kv_update(subjects.RUNS_BUCKET, trigger.key, value, revision)
        except RevisionMismatch:
            log.info("calendar.mark_raced", key=trigger.key)


__all__ = ["CalendarWatcher", "ScheduleProvider", "ScheduledTrigger"]
