"""An Alert trigger's state machine: inactive -> pending -> firing -> resolved, with `for`,
`keepFiringFor`, `resolve` and `cooldown`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sensors.engine.base import _dur, _when, sensor_run_id
from sensors.engine.compiled import _Alert, _Cond, _Sensor, _Target
from sensors.engine.firing import _fire, _Out
from sensors.engine.state import _AlertState, _AxonState


def _keys(target: _Target) -> frozenset[str]:
    return target.alert.keys if target.alert is not None else cast(_Cond, target.cond).keys


def _alert(
    out: _Out,
    ax: _AxonState,
    sensor: _Sensor,
    alert: _Alert,
    *,
    event_id: str,
    shown: str,
    timed: bool,
    decided_by: str | None = None,
) -> None:
    """Run one Alert trigger's state machine at `out.now`; on ticks, record only transitions
    (under `decided_by`, the tick event, when there is one)."""
    st = ax.alert_state(sensor.name, alert.name)
    step = _AlertStep(out, ax, sensor, alert, st, event_id, shown, timed, decided_by)
    cond = alert.condition.evaluate(st.values)
    if st.phase == "firing":
        _alert_firing(step, cond)
    elif cond is None:
        _alert_unknown(step)
    elif not cond:
        _alert_false(step)
    else:
        _alert_holds(step)


@dataclass(slots=True)
class _AlertStep:
    """One run of an Alert's state machine (`_alert`): what its phases share."""

    out: _Out
    ax: _AxonState
    sensor: _Sensor
    alert: _Alert
    st: _AlertState
    event_id: str
    shown: str
    timed: bool
    decided_by: str | None

    def note(self, reason: str) -> None:
        """Record a decision about the alert (not fired)."""
        self.out.decide(
            self.ax,
            self.decided_by or self.event_id,
            self.sensor.name,
            self.alert.name,
            matched=True,
            fired=False,
            reason=f"{self.shown}: {reason}" if self.shown else reason,
        )

    def quiet(self, reason: Callable[[], str]) -> None:
        """Record it for an event, not on a tick (ticks record transitions only)."""
        if not self.timed:
            self.note(reason())


def _alert_firing(step: _AlertStep, cond: bool | None) -> None:
    """Firing: resolve when the alert stops holding (or its `resolve` condition holds), after
    `keepFiringFor` if set."""
    alert, st, now = step.alert, step.st, step.out.now
    if alert.resolve is not None:
        clear = alert.resolve.evaluate(st.values)
        test, met = f"resolve condition {alert.resolve.text}", "holds"
    else:
        clear = None if cond is None else not cond
        test, met = f"condition {alert.condition.text}", "no longer holds"
    if clear is None:
        return step.quiet(lambda: f"firing; {test} is unknown, no transition")
    if not clear:
        st.clear_since = st.clear_event = None
        return step.quiet(lambda: "firing; the alert still holds")
    if alert.keep_firing_for > 0:
        if st.clear_since is None:
            st.clear_since, st.clear_event = now, step.event_id
        until = st.clear_since + alert.keep_firing_for
        if now < until:
            return step.quiet(
                lambda: (
                    f"firing; resolves at {_when(until)} unless it holds again "
                    f"(keepFiringFor {_dur(alert.keep_firing_for)})"
                )
            )
    st.phase, st.clear_since, st.clear_event = "inactive", None, None
    return step.note(f"{test} {met}: firing -> resolved -> inactive")


def _alert_unknown(step: _AlertStep) -> None:
    """Not firing, no value: no transition (an unknown value never counts as false)."""
    if step.timed:
        return
    alert, st = step.alert, step.st
    missing = sorted(q.key for q in alert.condition.queries if q.key not in st.values)
    what = f"no value for {', '.join(missing)}" if missing else "value unknown"
    step.note(f"condition {alert.condition.text} is unknown ({what}); no transition")


def _alert_false(step: _AlertStep) -> None:
    """Not firing, the condition false: a pending alert goes back to inactive."""
    st, text = step.st, step.alert.condition.text
    if st.phase == "pending":
        st.phase, st.since, st.since_event, st.held_until = "inactive", None, None, None
        return step.note(f"condition {text} is false: pending -> inactive")
    return step.quiet(lambda: f"condition {text} is false; inactive")


def _alert_holds(step: _AlertStep) -> None:
    """Not firing, the condition true: pending until `for` has passed, then fire (unless in
    the cooldown after the last firing)."""
    alert, st, now = step.alert, step.st, step.out.now
    became = ""
    if st.phase == "inactive":
        st.phase, st.since, st.since_event = "pending", now, step.event_id
        became = "inactive -> pending"
    since = cast(float, st.since)
    due = since + alert.for_
    if now < due:
        return step.quiet(
            lambda: (
                f"condition {alert.condition.text} holds: {became or 'pending'}; fires at "
                f"{_when(due)} if it still holds (for {_dur(alert.for_)})"
            )
        )
    if st.last_fired is not None and now < st.last_fired + alert.cooldown:
        until = st.last_fired + alert.cooldown
        first = st.held_until is None
        st.held_until = until
        if step.timed and not first:
            return None
        return step.note(
            f"condition {alert.condition.text} holds, but not fired: cooldown "
            f"{_dur(alert.cooldown)} after the firing at {_when(st.last_fired)} "
            f"(pending until {_when(until)})"
        )
    return _alert_fire(step, since, became)


def _alert_fire(step: _AlertStep, since: float, became: str) -> None:
    """The alert starts firing: the sensor fires (its run id from the event that started the
    pending episode, which a tick passes as `event_id`)."""
    alert, st, now = step.alert, step.st, step.out.now
    cause = step.event_id
    st.phase, st.last_fired = "firing", now
    st.since = st.since_event = st.held_until = None
    edge = "inactive -> firing" if became else "pending -> firing"
    if alert.for_ > 0 and not became:
        edge += f" (held for {_dur(now - since)})"
    run_id = sensor_run_id(cause, step.sensor.name, alert.name if step.timed else None)
    _fire(
        step.out,
        step.ax,
        step.sensor,
        trigger=alert.name,
        event_id=cause,
        run_id=run_id,
        why=f"{step.shown}: {edge}" if step.shown else edge,
        decided_by=step.decided_by,
    )
