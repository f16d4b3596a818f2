"""Stepping one event: the rules of each trigger kind (Lifecycle, Metric, Rest, Calendar, ticks)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, cast

from pydantic import ValidationError

from events.model import (
    AXON,
    CALENDAR,
    LIFECYCLE,
    METRIC,
    REST,
    TICK,
    AxonData,
    CalendarData,
    Event,
    LifecycleData,
    MetricData,
    PlannedAction,
    RestData,
    TickData,
)
from sensors.engine.alerts import _alert, _keys
from sensors.engine.base import _EDGE_SEP, StepResult, _dur, _num, _seconds, axon_key, sensor_run_id
from sensors.engine.compiled import _Action, _Cond, _Sensor, _Target
from sensors.engine.firing import _fire, _Out, _request, _start_step
from sensors.engine.state import EngineState, _ActionState, _AxonState, _RunState
from sensors.engine.submit import _delete
from sensors.engine.timing import _tick_axon

# ---------------------------------------------------------------------------------------------
# Step: one event


def event_axon(event: Event) -> str | None:
    """The key (`axon_key`) of the Axon an event is about, None if it names none: the one
    place this is read from an event (the runtime keys its redelivery guard by it)."""
    data = event.data
    axon = data.get("axon")
    namespace = data.get("namespace", "default")
    if isinstance(axon, str) and isinstance(namespace, str):
        return axon_key(namespace, axon)
    return None


def step(state: EngineState, event: Event, now: datetime) -> StepResult:
    """Apply one event; never raises for a bad event (`StepResult.ignored` says why)."""
    out = _Out(_seconds(now))
    if event.type not in _HANDLERS:
        return out.result(ignored=f"event type {event.type!r} is not one the engine reads")
    key = event_axon(event)
    if key is None:
        return out.result(ignored=f"event {event.id} ({event.type}) names no Axon")
    data = event.data
    ax = state._axons.get(key)
    if event.type == AXON:
        return _step_axon(state, out, ax, event)
    if ax is None:
        return out.result()  # an Axon this engine does not know: concerns nothing here
    try:
        payload = _PAYLOADS[event.type].model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(payload)"
        return out.result(ignored=f"event {event.id} ({event.type}): {where}: {err['msg']}")
    _HANDLERS[event.type](out, ax, event.id, payload)
    return out.result()


def _step_axon(state: EngineState, out: _Out, ax: _AxonState | None, event: Event) -> StepResult:
    try:
        payload = AxonData.model_validate(event.data)
    except ValidationError:
        return out.result(ignored=f"event {event.id} (ranvier.axon) has an invalid payload")
    if payload.action == "deleted" and ax is not None:
        return _delete(state, out, ax, event.id)
    return out.result(
        ignored="ranvier.axon events are applied with submit(), which is given the spec"
    )


def _lifecycle(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    data = cast(LifecycleData, payload)
    if data.phase == "Succeeded":
        _task_metrics(out, ax, event_id, data)
    if data.sensor_run_id is not None:
        _advance(out, ax, event_id, data)
    matches = ax.spec.by_lifecycle.get((data.task, data.phase))
    if not matches:
        return
    fresh = ax.see(_EDGE_SEP.join((data.task, data.run_id, data.phase)))
    why = f"task {data.task} run {data.run_id} {data.phase}"
    for sensor, trigger in matches:
        if not fresh:
            out.decide(
                ax,
                event_id,
                sensor.name,
                trigger,
                matched=True,
                fired=False,
                reason=f"{why} was already seen (lifecycle triggers fire once per run and phase)",
            )
            continue
        _fire(
            out,
            ax,
            sensor,
            trigger=trigger,
            event_id=event_id,
            run_id=sensor_run_id(event_id, sensor.name),
            why=why,
        )


def _task_metrics(out: _Out, ax: _AxonState, event_id: str, data: LifecycleData) -> None:
    """Record what a Succeeded run reported for the Metric conditions that name its task.

    The run's lifecycle event carries the metrics its version registered, so a condition with
    `task` always reads the latest Succeeded run's values, recorded before any trigger of this
    same event fires (a Lifecycle trigger on that task sees them).
    """
    targets = ax.spec.by_task_metrics.get(data.task, ())
    if not targets:
        return
    reported = data.outputs.get("metrics")
    metrics = reported if isinstance(reported, dict) else {}
    for target in targets:
        cond = cast(_Cond, target.cond)
        values: dict[str, float] = {}
        shown = []
        for key in sorted(cond.keys):
            name = cond.metric_names.get(key, key)
            value = metrics.get(name)
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                values[key] = float(value)
                shown.append(f"{name}={_num(float(value))}")
                continue
            shown.append(f"{name} not reported")
        ax.sensor_state(target.sensor.name).conditions[target.name] = values
        _recorded(
            out,
            ax,
            event_id,
            target,
            f"from task {data.task} run {data.run_id} ({', '.join(shown)})",
        )


def _recorded(out: _Out, ax: _AxonState, event_id: str, target: _Target, source: str) -> None:
    """Note that a Metric condition's value was recorded (it fires nothing by itself)."""
    out.decide(
        ax,
        event_id,
        target.sensor.name,
        None,
        matched=False,
        fired=False,
        reason=f"value for condition {target.name!r} recorded {source}",
    )


