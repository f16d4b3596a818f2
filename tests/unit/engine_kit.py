"""Plain-data helpers for the engine tests: Axons from small YAML, events from payload classes.

A `Rig` holds one `EngineState` with one submitted Axon and a virtual clock in seconds from T0;
its methods build an event, step it and return the `StepResult`, so a test reads as a table of
inputs and the decisions they produce.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from events.model import (
    AxonData,
    CalendarData,
    DecisionData,
    Event,
    LifecycleData,
    MetricData,
    Phase,
    RestData,
)
from sensors import engine
from sensors.loader import load_axon_text
from sensors.spec import Axon

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
AXON = "demo"
TASKS = ("Prep", "Train", "Eval", "Deploy")


def at(seconds: float) -> datetime:
    """The virtual time `seconds` after T0."""
    return T0 + timedelta(seconds=seconds)


def make_axon(sensors: str, name: str = AXON) -> Axon:
    """An Axon with the tasks of TASKS (Train trains, the others are containers) and `sensors`."""
    tasks = "\n".join(
        f"    - {{name: {t}, {'train' if t == 'Train' else 'container'}: "
        f"{{image: busybox, command: [echo, {t}]}}}}"
        for t in TASKS
    )
    body = textwrap.indent(textwrap.dedent(sensors).strip(), "    ")
    text = (
        "apiVersion: ranvier.dev/v1alpha1\nkind: Axon\n"
        f"metadata: {{name: {name}}}\nspec:\n  tasks:\n{tasks}\n  sensors:\n{body}\n"
    )
    return load_axon_text(text, "axon.yaml")


def submit_event(
    generation: int,
    ev_id: str,
    *,
    action: Literal["submitted", "deleted"] = "submitted",
    t: float = 0,
) -> Event:
    """A `ranvier.axon` event for the test Axon."""
    data = AxonData(axon=AXON, generation=generation, action=action)
    return data.to_event(source="test", id=ev_id, time=at(t))


class Rig:
    """One engine, one Axon, a counter for event ids."""

    def __init__(self, axon: Axon, *, t: float = 0) -> None:
        self.axon = axon
        self.state = engine.EngineState()
        self.count = 0
        self.submitted = engine.submit(self.state, axon, 1, submit_event(1, "submit-1"), at(t))

    def next_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}-{self.count:04d}"

    def feed(self, event: Event, t: float) -> engine.StepResult:
        return engine.step(self.state, event, at(t))

    def lifecycle(
        self, task: str, phase: Phase, t: float = 0, *, run_id: str = "r1", **extra: Any
    ) -> engine.StepResult:
        data = LifecycleData(axon=AXON, task=task, run_id=run_id, phase=phase, **extra)
        return self.feed(data.to_event(source="test", id=self.next_id("lc"), time=at(t)), t)

    def action_done(
        self, result_action: Any, phase: Phase, t: float = 0, *, message: str = ""
    ) -> engine.StepResult:
        """The lifecycle an executor reports for an action request (same run, step, attempt)."""
        a = result_action
        return self.lifecycle(
            a.task,
            phase,
            t,
            run_id=f"{a.sensor_run_id}/{a.step}.{a.index}/{a.attempt}",
            sensor=a.sensor,
            sensor_run_id=a.sensor_run_id,
            step=a.step,
            index=a.index,
            attempt=a.attempt,
            message=message,
        )

    def metric(
        self,
        name: str,
        value: float | None,
        t: float = 0,
        *,
        stale: bool = False,
        sensor: str | None = None,
        trigger: str | None = None,
    ) -> engine.StepResult:
        data = MetricData(
            axon=AXON, name=name, value=value, stale=stale, sensor=sensor, trigger=trigger
        )
        return self.feed(data.to_event(source="test", id=self.next_id("m"), time=at(t)), t)

    def rest(self, sensor: str, t: float = 0, trigger: str | None = None) -> engine.StepResult:
        data = RestData(axon=AXON, sensor=sensor, trigger=trigger)
        return self.feed(data.to_event(source="test", id=self.next_id("rest"), time=at(t)), t)

    def calendar(self, sensor: str, trigger: str, t: float = 0) -> engine.StepResult:
        data = CalendarData(axon=AXON, sensor=sensor, trigger=trigger, scheduled_time=at(t))
        return self.feed(data.to_event(source="test", id=self.next_id("cal"), time=at(t)), t)

    def tick(self, t: float) -> engine.StepResult:
        return engine.tick(self.state, at(t))


def fired(result: engine.StepResult) -> list[tuple[str, str | None]]:
    """(sensor, trigger) of the decisions that fired."""
    return [(d.sensor, d.trigger) for d in result.decisions if d.fired]


def only(result: engine.StepResult, sensor: str) -> DecisionData:
    """The one decision about `sensor` (fails when there is not exactly one)."""
    found = [d for d in result.decisions if d.sensor == sensor]
    assert len(found) == 1, [d.reason for d in result.decisions]
    return found[0]


def keys(result: engine.StepResult) -> list[str]:
    return [a.idempotency_key for a in result.actions]
