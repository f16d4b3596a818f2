"""One call's output, and firing a sensor: conditions (AND), concurrency, maxRuns, a new run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from events.model import (
    ActionRequest,
    DecisionData,
    PlannedAction,
)
from sensors.engine.base import EndedRun, RunPhase, StepResult, _build, _dur, _num, _when
from sensors.engine.compiled import _Action, _Sensor
from sensors.engine.state import _ActionState, _AxonState, _RunState, _SensorState

# ---------------------------------------------------------------------------------------------
# One call's output


class _Out:
    """Collects one call's decisions and actions, in the order they were decided."""

    __slots__ = ("actions", "decisions", "ended", "fired", "now", "started", "touched")

    def __init__(self, now: float) -> None:
        self.now = now
        self.decisions: list[DecisionData] = []
        self.actions: list[ActionRequest] = []
        self.touched: dict[str, None] = {}
        self.fired: set[tuple[str, str, str]] = set()
        self.started: list[str] = []
        self.ended: list[EndedRun] = []

    def end(self, ax: _AxonState, run: _RunState, phase: RunPhase, why: str) -> None:
        """End a run (`_AxonState.finish`) and report it in the result."""
        ax.finish(run, phase, why)
        self.ended.append(EndedRun(ax.spec.namespace, ax.spec.name, run.sensor, run.id, phase, why))

    def decide(
        self,
        ax: _AxonState,
        event_id: str,
        sensor: str,
        trigger: str | None,
        *,
        matched: bool,
        fired: bool,
        reason: str,
        run_id: str | None = None,
        planned: Sequence[PlannedAction] = (),
    ) -> None:
        self.touched[ax.spec.key] = None
        self.decisions.append(
            _build(
                DecisionData,
                {
                    "axon": ax.spec.name,
                    "namespace": ax.spec.namespace,
                    "event_id": event_id,
                    "sensor": sensor,
                    "trigger": trigger,
                    "matched": matched,
                    "fired": fired,
                    "reason": reason,
                    "sensor_run_id": run_id,
                    "actions": list(planned),
                },
            )
        )

    def result(self, deleted: Sequence[str] = (), ignored: str | None = None) -> StepResult:
        return StepResult(
            decisions=tuple(self.decisions),
            actions=tuple(self.actions),
            touched=tuple(k for k in self.touched if k not in deleted),
            deleted=tuple(deleted),
            ignored=ignored,
            started=tuple(self.started),
            ended=tuple(self.ended),
        )


def _request(
    out: _Out, ax: _AxonState, run: _RunState, *, index: int, action: _Action, attempt: int
) -> PlannedAction:
    not_before = None
    if attempt > 1 and action.backoff > 0:
        not_before = datetime.fromtimestamp(out.now + action.backoff, UTC)
    out.actions.append(
        _build(
            ActionRequest,
            {
                "axon": ax.spec.name,
                "namespace": ax.spec.namespace,
                "sensor": run.sensor,
                "sensor_run_id": run.id,
                "generation": run.generation,
                "step": run.step,
                "index": index,
                "attempt": attempt,
                "kind": action.kind,
                "task": action.task,
                "params": dict(action.params),
                "not_before": not_before,
            },
        )
    )
    return _build(PlannedAction, {"kind": action.kind, "task": action.task, "step": run.step})


def _start_step(out: _Out, ax: _AxonState, sensor: _Sensor, run: _RunState) -> list[PlannedAction]:
    group = sensor.steps[run.step]
    run.actions = [_ActionState() for _ in group]
    return [_request(out, ax, run, index=i, action=a, attempt=1) for i, a in enumerate(group)]


# ---------------------------------------------------------------------------------------------
# Firing a sensor: conditions (AND), concurrency, maxRuns, then a new run


