"""Calendar schedule math: due ticks, DST edges, restart catch-up, the cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.watchers.calendar import (
    Schedule,
    ScheduleError,
    due_ticks,
    local_to_instant,
    next_tick,
    tick_event_id,
)


def utc(year: int, month: int, day: int, hour: int = 0, *hms: int) -> datetime:
    """A UTC datetime; `hms` are the optional minute and second."""
    minute, second = (*hms, 0, 0)[:2]
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# Europe/Paris 2026: clocks go forward at 01:00 UTC on 29 March (02:00 CET -> 03:00 CEST)
# and back at 01:00 UTC on 25 October (03:00 CEST -> 02:00 CET).
CASES = [
    pytest.param(
        "0 3 * * *",
        "UTC",
        utc(2026, 1, 1, 3),
        utc(2026, 1, 3, 3),
        [utc(2026, 1, 2, 3), utc(2026, 1, 3, 3)],
        id="daily-utc-bounds-open-closed",
    ),
    pytest.param(
        "0 3 * * *",
        "UTC",
        utc(2026, 1, 1, 3),
        utc(2026, 1, 2, 2, 59),
        [],
        id="nothing-due-yet",
    ),
    pytest.param(
        "0 9 * * *",
        "America/New_York",
        utc(2026, 1, 1),
        utc(2026, 1, 2, 23),
        [utc(2026, 1, 1, 14), utc(2026, 1, 2, 14)],
        id="local-time-zone",
    ),
    pytest.param(
        "30 2 * * *",
        "Europe/Paris",
        utc(2026, 3, 28),
        utc(2026, 3, 31),
        [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
        id="spring-forward-missing-time-fires-at-the-jump",
    ),
    pytest.param(
        "*/30 * * * *",
        "Europe/Paris",
        utc(2026, 3, 28, 23, 45),
        utc(2026, 3, 29, 1, 45),
        [
            utc(2026, 3, 29, 0),
            utc(2026, 3, 29, 0, 30),
            utc(2026, 3, 29, 1),
            utc(2026, 3, 29, 1, 30),
        ],
        id="spring-forward-skipped-times-collapse-into-one",
    ),
    pytest.param(
        "30 2 * * *",
        "Europe/Paris",
        utc(2026, 10, 24, 12),
        utc(2026, 10, 25, 12),
        [utc(2026, 10, 25, 0, 30)],
        id="fall-back-repeated-time-fires-once",
    ),
    pytest.param(
        "0 * * * *",
        "Europe/Paris",
        utc(2026, 10, 24, 22, 30),
        utc(2026, 10, 25, 2, 30),
        [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 2)],
        id="fall-back-hourly-skips-the-repeat",
    ),
    pytest.param(
        "*/15 * * * *",
        "Europe/Paris",
        utc(2026, 10, 25, 0, 35),
        utc(2026, 10, 25, 1, 40),
        [utc(2026, 10, 25, 0, 45)],
        id="now-inside-the-repeated-hour",
    ),
]


@pytest.mark.parametrize(("cron", "tz", "last", "now", "expected"), CASES)
def test_cron_due_ticks(
    cron: str, tz: str, last: datetime, now: datetime, expected: list[datetime]
) -> None:
    assert due_ticks(last, now, schedule=cron, timezone=tz) == expected


@pytest.mark.parametrize(
    ("interval", "last", "now", "expected"),
    [
        pytest.param(
            60.0,
            utc(2026, 1, 1, 10, 0, 30),
            utc(2026, 1, 1, 10, 3),
            [utc(2026, 1, 1, 10, 1), utc(2026, 1, 1, 10, 2), utc(2026, 1, 1, 10, 3)],
            id="aligned-to-the-epoch",
        ),
        pytest.param(
            1.5,
            utc(2026, 1, 1, 0, 0, 0),
            utc(2026, 1, 1, 0, 0, 4),
            [utc(2026, 1, 1, 0, 0, 1) + timedelta(milliseconds=500), utc(2026, 1, 1, 0, 0, 3)],
            id="fractional-seconds",
        ),
        pytest.param(3600.0, utc(2026, 1, 1, 10), utc(2026, 1, 1, 10, 59), [], id="none-due"),
    ],
)
def test_interval_due_ticks(
    interval: float, last: datetime, now: datetime, expected: list[datetime]
) -> None:
    assert due_ticks(last, now, interval=interval) == expected


def test_interval_ignores_wall_clock_changes() -> None:
    ticks = due_ticks(
        utc(2026, 3, 29, 0), utc(2026, 3, 29, 3), interval=3600, timezone="Europe/Paris"
    )
    assert ticks == [utc(2026, 3, 29, 1), utc(2026, 3, 29, 2), utc(2026, 3, 29, 3)]


def test_interval_anchor() -> None:
    anchor = utc(2026, 1, 1, 0, 0, 7)
    ticks = due_ticks(utc(2026, 1, 1, 0, 1), utc(2026, 1, 1, 0, 3), interval=60, anchor=anchor)
    assert ticks == [utc(2026, 1, 1, 0, 1, 7), utc(2026, 1, 1, 0, 2, 7)]


def test_unarmed_trigger_has_nothing_due() -> None:
    assert due_ticks(None, utc(2026, 1, 1), schedule="* * * * *") == []
    assert due_ticks(None, utc(2026, 1, 1), interval=1) == []


def test_last_tick_after_now_has_nothing_due() -> None:
    assert due_ticks(utc(2026, 1, 2), utc(2026, 1, 1), schedule="* * * * *") == []


@pytest.mark.parametrize(
    "spec", [Schedule(cron="* * * * *"), Schedule(interval=60.0)], ids=["cron", "interval"]
)
def test_catch_up_is_capped_to_the_newest_ticks(spec: Schedule) -> None:
    now = utc(2026, 1, 2, 12)
    result = spec.catch_up(now - timedelta(days=1), now, max_ticks=5)
    assert result.truncated
    assert result.ticks == [now - timedelta(minutes=m) for m in (4, 3, 2, 1, 0)]
    exact = spec.catch_up(now - timedelta(minutes=5), now, max_ticks=5)
    assert not exact.truncated
    assert exact.ticks == result.ticks


def test_next_tick_agrees_with_due_ticks() -> None:
    after = utc(2026, 3, 29, 0, 10)
    nxt = next_tick(after, schedule="*/30 * * * *", timezone="Europe/Paris")
    assert nxt == utc(2026, 3, 29, 0, 30)
    assert next_tick(nxt, schedule="*/30 * * * *", timezone="Europe/Paris") == utc(2026, 3, 29, 1)
    assert next_tick(utc(2026, 1, 1, 0, 0, 30), interval=60) == utc(2026, 1, 1, 0, 1)


def test_local_to_instant_in_a_gap_is_the_jump() -> None:
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    assert local_to_instant(datetime(2026, 3, 29, 2, 59), paris) == utc(2026, 3, 29, 1)
    assert local_to_instant(datetime(2026, 10, 25, 2, 30), paris) == utc(2026, 10, 25, 0, 30)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "exactly one"),
        ({"cron": "* * * * *", "interval": 5.0}, "exactly one"),
        ({"cron": "61 * * * *"}, "invalid cron"),
        ({"interval": 0.0}, "invalid interval"),
        ({"interval": float("nan")}, "invalid interval"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
    ],
)
def test_bad_schedules_are_user_errors(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        Schedule(**kwargs)  # type: ignore[arg-type]  # deliberately loose for the table


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        due_ticks(utc(2026, 1, 1), datetime(2026, 1, 2), interval=60)  # naive on purpose


SCHEDULES = [
    Schedule(cron="*/20 * * * *", timezone="Europe/Paris"),
    Schedule(cron="30 1,2,3 * * *", timezone="Europe/Paris"),
    Schedule(cron="0 * * * *", timezone="America/New_York"),
    Schedule(cron="*/7 2 * * *", timezone="Australia/Lord_Howe"),
    Schedule(interval=1234.5),
]


@settings(max_examples=60, deadline=None)
@given(
    spec=st.sampled_from(SCHEDULES),
    start=st.datetimes(
        min_value=datetime(2026, 3, 27),  # hypothesis bounds are naive
        max_value=datetime(2026, 11, 2),  # hypothesis bounds are naive
        timezones=st.just(UTC),
    ),
    wakeups=st.lists(st.integers(min_value=0, max_value=4 * 3600), min_size=1, max_size=12),
)
def test_restarts_neither_miss_nor_double_ticks(
    spec: Schedule, start: datetime, wakeups: list[int]
) -> None:
    """A watcher that wakes (or restarts) at arbitrary times publishes exactly every tick."""
    end = start + timedelta(seconds=sum(wakeups))
    expected = spec.catch_up(start, end, max_ticks=10_000).ticks
    published: list[datetime] = []
    last, now = start, start
    for gap in wakeups:
        now += timedelta(seconds=gap)
        ticks = spec.catch_up(last, now, max_ticks=10_000).ticks
        published += ticks
        last = ticks[-1] if ticks else last  # the caller persists the last published tick
    published += spec.catch_up(last, end, max_ticks=10_000).ticks
    assert published == expected
    assert published == sorted(set(published))
    for tick in published:
        assert start < tick <= end
        assert spec.next_after(tick - timedelta(microseconds=1)) == tick


def test_tick_event_ids_are_deterministic_per_tick() -> None:
    tick = utc(2026, 1, 1, 3)
    same = tick_event_id("default", "ax", "nightly", "cron", tick)
    assert same == tick_event_id("default", "ax", "nightly", "cron", tick.astimezone())
    others = {
        tick_event_id("default", "ax", "nightly", "cron", tick + timedelta(microseconds=1)),
        tick_event_id("default", "ax", "nightly", "other", tick),
        tick_event_id("default", "ax", "weekly", "cron", tick),
        tick_event_id("default", "bx", "nightly", "cron", tick),
        tick_event_id("prod", "ax", "nightly", "cron", tick),
    }
    assert same not in others
    assert len(others) == 5