def _advance(out: _Out, ax: _AxonState, event_id: str, data: LifecycleData) -> None:
    """Move a sensor run along on a lifecycle event of one of its actions."""
    rid = cast(str, data.sensor_run_id)
    run = ax.runs.get(rid)
    name = run.sensor if run is not None else data.sensor

    def note(reason: str, *, fired: bool = False, planned: Sequence[PlannedAction] = ()) -> None:
        if name is not None:
            out.decide(
                ax,
                event_id,
                name,
                None,
                matched=run is not None,
                fired=fired,
                reason=reason,
                run_id=rid,
                planned=planned,
            )

    if run is None:
        done = ax.finished_index.get(rid)
        if done is not None:
            return note(f"ignored: run {rid} already finished ({done[0]}: {done[1]})")
        return note(f"ignored: no active run {rid}")
    ax.run_changed(rid)
    found = _reported_action(ax, run, data)
    if isinstance(found, str):
        return note(found)
    sensor, act, spec = found
    what = f"step {run.step} action {data.index} ({spec.kind} {spec.task}) attempt {data.attempt}"
    if data.attempt != act.attempt:
        return note(f"ignored: {what} is not the current attempt ({act.attempt})")
    if act.phase in ("Succeeded", "Failed"):
        return note(f"ignored: {what} already {act.phase}")
    act.phase = data.phase
    if data.phase in ("Pending", "Running"):
        return note(f"{what} {data.phase}")
    if data.phase == "Failed":
        reason, planned = _action_failed(out, ax, run, act, spec, data=data, what=what)
    else:
        reason, planned = _action_succeeded(out, ax, sensor, run, what)
    return note(reason, fired=bool(planned), planned=planned)


def _reported_action(
    ax: _AxonState, run: _RunState, data: LifecycleData
) -> tuple[_Sensor, _ActionState, _Action] | str:
    """The sensor, action state and action spec a lifecycle event reports on, or why the
    event concerns none of the run's current actions."""
    sensor = ax.spec.sensors.get(run.sensor)
    if sensor is None:  # pragma: no cover - runs of removed sensors are ended on submit
        return f"ignored: sensor {run.sensor!r} is not in the spec"
    if data.step != run.step:
        return f"ignored: event for step {data.step}, the run is at step {run.step}"
    if data.index >= len(run.actions):
        return f"ignored: step {run.step} has no action {data.index}"
    return sensor, run.actions[data.index], sensor.steps[run.step][data.index]


def _action_failed(
    out: _Out,
    ax: _AxonState,
    run: _RunState,
    act: _ActionState,
    spec: _Action,
    *,
    data: LifecycleData,
    what: str,
) -> tuple[str, list[PlannedAction]]:
    """Retry a failed action while its retry limit allows, else end the run Failed."""
    if act.attempt <= spec.retry_limit:
        act.attempt += 1
        act.phase = "Pending"
        planned = [_request(out, ax, run, index=data.index, action=spec, attempt=act.attempt)]
        wait = f" after {_dur(spec.backoff)} backoff" if spec.backoff > 0 else ""
        return f"{what} Failed; retrying: attempt {act.attempt} of {spec.retry_limit + 1}{wait}", (
            planned
        )
    detail = f": {data.message}" if data.message else ""
    out.end(ax, run, "Failed", f"{what} Failed{detail}")
    return f"{what} Failed{detail}; run Failed", []