def _conditions_block(sensor: _Sensor, st: _SensorState) -> str | None:
    for cond in sensor.conditions:
        values = st.conditions.get(cond.name, {})
        verdict = cond.condition.evaluate(values)
        if verdict is True:
            continue
        if verdict is None:
            missing = sorted(k for k in cond.keys if k not in values)
            what = f"no value for {', '.join(missing)}" if missing else "value unknown"
            return f"condition {cond.name!r} is unknown ({what})"
        shown = ", ".join(f"{k}={_num(values[k])}" for k in sorted(cond.keys) if k in values)
        return f"condition {cond.name!r} is false ({cond.condition.text}; {shown})"
    return None


def _fire(
    out: _Out,
    ax: _AxonState,
    sensor: _Sensor,
    *,
    trigger: str | None,
    event_id: str,
    run_id: str,
    why: str,
    decided_by: str | None = None,
) -> None:
    """Try to start a run of `sensor`; record one decision either way (under `decided_by`,
    the event being stepped, when that is not the cause `event_id`)."""
    st = ax.sensor_state(sensor.name)
    fired_key = (ax.spec.key, sensor.name, event_id)
    decision_id = decided_by or event_id
    refused = _not_fired(out, ax, sensor, st, fired_key=fired_key, run_id=run_id)
    if refused is not None:
        out.decide(
            ax,
            decision_id,
            sensor.name,
            trigger,
            matched=True,
            fired=False,
            reason=f"{why}; {refused}",
        )
        return
    run, replaced = _new_run(out, ax, sensor, st, run_id=run_id, trigger=trigger, event_id=event_id)
    out.fired.add(fired_key)
    planned = _start_step(out, ax, sensor, run)
    out.decide(
        ax,
        decision_id,
        sensor.name,
        trigger,
        matched=True,
        fired=True,
        reason=f"{why}; fired: run started at step 0{replaced}",
        run_id=run_id,
        planned=planned,
    )


def _new_run(
    out: _Out,
    ax: _AxonState,
    sensor: _Sensor,
    st: _SensorState,
    *,
    run_id: str,
    trigger: str | None,
    event_id: str,
) -> tuple[_RunState, str]:
    """Start run `run_id` of `sensor` at step 0 (ending the active ones under concurrency
    Replace); the run, and what it replaced as text for the decision."""
    replaced = ""
    if st.active and sensor.concurrency == "Replace":
        old = list(st.active)
        for rid in old:
            out.end(ax, ax.runs[rid], "Failed", f"replaced by run {run_id}")
        replaced = f" (replaced run {', '.join(old)})"
    run = _RunState(
        id=run_id,
        sensor=sensor.name,
        trigger=trigger,
        event_id=event_id,
        generation=ax.generation,
        started=out.now,
        step=0,
        actions=[],
    )
    ax.runs[run_id] = run
    ax.run_changed(run_id)
    st.active[run_id] = None
    out.started.append(run_id)
    return run, replaced


def _not_fired(
    out: _Out,
    ax: _AxonState,
    sensor: _Sensor,
    st: _SensorState,
    *,
    fired_key: tuple[str, str, str],
    run_id: str,
) -> str | None:
    """Why the sensor does not fire now (None: it fires; a start is then counted for
    `maxRuns`)."""
    if fired_key in out.fired:
        return "not fired: the sensor already fired for this event"
    if run_id in ax.runs or run_id in ax.finished_index:
        return f"not fired: run {run_id} was already started for this event"
    blocked = _conditions_block(sensor, st)
    if blocked is not None:
        return f"not fired: {blocked}"
    if st.active and sensor.concurrency == "Forbid":
        first = next(iter(st.active))
        return f"not fired: run {first} is still active (concurrency Forbid)"
    if sensor.max_runs is not None:
        count, per = sensor.max_runs
        st.starts = [t for t in st.starts if t > out.now - per]
        if len(st.starts) >= count:
            return (
                f"not fired: maxRuns {count} per {_dur(per)} reached "
                f"(next allowed at {_when(st.starts[0] + per)})"
            )
        st.starts.append(out.now)
    return None
