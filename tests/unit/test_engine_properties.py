"""Properties over random event sequences: the engine never raises, and its persisted state is
complete: dumping and loading it mid-sequence changes nothing that follows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.model import (
    ActionRequest,
    CalendarData,
    Event,
    LifecycleData,
    MetricData,
    Payload,
    RestData,
    canonical_json,
)
from sensors import engine
from tests.unit.engine_kit import AXON, T0, TASKS, make_axon, submit_event

SENSORS = """
- name: OnStart
  tasks:
    - resourceExecutor: {task: Prep}
- name: Pipe
  triggers:
    - {name: trained, type: Lifecycle, task: Train, condition: Succeeded}
    - {name: poke, type: Rest}
  conditions:
    - {name: good, condition: "{{acc}} > 0.5"}
  concurrency: Allow
  maxRuns: {count: 3, per: 1m}
  tasks:
    - - resourceExecutor: {task: Eval}
      - resourceExecutor: {task: Prep, retry: {limit: 1, backoff: 5s}}
    - resourceExecutor: {task: Deploy}
- name: Watch
  triggers:
    - name: low
      type: Alert
      condition: "{{acc}} < 0.9 and {{latency}} > 1"
      for: 5s
      keepFiringFor: 10s
      cooldown: 20s
      resolve: "{{acc}} > 0.95"
    - {name: nightly, type: Calendar, interval: 1h}
  concurrency: Replace
  tasks:
    - trainer: {task: Train, retry: {limit: 2}}
- name: Solo
  triggers:
    - {name: failed, type: Lifecycle, task: Deploy, condition: Failed}
  tasks:
    - resourceExecutor: {task: Eval}
