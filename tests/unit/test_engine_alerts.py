"""Alert triggers: inactive -> pending -> firing -> resolved, with for, resolve, keepFiringFor,
cooldown, and unknown values that never count as false.

Each case is a trigger and a timeline of inputs: `(t, value)` is a metric event at t seconds
(None: a null value), `(t, "stale")` a stale sample, `(t, "tick")` the passing of time. The
expected output is the times at which the sensor fired.
"""

from __future__ import annotations

import pytest

from sensors import engine
from tests.unit.engine_kit import Rig, at, fired, make_axon, only

Input = tuple[float, float | str | None]


def _rig(options: str) -> Rig:
    return Rig(
        make_axon(f"""
        - name: Watch
          triggers:
            - {{name: low, type: Alert, condition: "{{{{acc}}}} < 0.9"{options}}}
          concurrency: Allow
          tasks:
            - trainer: {{task: Train}}
        """)
    )


def _run(rig: Rig, timeline: list[Input]) -> list[float]:
    times = []
    for t, value in timeline:
        if value == "tick":
            result = rig.tick(t)
        elif value == "stale":
            result = rig.metric("acc", 0.1, t, stale=True)
        else:
            assert not isinstance(value, str)
            result = rig.metric("acc", value, t)
        if fired(result):
            times.append(t)
    return times


CASES: list[tuple[str, str, list[Input], list[float]]] = [
    ("no-for-fires-at-once", "", [(0, 0.95), (1, 0.8), (2, 0.7)], [1]),
    ("edge-only-while-firing", "", [(0, 0.8), (1, 0.8), (2, 0.8)], [0]),
    ("refires-after-resolution", "", [(0, 0.8), (1, 0.95), (2, 0.8)], [0, 2]),
    ("for-needs-duration", ", for: 10s", [(0, 0.8), (5, 0.8), (10, 0.8)], [10]),
    ("for-resets-when-false", ", for: 10s", [(0, 0.8), (5, 0.95), (10, 0.8), (15, 0.8)], []),
    ("for-elapses-on-tick", ", for: 10s", [(0, 0.8), (9, "tick"), (10, "tick")], [10]),
    ("null-is-unknown-not-false", ", for: 10s", [(0, 0.8), (5, None), (12, 0.8)], [12]),
    ("stale-is-unknown-not-false", ", for: 10s", [(0, 0.8), (5, "stale"), (12, 0.8)], [12]),
    ("unknown-blocks-tick", ", for: 10s", [(0, 0.8), (5, None), (10, "tick")], []),
    ("unknown-never-fires", "", [(0, None), (1, "stale"), (2, "tick")], []),
    (
        "unknown-keeps-firing",
        "",
        [(0, 0.8), (1, None), (2, 0.8)],
        [0],
    ),
    (
        "resolve-hysteresis",
        ', resolve: "{{acc}} > 0.95"',
        [(0, 0.8), (1, 0.93), (2, 0.8), (3, 0.96), (4, 0.8)],
        [0, 4],
    ),
    (
        "keep-firing-for",
        ", keepFiringFor: 30s",
        [(0, 0.8), (10, 0.95), (20, 0.8), (30, 0.95), (59, "tick"), (61, 0.8)],
        [0],
    ),
    (
        "keep-firing-for-expires-on-tick",
        ", keepFiringFor: 30s",
        [(0, 0.8), (10, 0.95), (40, "tick"), (41, 0.8)],
        [0, 41],
    ),
    (
        "cooldown-blocks-then-fires-on-tick",
        ", cooldown: 1m",
        [(0, 0.8), (10, 0.95), (20, 0.8), (59, "tick"), (60, "tick")],
        [0, 60],
    ),
    (
        "cooldown-blocked-then-false",
        ", cooldown: 1m",
        [(0, 0.8), (10, 0.95), (20, 0.8), (30, 0.95), (60, "tick"), (70, 0.8)],
        [0, 70],
    ),
    (
        "cooldown-over-fires-on-event",
        ", cooldown: 1m",
        [(0, 0.8), (10, 0.95), (20, 0.8), (61, 0.8)],
        [0, 61],
    ),
]


@pytest.mark.parametrize(
    ("options", "timeline", "expected"),
    [pytest.param(o, tl, e, id=name) for name, o, tl, e in CASES],
)
def test_alert_state_machine(options: str, timeline: list[Input], expected: list[float]) -> None:
    assert _run(_rig(options), timeline) == expected


