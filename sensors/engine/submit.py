"""Submitting an Axon: a new generation (state kept where the spec did not change) or a
deletion."""

from __future__ import annotations

from datetime import datetime

from events.model import (
    AXON,
    Event,
)
from sensors.engine.base import AXON_DELETED, StepResult, _seconds, axon_key, sensor_run_id
from sensors.engine.compiled import _compile, _Sensor
from sensors.engine.firing import _fire, _Out
from sensors.engine.state import EngineState, _AxonState, _SensorState
from sensors.spec import (
    Axon,
)

# ---------------------------------------------------------------------------------------------
# Submit: a new generation, or a deletion


def submit(
    state: EngineState, axon: Axon, generation: int, event: Event, now: datetime
) -> StepResult:
    """Apply `axon` as spec `generation` (or delete it), on the `ranvier.axon` event `event`.

    A new generation keeps the state of sensors, triggers and conditions that did not change
    and resets what did (a run of a sensor whose steps changed is ended), with one decision per
    sensor saying which; sensors without triggers then fire once for the generation. A stale or
    already applied generation changes nothing (`ignored` says why). May raise `EngineError`
    when the spec has a condition that does not parse (the loader refuses such files).
    """
    out = _Out(_seconds(now))
    key = axon_key(axon.metadata.namespace, axon.metadata.name)
    old = state._axons.get(key)
    deleting = event.type == AXON and event.data.get("action") == "deleted"
    if deleting:
        if old is None:
            return out.result(ignored=f"Axon {key!r} is not known; nothing to delete")
        return _delete(state, out, old, event.id)
    if old is not None and generation <= old.generation:
        return out.result(
            ignored=f"generation {generation} of Axon {key!r} is not newer than the "
            f"applied generation {old.generation}"
        )
    spec = _compile(axon)
    ax = _AxonState(spec=spec, generation=generation, sensors={})
    if old is not None:
        ax.runs, ax.finished, ax.finished_index = old.runs, old.finished, old.finished_index
        ax.seen, ax.seen_index = old.seen, old.seen_index
    state._axons[key] = ax
    for sensor in spec.order:
        prior = old.spec.sensors.get(sensor.name) if old is not None else None
        if old is None or prior is None:
            reason = f"generation {generation}: new sensor"
        else:
            reason = f"generation {generation}: " + _reconcile(
                out, ax, old, prior=prior, sensor=sensor, st=old.sensors.get(sensor.name)
            )
        out.decide(ax, event.id, sensor.name, None, matched=True, fired=False, reason=reason)
    if old is not None:
        _drop_removed(out, ax, old, event_id=event.id, generation=generation)
    for sensor in spec.triggerless:
        st = ax.sensor_state(sensor.name)
        if st.fired_generation == generation:
            continue
        st.fired_generation = generation
        _fire(
            out,
            ax,
            sensor,
            trigger=None,
            event_id=event.id,
            run_id=sensor_run_id(event.id, sensor.name),
            why=f"no triggers: runs once per generation (generation {generation} submitted)",
        )
    out.touched[key] = None
    return out.result()


def _drop_removed(
    out: _Out, ax: _AxonState, old: _AxonState, *, event_id: str, generation: int
) -> None:
    """Sensors of the old generation that the new one lacks: their runs end, their state goes."""
    for prior in old.spec.order:
        if prior.name in ax.spec.sensors:
            continue
        for rid in old.sensors.get(prior.name, _SensorState()).active:
            run = old.runs.get(rid)
            if run is not None:
                out.end(ax, run, "Failed", f"sensor removed in generation {generation}")
        out.decide(
            ax,
            event_id,
            prior.name,
            None,
            matched=True,
            fired=False,
            reason=f"generation {generation}: sensor removed, its state dropped",
        )


def _reconcile(
    out: _Out,
    ax: _AxonState,
    old: _AxonState,
    *,
    prior: _Sensor,
    sensor: _Sensor,
    st: _SensorState | None,
) -> str:
    """Carry one sensor's state into a new generation; returns what was kept and reset."""
    st = st if st is not None else _SensorState()
    new = _SensorState(fired_generation=st.fired_generation, active=st.active, starts=st.starts)
    reset: list[str] = []
    for name in sensor.triggers:
        if prior.trigger_prints.get(name) == sensor.trigger_prints[name]:
            if name in st.alerts:
                new.alerts[name] = st.alerts[name]
        elif name in prior.trigger_prints:
            reset.append(f"trigger {name!r} changed")
        else:
            reset.append(f"trigger {name!r} added")
    reset += [f"trigger {n!r} removed" for n in prior.triggers if n not in sensor.trigger_prints]
    for name, print_ in sensor.condition_prints.items():
        if prior.condition_prints.get(name) == print_:
            if name in st.conditions:
                new.conditions[name] = st.conditions[name]
        elif name in prior.condition_prints:
            reset.append(f"condition {name!r} changed")
        else:
            reset.append(f"condition {name!r} added")
    reset += [
        f"condition {n!r} removed"
        for n in prior.condition_prints
        if n not in sensor.condition_prints
    ]
    if prior.max_runs_print != sensor.max_runs_print:
        new.starts = []
        reset.append("maxRuns changed (window reset)")
    if prior.tasks_print != sensor.tasks_print:
        ended = list(new.active)
        for rid in ended:
            run = old.runs.get(rid)
            if run is not None:
                out.end(
                    ax, run, "Failed", f"the sensor's tasks changed in generation {ax.generation}"
                )
        new.active = {}
        reset.append("tasks changed" + (f" (ended run {', '.join(ended)})" if ended else ""))
    if prior.concurrency != sensor.concurrency:
        reset.append(f"concurrency now {sensor.concurrency}")
    ax.sensors[sensor.name] = new
    if not reset:
        return "unchanged, state kept"
    return "changed: " + "; ".join(reset) + "; the rest of its state kept"


def _delete(state: EngineState, out: _Out, ax: _AxonState, event_id: str) -> StepResult:
    """The one way an Axon goes: its active runs end (Failed, reported in `ended`), each sensor
    gets a decision saying so, and its state is dropped (`deleted`: the caller removes it)."""
    ended: dict[str, int] = {}
    for run in list(ax.runs.values()):
        out.end(ax, run, "Failed", AXON_DELETED)
        ended[run.sensor] = ended.get(run.sensor, 0) + 1
    for sensor in ax.spec.order:
        out.decide(
            ax,
            event_id,
            sensor.name,
            None,
            matched=True,
            fired=False,
            reason=f"{AXON_DELETED}: state of the sensor dropped "
            f"({ended.get(sensor.name, 0)} active run(s) ended)",
        )
    del state._axons[ax.spec.key]
    return out.result(deleted=(ax.spec.key,))
