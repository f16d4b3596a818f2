"""Schedule math for Calendar triggers: which ticks are due, with no tick missed or doubled.

The calendar watcher persists the last tick it published and, on every wake-up (and after a
restart), asks `due_ticks(last_tick, now)` for every scheduled time in `(last_tick, now]`.
Because the answer depends only on those two instants and the schedule, a restart neither
repeats a tick (it is <= last_tick) nor loses one (it is > last_tick and <= now), and two
watcher replicas compute the same `scheduled_time`s, so their events deduplicate.

Cron schedules are wall-clock times in the trigger's IANA time zone (croniter walks the naive
local times, zoneinfo turns them into instants). Daylight-saving rules, chosen to be the same
as cron's and to keep the local-time -> instant mapping monotonic:

- a local time that occurs twice (clocks go back) fires once, at its first occurrence;
- a local time that does not exist (clocks go forward) fires once, at the instant the clocks
  jump (several skipped times collapse into that one tick).

`interval` schedules are elapsed time (the time zone does not matter): ticks are
`anchor + k * interval`, anchored at the Unix epoch unless told otherwise, so they do not drift
and do not depend on when the watcher started. Use a cron `schedule` for wall-clock times.

After a long outage, catching up every missed tick could start thousands of runs, so catch-up is
capped (`DEFAULT_MAX_CATCH_UP`, the newest ticks are kept) and the result says when it dropped
older ones, so the watcher can log it. This module imports nothing of ours (events is the bottom
layer), so it takes plain values rather than the spec's `CalendarTrigger`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from events.errors import RanvierError

DEFAULT_MAX_CATCH_UP: Final = 100
"""At most this many ticks are returned for one catch-up; older due ticks are dropped."""

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


class ScheduleError(RanvierError, ValueError):
    """A Calendar schedule that cannot be computed (bad cron, interval or time zone)."""


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(
            f"{what} must be timezone-aware, got {value.isoformat()}",
            hint="pass datetime.now(UTC) or attach a zoneinfo time zone",
        )
    return value.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown timezone {name!r}", hint="use an IANA name like 'Europe/Paris'"
        ) from None


def _transition_after(tz: tzinfo, lo: datetime, hi: datetime) -> datetime:
    """The first instant in (lo, hi] whose UTC offset differs from lo's (binary search)."""
    before = lo.astimezone(tz).utcoffset()
    lo_s, hi_s = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(tz).utcoffset() == before:
            lo_s = mid
        else:
            hi_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def local_to_instant(naive: datetime, tz: tzinfo) -> datetime:
    """The UTC instant a scheduled local wall time fires at, under the DST rules above."""
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first  # exists (if it occurs twice, fold=0 is its first occurrence)
    # In a gap: fold=1 reads it with the offset after the jump (an instant before the jump),
    # fold=0 with the offset before it (an instant after the jump); the jump lies in between.
    early = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return _transition_after(tz, min(early, first), max(early, first))


@dataclass(frozen=True)
class CatchUp:
    """The ticks due in (last_tick, now], and whether older due ticks were dropped by the cap."""

    ticks: list[datetime] = field(default_factory=list)
    truncated: bool = False


