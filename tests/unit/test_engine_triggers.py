"""Which events fire which sensors: triggerless, Lifecycle edges, Rest, Calendar, OR, AND.

Each case is plain data: an Axon's sensors as YAML, the events fed, and the firings and reasons
the engine must decide. No server, no clock: times are seconds after T0.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events.model import Event, LifecycleData
from sensors import engine
from tests.unit.engine_kit import (
    AXON,
    Rig,
    at,
    fired,
    keys,
    make_axon,
    only,
    submit_event,
)

TRIGGERLESS = """
- name: OnStart
  tasks:
    - resourceExecutor: {task: Prep}
- name: OnTrain
  triggers:
    - {name: trained, type: Lifecycle, task: Train, condition: Succeeded}
  tasks:
    - resourceExecutor: {task: Deploy}
"""


def test_a_sensor_without_triggers_fires_once_per_submitted_generation() -> None:
    rig = Rig(make_axon(TRIGGERLESS))
    assert fired(rig.submitted) == [("OnStart", None)]
    [action] = rig.submitted.actions
    assert (action.sensor, action.kind, action.task, action.step) == (
        "OnStart",
        "resourceExecutor",
        "Prep",
        0,
    )
    assert action.sensor_run_id == engine.sensor_run_id("submit-1", "OnStart")
    # the same generation again changes nothing
    again = engine.submit(rig.state, rig.axon, 1, submit_event(1, "submit-1b"), at(1))
    assert again.ignored is not None
    assert again.actions == ()
    # the run finishes; a new generation fires it again, with a run id from the new event
    assert rig.action_done(action, "Succeeded", 2).decisions[0].reason.endswith("run Succeeded")
    second = engine.submit(rig.state, rig.axon, 2, submit_event(2, "submit-2"), at(3))
    assert fired(second) == [("OnStart", None)]
    assert second.actions[0].sensor_run_id == engine.sensor_run_id("submit-2", "OnStart")
    assert second.actions[0].generation == 2


def test_submit_records_a_decision_for_every_sensor() -> None:
    rig = Rig(make_axon(TRIGGERLESS))
    assert [(d.sensor, d.fired) for d in rig.submitted.decisions] == [
        ("OnStart", False),
        ("OnTrain", False),
        ("OnStart", True),
    ]
    assert rig.submitted.decisions[0].reason == "generation 1: new sensor"
    assert rig.submitted.touched == ("default/demo",)


LIFECYCLE = """
- name: OnTrain
  triggers:
    - {name: trained, type: Lifecycle, task: Train, condition: Succeeded}
  concurrency: Allow
  tasks:
    - resourceExecutor: {task: Deploy}
- name: OnFail
  triggers:
    - {name: failed, type: Lifecycle, task: Train, condition: Failed}
  tasks:
    - resourceExecutor: {task: Eval}
"""


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([("Train", "Succeeded", "r1")], [[("OnTrain", "trained")]], id="fires"),
        pytest.param([("Train", "Failed", "r1")], [[("OnFail", "failed")]], id="other-phase"),
        pytest.param([("Train", "Running", "r1")], [[]], id="phase-no-trigger"),
        pytest.param([("Prep", "Succeeded", "r1")], [[]], id="task-no-trigger"),
        pytest.param(
            [("Train", "Succeeded", "r1"), ("Train", "Succeeded", "r1")],
            [[("OnTrain", "trained")], []],
            id="same-edge-twice-fires-once",
        ),
        pytest.param(
            [("Train", "Succeeded", "r1"), ("Train", "Succeeded", "r2")],
            [[("OnTrain", "trained")], [("OnTrain", "trained")]],
            id="each-task-run-fires",
        ),
        pytest.param(
            [("Train", "Running", "r1"), ("Train", "Succeeded", "r1")],
            [[], [("OnTrain", "trained")]],
            id="edge-per-phase",
        ),
    ],
)
def test_lifecycle_triggers_are_edge_triggered(
    events: list[tuple[str, str, str]], expected: list[list[tuple[str, str]]]
) -> None:
    rig = Rig(make_axon(LIFECYCLE))
    for (task, phase, run), want in zip(events, expected, strict=True):
        result = rig.lifecycle(task, phase, run_id=run)  # type: ignore[arg-type]  # table holds valid phases
        assert fired(result) == want


def test_a_repeated_lifecycle_edge_is_recorded_as_seen() -> None:
    rig = Rig(make_axon(LIFECYCLE))
    rig.lifecycle("Train", "Succeeded")
    again = only(rig.lifecycle("Train", "Succeeded"), "OnTrain")
    assert (again.matched, again.fired) == (True, False)
    assert "already seen" in again.reason


def test_seen_edges_are_bounded() -> None:
    rig = Rig(make_axon(LIFECYCLE))
    for i in range(engine.SEEN_EDGES_LIMIT + 5):
        rig.lifecycle("Train", "Succeeded", run_id=f"r{i}")
    dumped = rig.state.dump_axon(rig.axon)
    assert dumped.count(b"\\u001f") == 2 * engine.SEEN_EDGES_LIMIT
    # the oldest edge was forgotten, so it would fire again; a recent one would not
    assert fired(rig.lifecycle("Train", "Succeeded", run_id="r0")) == [("OnTrain", "trained")]
    recent = f"r{engine.SEEN_EDGES_LIMIT}"
    assert fired(rig.lifecycle("Train", "Succeeded", run_id=recent)) == []


NAMED = """
- name: Manual
  triggers:
    - {name: poke, type: Rest}
    - {name: nightly, type: Calendar, schedule: "0 3 * * *"}
  concurrency: Allow
  tasks:
    - resourceExecutor: {task: Prep}