def _action_succeeded(
    out: _Out, ax: _AxonState, sensor: _Sensor, run: _RunState, what: str
) -> tuple[str, list[PlannedAction]]:
    """Start the next step once every action of this one succeeded; the last ends the run."""
    waiting = sum(1 for a in run.actions if a.phase != "Succeeded")
    if waiting:
        return f"{what} Succeeded; waiting for {waiting} more action(s) of step {run.step}", []
    if run.step + 1 < len(sensor.steps):
        run.step += 1
        planned = _start_step(out, ax, sensor, run)
        return f"{what} Succeeded; step {run.step - 1} done, step {run.step} started", planned
    out.end(ax, run, "Succeeded", f"all {len(sensor.steps)} step(s) succeeded")
    return f"{what} Succeeded; run Succeeded", []


def _metric(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    data = cast(MetricData, payload)
    value = data.value
    known = value is not None and not data.stale and math.isfinite(value)
    if data.sensor is not None and data.trigger is not None:
        targets = ax.spec.by_target.get((data.sensor, data.trigger), ())
        if not targets:
            out.decide(
                ax,
                event_id,
                data.sensor,
                data.trigger,
                matched=False,
                fired=False,
                reason=f"ignored: sensor {data.sensor!r} has no Alert trigger or Metric "
                f"condition named {data.trigger!r}",
            )
            return
        relevant = [t for t in targets if data.name in _keys(t)]
        if not relevant:
            out.decide(
                ax,
                event_id,
                data.sensor,
                data.trigger,
                matched=False,
                fired=False,
                reason=f"ignored: {data.trigger!r} reads no query {data.name!r}",
            )
            return
    else:
        relevant = list(ax.spec.by_metric.get(data.name, ()))
        if not relevant:
            return
    shown = f"{data.name}={_num(cast(float, value))}" if known else f"{data.name} unknown"
    # Record every value first, so an Alert sees the condition values of the same event.
    for target in relevant:
        st = ax.sensor_state(target.sensor.name)
        values = (
            st.alert(target.name).values
            if target.alert
            else st.conditions.setdefault(target.name, {})
        )
        if known:
            values[data.name] = cast(float, value)
        else:
            values.pop(data.name, None)
    for target in relevant:
        if target.alert is None:
            _recorded(out, ax, event_id, target, f"({shown})")
            continue
        _alert(out, ax, target.sensor, target.alert, event_id=event_id, shown=shown, timed=False)


def _rest(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    data = cast(RestData, payload)
    _named(out, ax, event_id, name=data.sensor, trigger=data.trigger, kind="Rest")


def _calendar(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    data = cast(CalendarData, payload)
    _named(out, ax, event_id, name=data.sensor, trigger=data.trigger, kind="Calendar")


def _named(
    out: _Out, ax: _AxonState, event_id: str, *, name: str, trigger: str | None, kind: str
) -> None:
    """Rest and Calendar events name the sensor (and maybe the trigger) they fire."""
    sensor = ax.spec.sensors.get(name)

    def miss(reason: str) -> None:
        out.decide(ax, event_id, name, trigger, matched=False, fired=False, reason=reason)

    if sensor is None:
        return miss(f"ignored: the Axon has no sensor named {name!r}")
    names = sensor.rest if kind == "Rest" else sensor.calendar
    if trigger is None:
        if not names:
            return miss(f"ignored: sensor {name!r} has no {kind} trigger")
        trigger = names[0]
    elif trigger not in names:
        return miss(f"ignored: sensor {name!r} has no {kind} trigger named {trigger!r}")
    _fire(
        out,
        ax,
        sensor,
        trigger=trigger,
        event_id=event_id,
        run_id=sensor_run_id(event_id, name),
        why=f"{kind} event",
    )
    return None


def _tick_event(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    """A recorded tick: the Axon's alerts whose deadline is at or before the tick's `due`,
    at that time (whenever the tick is stepped)."""
    out.now = _seconds(cast(TickData, payload).due)
    _tick_axon(out, ax, out.now, event_id)


_Handler = Callable[[_Out, _AxonState, str, Any], None]
_HANDLERS: Final[dict[str, _Handler]] = {
    LIFECYCLE: _lifecycle,
    METRIC: _metric,
    REST: _rest,
    CALENDAR: _calendar,
    TICK: _tick_event,
    AXON: _lifecycle,  # never called: step() routes ranvier.axon events to _step_axon first
}
_PAYLOADS: Final[dict[str, Any]] = {
    LIFECYCLE: LifecycleData,
    METRIC: MetricData,
    REST: RestData,
    CALENDAR: CalendarData,
    TICK: TickData,
}
