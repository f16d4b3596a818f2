"""Sensor-run records: what the engine's view of a run and a batch's events make of the record.

Pure: the runtime (`sensors.runtime`) reads the previous record and writes the result; this
module only merges. A record is the engine's view of the run (`engine.RunView`: phase, trigger,
every step up to the current one with its actions' attempts and phases) merged with what only
the record holds: the idempotency key of each action and the task run id the executor reported
for it. So the previous record is needed for a run not started in the batch; without it (after
a restart, if it cannot be read) the steps the engine knows of are all there, only their task
run ids would be missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from events.model import ActionRequest, DecisionData, RunStepRecord, SensorRunRecord, format_time
from sensors.engine import EndedRun, RunView


def new_record(
    run_id: str, *, namespace: str, axon: str, sensor: str, started: str
) -> SensorRunRecord:
    """The record of a run nothing was recorded for yet."""
    return SensorRunRecord(
        id=run_id, axon=axon, namespace=namespace, sensor=sensor, started=started
    )


def merge_run_record(
    previous: SensorRunRecord,
    *,
    stamp: str,
    decision: DecisionData | None = None,
    actions: Iterable[ActionRequest] = (),
    reports: Iterable[Mapping[str, Any]] = (),
    view: RunView | None = None,
    end: EndedRun | None = None,
) -> SensorRunRecord:
    """The record after one batch: `previous` (left unchanged) updated with the run's latest
    decision, the actions requested for it, the executors' lifecycle reports on them, and the
    engine's view of the run (while it runs) or how it ended (`end`, else a finished `view`).

    `stamp` is the batch's time: when the record shows the run finished, if it just did.
    """
    record = dataclasses.replace(previous, steps=[dataclasses.replace(s) for s in previous.steps])
    if decision is not None:
        record.reason = decision.reason
        if decision.fired and decision.trigger is not None and not record.steps:
            record.trigger = decision.trigger
    steps = {(s.index, s.action): s for s in record.steps}
    for action in actions:
        steps[(action.step, action.index)] = RunStepRecord(
            index=action.step,
            action=action.index,
            attempt=action.attempt,
            kind=action.kind,
            task=action.task,
            key=action.idempotency_key,
        )
    for report in reports:
        entry = steps.get((report.get("step", 0), report.get("index", 0)))
        if entry is not None and entry.attempt == report.get("attempt", 1):
            entry.phase = str(report["phase"])
            entry.run_id = str(report["run_id"])
    if view is not None and view.phase == "Running":
        record.phase = "Running"
        record.trigger = view.trigger
        if view.started is not None:
            record.started = format_time(view.started)
        for act in view.actions:
            entry = steps.get((act.step, act.index))
            if entry is None or (act.attempt is not None and entry.attempt != act.attempt):
                entry = steps[(act.step, act.index)] = RunStepRecord(
                    index=act.step,
                    action=act.index,
                    attempt=act.attempt,
                    kind=act.kind,
                    task=act.task,
                )
            entry.phase = act.phase
    elif (done := end or view) is not None:  # ended (the batch says how, if it did)
        record.phase = done.phase
        record.reason = done.reason
        record.finished = record.finished or stamp
    record.steps = [steps[k] for k in sorted(steps)]
    return record


__all__ = ["merge_run_record", "new_record"]