- name: Other
  triggers:
    - {name: trained, type: Lifecycle, task: Train, condition: Succeeded}
  tasks:
    - resourceExecutor: {task: Prep}
"""


@pytest.mark.parametrize(
    ("kind", "sensor", "trigger", "fires", "reason"),
    [
        ("rest", "Manual", None, True, "Rest event; fired"),
        ("rest", "Manual", "poke", True, "Rest event; fired"),
        ("rest", "Manual", "nightly", False, "no Rest trigger named 'nightly'"),
        ("rest", "Other", None, False, "sensor 'Other' has no Rest trigger"),
        ("rest", "Nope", None, False, "no sensor named 'Nope'"),
        ("calendar", "Manual", "nightly", True, "Calendar event; fired"),
        ("calendar", "Manual", "poke", False, "no Calendar trigger named 'poke'"),
    ],
)
def test_rest_and_calendar_events_fire_the_sensor_they_name(
    kind: str, sensor: str, trigger: str | None, fires: bool, reason: str
) -> None:
    rig = Rig(make_axon(NAMED))
    if kind == "rest":
        result = rig.rest(sensor, trigger=trigger)
    else:
        result = rig.calendar(sensor, trigger or "")
    decision = only(result, sensor)
    assert decision.fired is fires
    assert reason in decision.reason
    assert bool(result.actions) is fires


OR_TRIGGERS = """
- name: Any
  triggers:
    - {name: trained, type: Lifecycle, task: Train, condition: Succeeded}
    - {name: poke, type: Rest}
    - {name: low, type: Alert, condition: "{{acc}} < 0.5"}
  concurrency: Allow
  tasks:
    - resourceExecutor: {task: Deploy}
"""


def test_several_triggers_are_or() -> None:
    rig = Rig(make_axon(OR_TRIGGERS))
    assert fired(rig.lifecycle("Train", "Succeeded")) == [("Any", "trained")]
    assert fired(rig.rest("Any")) == [("Any", "poke")]
    assert fired(rig.metric("acc", 0.1)) == [("Any", "low")]


def test_one_event_fires_a_sensor_at_most_once() -> None:
    rig = Rig(
        make_axon("""
        - name: Twice
          triggers:
            - {name: a, type: Lifecycle, task: Train, condition: Succeeded}
            - {name: b, type: Lifecycle, task: Train, condition: Succeeded}
          concurrency: Allow
          tasks:
            - resourceExecutor: {task: Deploy}
        """)
    )
    result = rig.lifecycle("Train", "Succeeded")
    assert [(d.trigger, d.fired) for d in result.decisions] == [("a", True), ("b", False)]
    assert "already fired for this event" in result.decisions[1].reason
    assert len(result.actions) == 1


CONDITIONS = """
- name: Gate
  triggers:
    - {name: poke, type: Rest}
  conditions:
    - {name: good, condition: "{{acc}} > 0.8"}
    - {name: enough, condition: "{{samples}} >= 100"}
  concurrency: Allow
  tasks:
    - resourceExecutor: {task: Deploy}
