"""Time: the deadlines Alerts wait on, ticks at them, and what is due."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import cast

from events.model import (
    TickData,
)
from sensors.engine.alerts import _alert
from sensors.engine.base import StepResult, _seconds, _when
from sensors.engine.compiled import _Alert, _Sensor
from sensors.engine.firing import _Out
from sensors.engine.state import EngineState, _AlertState, _AxonState

# ---------------------------------------------------------------------------------------------
# Time


def _deadline(alert: _Alert, st: _AlertState) -> float | None:
    if st.phase == "pending":
        if st.held_until is not None:
            return st.held_until
        return cast(float, st.since) + alert.for_
    if st.phase == "firing" and st.clear_since is not None:
        return st.clear_since + alert.keep_firing_for
    return None


def _armed(state: EngineState) -> Iterable[tuple[_AxonState, _Sensor, _Alert, float]]:
    """Alerts waiting on time, with their deadlines: Axons in key order, sensors in spec order."""
    for key in sorted(state._axons):
        yield from _armed_axon(state._axons[key])


def _armed_axon(ax: _AxonState) -> Iterable[tuple[_AxonState, _Sensor, _Alert, float]]:
    """One Axon's alerts waiting on time, with their deadlines, sensors in spec order.

    Only the sensors in `_AxonState.timed` are looked at (the runtime asks after every batch,
    and an Axon may have thousands of sensors); those found waiting on nothing are dropped.
    """
    if ax.timed is None:
        ax.timed = {s.name for s in ax.spec.order if s.alerts}
    if not ax.timed:
        return
    sensors = ax.spec.sensors
    idle: list[str] = []
    for sensor in sorted((sensors[n] for n in ax.timed if n in sensors), key=_position):
        st = ax.sensors.get(sensor.name)
        waiting = False
        for name, alert in sensor.alerts.items():
            ast = st.alerts.get(name) if st is not None else None
            due = _deadline(alert, ast) if ast is not None else None
            if due is not None:
                waiting = True
                yield ax, sensor, alert, due
        if not waiting:
            idle.append(sensor.name)
    ax.timed.difference_update(idle)
    ax.timed.intersection_update(sensors)


def _position(sensor: _Sensor) -> int:
    return sensor.position


def tick(state: EngineState, now: datetime) -> StepResult:
    """Apply the passing of time: fire alerts whose `for` or cooldown elapsed, resolve those
    whose `keepFiringFor` ran out. Records only what changed.

    A "what if" for dry runs (`sensors test --tick`); the live runtime records each tick as a
    `ranvier.tick` event instead (`due_ticks`), which `step` applies to its Axon."""
    out = _Out(_seconds(now))
    for key in sorted(state._axons):
        _tick_axon(out, state._axons[key], out.now)
    return out.result()


def _tick_axon(out: _Out, ax: _AxonState, until: float, tick_id: str | None = None) -> None:
    """Run the alerts of one Axon due by `until`. Their decisions name the tick event when
    there is one (`explain` of a tick says what it did), else the event that started the
    pending episode; a firing's run id always derives from the latter."""
    for _, sensor, alert, due in list(_armed_axon(ax)):
        if due > until:
            continue
        ast = ax.sensors[sensor.name].alerts[alert.name]
        cause = ast.since_event if ast.phase == "pending" else ast.clear_event
        _alert(
            out,
            ax,
            sensor,
            alert,
            event_id=cause or "tick",
            shown=f"tick at {_when(out.now)}",
            timed=True,
            decided_by=tick_id,
        )


def due_ticks(state: EngineState, now: datetime, after: datetime | None = None) -> list[TickData]:
    """The tick each Axon needs now: its earliest deadline, if at or before `now` (and after
    `after`, for deadlines already ticked that wait for a value). The runtime publishes them
    as `ranvier.tick` events; `step` acts on them when they come back from the stream."""
    limit, floor = _seconds(now), _seconds(after) if after is not None else -math.inf
    out: list[TickData] = []
    for key in sorted(state._axons):
        ax = state._axons[key]
        dues = [due for *_, due in _armed_axon(ax) if floor < due <= limit]
        if dues:
            out.append(
                TickData(
                    axon=ax.spec.name,
                    namespace=ax.spec.namespace,
                    due=datetime.fromtimestamp(min(dues), UTC),
                )
            )
    return out


def next_deadline(state: EngineState, after: datetime | None = None) -> datetime | None:
    """When `tick` could next change something (None: nothing is waiting on time).

    It may lie in the past when a due alert waits for a value that is currently unknown; such
    an alert stays due until an event brings a value, so after a `tick(now)` a caller may pass
    `after=now` to ask only for later deadlines.
    """
    floor = _seconds(after) if after is not None else -math.inf
    dues = [due for *_, due in _armed(state) if due > floor]
    return datetime.fromtimestamp(min(dues), UTC) if dues else None