"""
AXON_SPEC = make_axon(SENSORS)
SENSOR_NAMES = ("OnStart", "Pipe", "Watch", "Solo", "Ghost")
PHASES = ("Pending", "Running", "Succeeded", "Failed")

values = st.one_of(
    st.sampled_from([0.3, 0.6, 0.92, 0.97, 2.0]),
    st.sampled_from([None, 0.0, float("nan"), float("inf")]),
    st.floats(allow_nan=True, allow_infinity=True),
)
metric_op = st.tuples(
    st.just("metric"),
    st.sampled_from(("acc", "latency", "other")),
    values,
    st.just(False),  # stale samples come from the explicit op below
    st.sampled_from((None, None, ("Watch", "low"), ("Pipe", "good"), ("Pipe", "nope"))),
)

ops = st.one_of(
    st.tuples(st.just("done"), st.integers(0, 50), st.sampled_from(PHASES)),
    st.tuples(
        st.just("lifecycle"),
        st.sampled_from((*TASKS, "Nope")),
        st.sampled_from(PHASES),
        st.sampled_from(("r1", "r2", "r3")),
    ),
    metric_op,
    metric_op,
    st.tuples(st.just("metric"), st.just("acc"), values, st.just(True), st.just(None)),
    st.tuples(st.just("rest"), st.sampled_from(SENSOR_NAMES), st.sampled_from((None, "poke"))),
    st.tuples(st.just("calendar"), st.sampled_from(SENSOR_NAMES), st.sampled_from(("nightly",))),
    st.tuples(st.just("tick")),
    st.tuples(st.just("tick")),
    st.tuples(
        st.just("junk"),
        st.sampled_from(("ranvier.lifecycle", "ranvier.metric", "ranvier.rest", "x.y")),
        st.dictionaries(
            st.sampled_from(("axon", "task", "phase", "name", "value", "sensor", "step")),
            st.one_of(st.just(AXON), st.integers(-2, 3), st.text(max_size=3), st.none()),
        ),
    ),
)
steps = st.lists(st.tuples(st.sampled_from([0, 1, 3, 6, 12, 25, 70]), ops), max_size=60)


@dataclass
class _Feed:
    """Turns drawn ops into events, remembering the actions requested so far."""

    actions: list[ActionRequest]
    count: int = 0

    def event(self, op: tuple[Any, ...], t: float) -> Event | None:
        self.count += 1
        ev_id = f"ev-{self.count:04d}"
        time = T0 + timedelta(seconds=t)
        kind = op[0]
        if kind == "done":
            if not self.actions:
                return None
            a = self.actions[op[1] % len(self.actions)]
            data: Payload = LifecycleData(
                axon=AXON,
                task=a.task,
                run_id=f"{a.sensor_run_id}/{a.step}.{a.index}/{a.attempt}",
                phase=op[2],
                sensor=a.sensor,
                sensor_run_id=a.sensor_run_id,
                step=a.step,
                index=a.index,
                attempt=a.attempt,
            )
        elif kind == "lifecycle":
            data = LifecycleData(axon=AXON, task=op[1], phase=op[2], run_id=op[3])
        elif kind == "metric":
            target = op[4] or (None, None)
            data = MetricData(
                axon=AXON, name=op[1], value=op[2], stale=op[3], sensor=target[0], trigger=target[1]
            )
        elif kind == "rest":
            data = RestData(axon=AXON, sensor=op[1], trigger=op[2])
        elif kind == "calendar":
            data = CalendarData(axon=AXON, sensor=op[1], trigger=op[2], scheduled_time=time)
        else:
            return Event(id=ev_id, source="t", type=op[1], time=time, data=op[2])
        return data.to_event(source="t", id=ev_id, time=time)


def _run(
    state: engine.EngineState, feed: _Feed, seq: list[tuple[float, tuple[Any, ...]]], t0: float
) -> tuple[list[str], float]:
    out: list[str] = []
    t = t0
    for dt, op in seq:
        t += dt
        now = T0 + timedelta(seconds=t)
        if op[0] == "tick":
            result = engine.tick(state, now)
        else:
            event = feed.event(op, t)
            if event is None:
                continue
            result = engine.step(state, event, now)
        feed.actions.extend(result.actions)
        out.append(
            json.dumps(
                {
                    "d": [d.model_dump(mode="json") for d in result.decisions],
                    "a": [a.model_dump(mode="json") for a in result.actions],
                    "i": result.ignored,
                },
                sort_keys=True,
            )
        )
    return out, t


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=steps, after=steps)
def test_random_sequences_never_raise_and_state_round_trips(
    before: list[tuple[float, tuple[Any, ...]]], after: list[tuple[float, tuple[Any, ...]]]
) -> None:
    live = engine.EngineState()
    engine.submit(live, AXON_SPEC, 1, submit_event(1, "submit-1"), T0)
    feed = _Feed(actions=[])
    _, t = _run(live, feed, before, 0)

    dumped = live.dump_axon(AXON_SPEC)
    restored = engine.EngineState()
    restored.load_axon(AXON_SPEC, dumped)
    assert restored.dump_axon(AXON_SPEC) == dumped

    copy = _Feed(actions=list(feed.actions), count=feed.count)
    expected, _ = _run(live, feed, after, t)
    got, _ = _run(restored, copy, after, t)
    assert got == expected
    assert restored.dump_axon(AXON_SPEC) == live.dump_axon(AXON_SPEC)


SCRIPT: list[tuple[float, tuple[Any, ...]]] = [
    (0, ("metric", "acc", 0.6, False, None)),
    (0, ("metric", "latency", 2.0, False, None)),
    (1, ("rest", "Pipe", None)),
    (0, ("done", 0, "Running")),
    (1, ("done", 1, "Failed")),
    (0, ("done", 0, "Succeeded")),
    (3, ("tick",)),
    (0, ("done", 2, "Succeeded")),
    (2, ("tick",)),
    (1, ("metric", "acc", 0.97, False, None)),
    (5, ("tick",)),
    (6, ("tick",)),
    (0, ("metric", "acc", 0.3, False, None)),
    (5, ("tick",)),
    (0.5, ("tick",)),
    (0.5, ("tick",)),
    (1, ("metric", "acc", None, True, None)),
    (5, ("tick",)),
    (1, ("metric", "acc", 0.3, False, None)),
    (1, ("lifecycle", "Train", "Succeeded", "r1")),
    (0, ("lifecycle", "Train", "Succeeded", "r1")),
    (0, ("done", 4, "Failed")),
    (0, ("done", 5, "Succeeded")),
    (0, ("done", 6, "Succeeded")),
    (1, ("calendar", "Watch", "nightly")),
    (30, ("tick",)),
    (1, ("metric", "acc", 0.3, False, ("Watch", "low"))),
    (1, ("metric", "acc", 0.7, False, ("Pipe", "good"))),
    (1, ("rest", "Pipe", "poke")),
    (1, ("rest", "Pipe", "poke")),
    (1, ("rest", "Pipe", "poke")),
    (1, ("rest", "Pipe", "poke")),
    (0, ("done", 9, "Succeeded")),
]


def test_reloading_the_state_after_every_input_changes_nothing() -> None:
    """A scripted tour of every kind of state (pending, held by cooldown, keepFiringFor, retries,
    parallel steps, maxRuns window, seen edges), reloaded from its dump after each input."""
    straight = engine.EngineState()
    engine.submit(straight, AXON_SPEC, 1, submit_event(1, "submit-1"), T0)
    expected, _ = _run(straight, _Feed(actions=[]), SCRIPT, 0)
    assert any('"fired": true' in line for line in expected)
    for words in ("cooldown", "retrying", "maxRuns", "keepFiringFor", "already seen"):
        assert any(words in line for line in expected), words

    reloaded = engine.EngineState()
    engine.submit(reloaded, AXON_SPEC, 1, submit_event(1, "submit-1"), T0)
    feed, got, t = _Feed(actions=[]), [], 0.0
    for item in SCRIPT:
        fresh = engine.EngineState()
        fresh.load_axon(AXON_SPEC, reloaded.dump_axon(AXON_SPEC))
        reloaded = fresh
        lines, t = _run(reloaded, feed, [item], t)
        got += lines
    assert got == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=steps)
def test_the_incremental_dump_is_the_canonical_json_of_the_whole_state(
    seq: list[tuple[float, tuple[Any, ...]]],
) -> None:
    """`dump_axon` re-encodes only what changed since the last dump; after every input (and
    with dumps skipped in between) it must equal the canonical JSON of the whole state."""
    live = engine.EngineState()
    engine.submit(live, AXON_SPEC, 1, submit_event(1, "submit-1"), T0)
    feed, t = _Feed(actions=[]), 0.0
    key = engine.axon_key("default", AXON)
    for n, item in enumerate(seq):
        _, t = _run(live, feed, [item], t)
        if n % 3 == 2:
            continue  # several inputs between two dumps, as in a batch
        # The definition of the format: the whole state, encoded at once.
        whole = canonical_json(live._axons[key].to_json())
        if n % 2:  # the pieces the runtime joins in a thread, or the bytes
            assert "".join(live.dump_axon_parts(key)).encode() == whole
        else:
            assert live.dump_axon(AXON_SPEC) == whole