"""


@pytest.mark.parametrize(
    ("values", "fires", "reason"),
    [
        ({}, False, "condition 'good' is unknown (no value for acc)"),
        ({"acc": 0.9}, False, "condition 'enough' is unknown (no value for samples)"),
        ({"acc": 0.5, "samples": 200}, False, "condition 'good' is false ({{acc}} > 0.8; acc=0.5)"),
        ({"acc": 0.9, "samples": 10}, False, "condition 'enough' is false"),
        ({"acc": 0.9, "samples": 100}, True, "fired"),
        ({"acc": 0.9, "samples": None}, False, "no value for samples"),
    ],
)
def test_conditions_are_and_and_a_blocked_firing_says_why(
    values: dict[str, float | None], fires: bool, reason: str
) -> None:
    rig = Rig(make_axon(CONDITIONS))
    for name, value in values.items():
        rig.metric(name, 0.0)  # an older value, replaced by the one under test
        recorded = only(rig.metric(name, value), "Gate")
        assert (recorded.matched, recorded.fired) == (False, False)
        assert "recorded" in recorded.reason
    decision = only(rig.rest("Gate"), "Gate")
    assert decision.fired is fires
    assert reason in decision.reason


def test_a_condition_value_addressed_to_the_sensor_feeds_only_that_condition() -> None:
    rig = Rig(make_axon(CONDITIONS))
    rig.metric("acc", 0.9, sensor="Gate", trigger="good")
    rig.metric("samples", 500, sensor="Gate", trigger="enough")
    assert fired(rig.rest("Gate")) == [("Gate", "poke")]
    wrong = only(rig.metric("acc", 0.9, sensor="Gate", trigger="enough"), "Gate")
    assert "reads no query 'acc'" in wrong.reason
    missing = only(rig.metric("acc", 0.9, sensor="Gate", trigger="nope"), "Gate")
    assert "no Alert trigger or Metric condition named 'nope'" in missing.reason


def test_events_that_concern_nothing_yield_no_decisions() -> None:
    rig = Rig(make_axon(LIFECYCLE))
    assert rig.metric("unread_metric", 1.0).decisions == ()
    assert rig.lifecycle("Prep", "Succeeded").decisions == ()
    other = LifecycleData(axon="other-axon", task="Train", run_id="r", phase="Succeeded")
    result = rig.feed(other.to_event(source="t", id="x1", time=at(0)), 0)
    assert (result.decisions, result.ignored) == ((), None)


@pytest.mark.parametrize(
    ("type_", "data", "why"),
    [
        ("ranvier.nonsense", {"axon": AXON}, "not one the engine reads"),
        ("ranvier.action", {"axon": AXON}, "not one the engine reads"),
        ("ranvier.lifecycle", {"axon": AXON, "task": "Train"}, "run_id"),
        ("ranvier.lifecycle", {"task": "Train", "run_id": "r", "phase": "Running"}, "names no"),
        ("ranvier.lifecycle", {"axon": 7}, "names no Axon"),
        ("ranvier.metric", {"axon": AXON, "name": "acc", "value": "high"}, "value"),
        ("ranvier.rest", {"axon": AXON, "sensor": "OnTrain", "extra": 1}, "extra"),
        ("ranvier.calendar", {"axon": AXON, "sensor": "OnTrain"}, "trigger"),
        ("ranvier.axon", {"axon": AXON, "generation": 0, "action": "submitted"}, "invalid"),
        ("ranvier.axon", {"axon": AXON, "generation": 2, "action": "submitted"}, "submit()"),
    ],
)
def test_unreadable_events_are_ignored_with_a_reason_never_raised(
    type_: str, data: dict[str, object], why: str
) -> None:
    rig = Rig(make_axon(LIFECYCLE))
    event = Event(
        id="bad-1", source="t", type=type_, time=datetime(2026, 1, 1, tzinfo=UTC), data=data
    )
    result = engine.step(rig.state, event, at(0))
    assert result.decisions == ()
    assert result.actions == ()
    assert result.ignored is not None
    assert why in result.ignored


def test_reprocessing_the_same_event_gives_the_same_run_and_action_keys() -> None:
    first = Rig(make_axon(LIFECYCLE))
    second = Rig(make_axon(LIFECYCLE))
    event = LifecycleData(axon=AXON, task="Train", run_id="r9", phase="Succeeded").to_event(
        source="t", id="01JSAMEEVENT", time=at(5)
    )
    a = engine.step(first.state, event, at(5))
    b = engine.step(second.state, event, at(7))  # later processing: same ids
    assert keys(a) == keys(b)
    assert keys(a) == [
        f"{AXON}/OnTrain/{engine.sensor_run_id('01JSAMEEVENT', 'OnTrain')}/0/1",
    ]
    assert [d.sensor_run_id for d in a.decisions] == [d.sensor_run_id for d in b.decisions]
    # and on the same state, the event is recognised: no second run, no new action
    again = engine.step(first.state, event, at(6))
    assert again.actions == ()