@dataclass(frozen=True)
class Schedule:
    """A Calendar trigger's timing: exactly one of a cron `schedule` or an `interval`."""

    cron: str | None = None
    interval: float | None = None
    timezone: str = "UTC"
    anchor: datetime = EPOCH

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval is None):
            raise ScheduleError(
                "a Calendar schedule needs exactly one of a cron schedule and an interval"
            )
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ScheduleError(
                f"invalid cron schedule {self.cron!r}", hint="use five fields like '0 3 * * *'"
            )
        if self.interval is not None and not (
            math.isfinite(self.interval) and self.interval >= 1e-6
        ):
            raise ScheduleError(
                f"invalid interval {self.interval!r}", hint="use a positive number of seconds"
            )
        _zone(self.timezone)
        _aware(self.anchor, "anchor")

    @property
    def _tz(self) -> ZoneInfo:
        return _zone(self.timezone)

    @property
    def _step(self) -> timedelta:
        assert self.interval is not None  # only called for interval schedules
        return timedelta(microseconds=max(1, round(self.interval * 1_000_000)))

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after `after` (for the watcher to sleep until)."""
        after = _aware(after, "after")
        if self.interval is not None:
            step, anchor = self._step, self.anchor.astimezone(UTC)
            return anchor + step * ((after - anchor) // step + 1)
        return next(t for t in self._forward(after) if t > after)

    def catch_up(
        self,
        last_tick: datetime | None,
        now: datetime,
        *,
        max_ticks: int = DEFAULT_MAX_CATCH_UP,
    ) -> CatchUp:
        """Every tick in (last_tick, now], oldest first, at most the newest `max_ticks`.

        `last_tick` is the last tick the caller published; None means the trigger was just
        armed, so nothing is due yet (arm it with the Axon's submit time to catch up from then).
        """
        if max_ticks < 1:
            raise ScheduleError(f"max_ticks must be at least 1, got {max_ticks}")
        now = _aware(now, "now")
        if last_tick is None:
            return CatchUp()
        last = _aware(last_tick, "last_tick")
        if last >= now:
            return CatchUp()
        if self.interval is not None:
            step, anchor = self._step, self.anchor.astimezone(UTC)
            first_k = (last - anchor) // step + 1
            last_k = (now - anchor) // step
            start_k = max(first_k, last_k - max_ticks + 1)
            ticks = [anchor + step * k for k in range(start_k, last_k + 1)]
            return CatchUp(ticks=ticks, truncated=start_k > first_k)
        newest_first: list[datetime] = []
        for tick in self._backward(now):
            if tick <= last:
                return CatchUp(ticks=newest_first[::-1])
            if len(newest_first) == max_ticks:
                return CatchUp(ticks=newest_first[::-1], truncated=True)
            newest_first.append(tick)
        return CatchUp(ticks=newest_first[::-1])  # pragma: no cover  # cron never ends

    def _forward(self, after: datetime) -> Iterator[datetime]:
        """Distinct tick instants, ascending, from about `after` on (may start <= after)."""
        assert self.cron is not None
        tz = self._tz
        # The local wall time of `after` maps to an instant <= after (monotonic mapping).
        it = croniter(self.cron, after.astimezone(tz).replace(tzinfo=None, fold=0))
        previous: datetime | None = None
        while True:
            tick = local_to_instant(it.get_next(datetime), tz)
            if tick != previous:
                yield tick
                previous = tick

    def _backward(self, now: datetime) -> Iterator[datetime]:
        """Distinct tick instants <= now, descending."""
        assert self.cron is not None
        tz = self._tz
        local = now.astimezone(tz)
        start = local.replace(tzinfo=None, fold=0) + _US
        if local.fold == 1:
            # In the second pass of a repeated hour, later wall times of the first pass are
            # still in the past: start from the end of the repeat (it is under three hours).
            start += timedelta(hours=3)
        it = croniter(self.cron, start)
        previous: datetime | None = None
        while True:
            tick = local_to_instant(it.get_prev(datetime), tz)
            if tick <= now and tick != previous:
                yield tick
                previous = tick


_TICK_NAMESPACE: Final = uuid.UUID("6f1c1b8e-2f5d-5a55-9a43-2b0f4c1e7a11")


def tick_event_id(namespace: str, axon: str, sensor: str, trigger: str, tick: datetime) -> str:
    """A deterministic event id for one tick of one trigger (uuid5).

    Published as the `Nats-Msg-Id`, it makes a tick published twice (a restart between publish
    and persisting the last tick, or two watcher replicas) a duplicate the stream drops.
    """
    when = _aware(tick, "tick").strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(uuid.uuid5(_TICK_NAMESPACE, f"{namespace}/{axon}/{sensor}/{trigger}/{when}"))


def due_ticks(
    last_tick: datetime | None,
    now: datetime,
    *,
    schedule: str | None = None,
    interval: float | None = None,
    timezone: str = "UTC",
    anchor: datetime = EPOCH,
    max_ticks: int = DEFAULT_MAX_CATCH_UP,
) -> list[datetime]:
    """Every scheduled time in (last_tick, now], oldest first, in UTC (see `Schedule`).

    At most the newest `max_ticks` are returned; use `Schedule.catch_up` to learn whether
    older ones were dropped.
    """
    spec = Schedule(cron=schedule, interval=interval, timezone=timezone, anchor=anchor)
    return spec.catch_up(last_tick, now, max_ticks=max_ticks).ticks


def next_tick(
    after: datetime,
    *,
    schedule: str | None = None,
    interval: float | None = None,
    timezone: str = "UTC",
    anchor: datetime = EPOCH,
) -> datetime:
    """The first scheduled time strictly after `after`, in UTC."""
    spec = Schedule(cron=schedule, interval=interval, timezone=timezone, anchor=anchor)
    return spec.next_after(after)
