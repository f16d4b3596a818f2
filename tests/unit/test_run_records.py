"""Sensor-run records: the pure merge of a run's decision, actions, reports and engine view."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events.model import ActionRequest, DecisionData, RunStepRecord, SensorRunRecord
from sensors.engine import EndedRun, RunAction, RunView
from sensors.records import merge_run_record, new_record

RUN = "run-1"
T0 = "2026-12-03T08:00:00.000000Z"
T1 = "2026-12-03T08:01:00.000000Z"


def _action(step: int, task: str, *, index: int = 0, attempt: int = 1) -> ActionRequest:
    return ActionRequest(
        axon="shop",
        sensor="retrain",
        sensor_run_id=RUN,
        step=step,
        index=index,
        attempt=attempt,
        kind="trainer",
        task=task,
    )


def _report(action: ActionRequest, phase: str, run_id: str) -> dict[str, object]:
    return {
        "step": action.step,
        "index": action.index,
        "attempt": action.attempt,
        "phase": phase,
        "run_id": run_id,
    }


def _decision(reason: str, *, fired: bool = True) -> DecisionData:
    return DecisionData(
        axon="shop",
        event_id="e1",
        sensor="retrain",
        trigger="low",
        matched=True,
        fired=fired,
        reason=reason,
        sensor_run_id=RUN,
    )


def _fresh() -> SensorRunRecord:
    return new_record(RUN, namespace="default", axon="shop", sensor="retrain", started=T0)


def test_a_run_that_starts_records_its_trigger_and_first_step() -> None:
    train = _action(0, "Train")
    record = merge_run_record(
        _fresh(), stamp=T0, decision=_decision("fired: run started"), actions=[train]
    )
    assert (record.phase, record.trigger, record.reason) == ("Running", "low", "fired: run started")
    assert record.steps == [
        RunStepRecord(0, 0, 1, "trainer", "Train", "Pending", None, train.idempotency_key)
    ]


def test_reports_fill_in_task_runs_of_their_own_attempt_only() -> None:
    first = _action(0, "Train")
    record = merge_run_record(_fresh(), stamp=T0, actions=[first])
    retry = _action(0, "Train", attempt=2)
    record = merge_run_record(record, stamp=T0, actions=[retry])
    late = merge_run_record(record, stamp=T0, reports=[_report(first, "Failed", "tr-1")])
    assert (late.steps[0].phase, late.steps[0].run_id) == ("Pending", None)  # a stale attempt
    got = merge_run_record(record, stamp=T0, reports=[_report(retry, "Succeeded", "tr-2")])
    assert (got.steps[0].attempt, got.steps[0].phase, got.steps[0].run_id) == (
        2,
        "Succeeded",
        "tr-2",
    )


def test_the_engines_view_of_a_running_run_sets_phases_and_replaces_retried_actions() -> None:
    record = merge_run_record(
        _fresh(),
        stamp=T0,
        actions=[_action(0, "Train")],
        reports=[_report(_action(0, "Train"), "Running", "tr-1")],
    )
    view = RunView(
        id=RUN,
        phase="Running",
        reason="",
        sensor="retrain",
        trigger="low",
        started=datetime(2026, 12, 3, 8, 0, 30, tzinfo=UTC),
        actions=(
            RunAction(0, 0, "trainer", "Train", None, "Succeeded"),
            RunAction(1, 0, "resourceExecutor", "Eval", 2, "Running"),
        ),
    )
    got = merge_run_record(record, stamp=T1, view=view)
    assert got.started == "2026-12-03T08:00:30.000000Z"
    assert [(s.index, s.task, s.attempt, s.phase, s.run_id) for s in got.steps] == [
        (0, "Train", 1, "Succeeded", "tr-1"),  # an earlier step keeps its task run
        (1, "Eval", 2, "Running", None),
    ]


@pytest.mark.parametrize("how", ["end", "view"])
def test_an_ended_run_says_how_and_when_once(how: str) -> None:
    record = merge_run_record(_fresh(), stamp=T0, actions=[_action(0, "Train")])
    end = EndedRun("default", "shop", "retrain", RUN, "Failed", "Train Failed")
    view = RunView(id=RUN, phase="Failed", reason="Train Failed")
    done = merge_run_record(
        record, stamp=T1, end=end if how == "end" else None, view=view if how == "view" else None
    )
    assert (done.phase, done.reason, done.finished) == ("Failed", "Train Failed", T1)
    again = merge_run_record(done, stamp="2026-12-03T09:00:00.000000Z", end=end)
    assert again.finished == T1


def test_the_previous_record_is_left_as_it_was() -> None:
    record = merge_run_record(_fresh(), stamp=T0, actions=[_action(0, "Train")])
    before = SensorRunRecord.from_json(record.to_json())
    merge_run_record(
        record,
        stamp=T1,
        decision=_decision("fired again", fired=False),
        reports=[_report(_action(0, "Train"), "Succeeded", "tr-1")],
        end=EndedRun("default", "shop", "retrain", RUN, "Succeeded", "done"),
    )
    assert record == before


def test_records_round_trip_and_refuse_what_is_not_one() -> None:
    record = merge_run_record(
        _fresh(), stamp=T0, decision=_decision("fired"), actions=[_action(0, "Train")]
    )
    assert SensorRunRecord.from_json(record.to_json()) == record
    for raw in (b"[]", b'{"id": "x"}', b"not json", b'{"id":"x","axon":"a","sensor":"s",'
                b'"started":"t","steps":[{"index":"zero"}]}'):  # fmt: skip
        with pytest.raises(ValueError, match="not a sensor-run record"):
            SensorRunRecord.from_json(raw)