@pytest.mark.parametrize(
    ("options", "timeline", "reason"),
    [
        ("", [(0, None)], "is unknown (no value for acc); no transition"),
        ("", [(0, 0.95)], "is false; inactive"),
        (", for: 10s", [(0, 0.8)], "inactive -> pending; fires at 2026-03-01T12:00:10.000000Z"),
        (", for: 10s", [(0, 0.8), (3, 0.95)], "pending -> inactive"),
        ("", [(0, 0.8)], "inactive -> firing; fired: run started"),
        (", for: 5s", [(0, 0.8), (6, 0.8)], "pending -> firing (held for 6s); fired"),
        ("", [(0, 0.8), (1, 0.8)], "firing; the alert still holds"),
        ("", [(0, 0.8), (1, 0.95)], "no longer holds: firing -> resolved -> inactive"),
        (", keepFiringFor: 30s", [(0, 0.8), (1, 0.95)], "resolves at 2026-03-01T12:00:31"),
        (
            ", cooldown: 1m",
            [(0, 0.8), (1, 0.95), (2, 0.8)],
            "holds, but not fired: cooldown 1m after the firing at 2026-03-01T12:00:00",
        ),
    ],
)
def test_alert_decisions_say_why(options: str, timeline: list[Input], reason: str) -> None:
    rig = _rig(options)
    *before, (t, value) = timeline
    _run(rig, before)
    assert not isinstance(value, str)
    decision = only(rig.metric("acc", value, t), "Watch")
    assert (decision.matched, decision.trigger) == (True, "low")
    assert reason in decision.reason


def test_ticks_record_only_transitions() -> None:
    rig = _rig(", for: 10s, cooldown: 1h")
    assert rig.tick(100).decisions == ()  # nothing armed
    rig.metric("acc", 0.8, 0)
    assert rig.tick(5).decisions == ()  # not due yet
    firing = rig.tick(10)
    assert fired(firing) == [("Watch", "low")]
    assert "tick at 2026-03-01T12:00:10" in firing.decisions[0].reason
    assert rig.tick(20).decisions == ()


def test_a_firing_caused_by_time_has_a_run_id_from_the_pending_event() -> None:
    rig = _rig(", for: 10s")
    rig.metric("acc", 0.8, 0)  # event m-0001 starts the pending episode
    result = rig.tick(10)
    decision = only(result, "Watch")
    assert decision.event_id == "m-0001"
    assert decision.sensor_run_id == engine.sensor_run_id("m-0001", "Watch", "low")
    assert result.actions[0].sensor_run_id == decision.sensor_run_id


def test_next_deadline_says_when_a_tick_matters() -> None:
    rig = _rig(", for: 10s, keepFiringFor: 30s")
    assert engine.next_deadline(rig.state) is None
    rig.metric("acc", 0.8, 0)
    assert engine.next_deadline(rig.state) == at(10)
    rig.tick(10)
    assert engine.next_deadline(rig.state) is None  # firing, condition still holds
    rig.metric("acc", 0.95, 15)
    assert engine.next_deadline(rig.state) == at(45)


def test_a_query_value_addressed_to_the_trigger_feeds_the_alert() -> None:
    rig = Rig(
        make_axon("""
        - name: Watch
          triggers:
            - name: low
              type: Alert
              condition: "avg_over_time({{acc}}[5m]) < 0.9"
          tasks:
            - trainer: {task: Train}
        """)
    )
    assert rig.metric("acc", 0.1).decisions == ()  # a raw sample is not the query's value
    key = "avg_over_time(acc[5m])"
    assert fired(rig.metric(key, 0.5, sensor="Watch", trigger="low")) == [("Watch", "low")]


def test_several_sensors_reading_one_metric_each_decide() -> None:
    rig = Rig(
        make_axon("""
        - name: A
          triggers:
            - {name: low, type: Alert, condition: "{{acc}} < 0.9"}
          tasks:
            - trainer: {task: Train}
        - name: B
          triggers:
            - {name: lower, type: Alert, condition: "{{acc}} < 0.5"}
          tasks:
            - trainer: {task: Train}
        """)
    )
    result = rig.metric("acc", 0.7)
    assert [(d.sensor, d.fired) for d in result.decisions] == [("A", True), ("B", False)]
