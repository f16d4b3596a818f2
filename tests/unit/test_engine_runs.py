"""Sensor runs: steps in order, parallel groups, retries with backoff, concurrency, maxRuns."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sensors import engine
from tests.unit.engine_kit import AXON, Rig, at, fired, make_axon, only

PIPELINE = """
- name: Pipe
  triggers:
    - {name: poke, type: Rest}
  concurrency: Allow
  tasks:
    - resourceExecutor: {task: Prep}
    - - trainer: {task: Train}
      - resourceExecutor: {task: Eval}
    - resourceExecutor: {task: Deploy, retry: {limit: 2, backoff: 30s}}
"""


def test_steps_run_in_order_and_a_parallel_step_waits_for_all() -> None:
    rig = Rig(make_axon(PIPELINE))
    start = rig.rest("Pipe", 0)
    [prep] = start.actions
    assert (prep.step, prep.index, prep.task) == (0, 0, "Prep")
    assert rig.action_done(prep, "Running", 1).actions == ()
    group = rig.action_done(prep, "Succeeded", 2)
    assert [(a.step, a.index, a.kind, a.task) for a in group.actions] == [
        (1, 0, "trainer", "Train"),
        (1, 1, "resourceExecutor", "Eval"),
    ]
    decision = only(group, "Pipe")
    assert decision.fired
    assert [(p.kind, p.task, p.step) for p in decision.actions] == [
        ("trainer", "Train", 1),
        ("resourceExecutor", "Eval", 1),
    ]
    train, evaluate = group.actions
    waiting = rig.action_done(evaluate, "Succeeded", 3)
    assert waiting.actions == ()
    assert "waiting for 1 more action(s) of step 1" in only(waiting, "Pipe").reason
    deploy = rig.action_done(train, "Succeeded", 4)
    assert [(a.step, a.task) for a in deploy.actions] == [(2, "Deploy")]
    done = rig.action_done(deploy.actions[0], "Succeeded", 5)
    assert done.actions == ()
    assert only(done, "Pipe").reason.endswith("run Succeeded")
    late = only(rig.action_done(train, "Succeeded", 6), "Pipe")
    assert "already finished (Succeeded" in late.reason


def test_action_keys_follow_the_design() -> None:
    rig = Rig(make_axon(PIPELINE))
    [prep] = rig.rest("Pipe").actions
    train, evaluate = rig.action_done(prep, "Succeeded").actions
    run = prep.sensor_run_id
    assert prep.idempotency_key == f"demo/Pipe/{run}/0/1"
    assert train.idempotency_key == f"demo/Pipe/{run}/1/1"
    assert evaluate.idempotency_key == f"demo/Pipe/{run}/1.1/1"


def _to_deploy(rig: Rig) -> engine.StepResult:
    [prep] = rig.rest("Pipe", 0).actions
    train, evaluate = rig.action_done(prep, "Succeeded", 1).actions
    rig.action_done(evaluate, "Succeeded", 2)
    return rig.action_done(train, "Succeeded", 3)


def test_a_failed_action_is_retried_with_backoff_up_to_its_limit() -> None:
    rig = Rig(make_axon(PIPELINE))
    [first] = _to_deploy(rig).actions
    assert (first.attempt, first.not_before) == (1, None)
    retry = rig.action_done(first, "Failed", 10)
    [second] = retry.actions
    assert (second.step, second.attempt) == (2, 2)
    assert second.not_before == at(10) + timedelta(seconds=30)
    assert second.idempotency_key.endswith("/2/2")
    assert "attempt 2 of 3 after 30s backoff" in only(retry, "Pipe").reason
    stale = only(rig.action_done(first, "Succeeded", 11), "Pipe")
    assert "not the current attempt (2)" in stale.reason
    [third] = rig.action_done(second, "Failed", 50).actions
    assert third.attempt == 3
    end = rig.action_done(third, "Failed", 90, message="exit 3")
    assert end.actions == ()
    assert only(end, "Pipe").reason.endswith("attempt 3 Failed: exit 3; run Failed")
    assert (
        "already finished (Failed" in only(rig.action_done(third, "Succeeded", 91), "Pipe").reason
    )


def test_a_failure_without_retry_ends_the_run_and_later_steps_never_start() -> None:
    rig = Rig(make_axon(PIPELINE))
    [prep] = rig.rest("Pipe").actions
    end = rig.action_done(prep, "Failed", 1)
    assert end.actions == ()
    assert only(end, "Pipe").reason.endswith("run Failed")
    assert not only(end, "Pipe").fired


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"sensor_run_id": "no-such-run", "sensor": "Pipe", "step": 0},
            "no active run no-such-run",
        ),
        ({"step": 1}, "event for step 1, the run is at step 0"),
        ({"index": 4}, "step 0 has no action 4"),
        ({"attempt": 2}, "not the current attempt (1)"),
    ],
)
def test_lifecycle_events_that_do_not_fit_the_run_are_ignored_with_a_reason(
    fields: dict[str, Any], reason: str
) -> None:
    rig = Rig(make_axon(PIPELINE))
    [prep] = rig.rest("Pipe").actions
    base: dict[str, Any] = {
        "sensor": "Pipe",
        "sensor_run_id": prep.sensor_run_id,
        "step": 0,
        "index": 0,
        "attempt": 1,
    }
    result = rig.lifecycle("Prep", "Succeeded", run_id="x", **(base | fields))
    assert result.actions == ()
    decision = only(result, "Pipe")
    assert not decision.fired
    assert reason in decision.reason


def _concurrency(policy: str, max_runs: str = "") -> str:
    return f"""
    - name: S
      triggers:
        - {{name: poke, type: Rest}}
      concurrency: {policy}
      {max_runs}
      tasks:
        - resourceExecutor: {{task: Prep}}
    """


@pytest.mark.parametrize(
    ("policy", "second_fires", "reason"),
    [
        ("Forbid", False, "is still active (concurrency Forbid)"),
        ("Allow", True, "fired: run started at step 0"),
        ("Replace", True, "(replaced run"),
    ],
)
def test_concurrency_policies(policy: str, second_fires: bool, reason: str) -> None:
    rig = Rig(make_axon(_concurrency(policy)))
    [first] = rig.rest("S", 0).actions
    second = rig.rest("S", 1)
    assert only(second, "S").fired is second_fires
    assert reason in only(second, "S").reason
    late = only(rig.action_done(first, "Succeeded", 2), "S")
    if policy == "Replace":
        assert f"already finished (Failed: replaced by run {second.actions[0].sensor_run_id})" in (
            late.reason
        )
    else:
        assert late.reason.endswith("run Succeeded")


def test_forbid_allows_a_new_run_once_the_active_one_finished() -> None:
    rig = Rig(make_axon(_concurrency("Forbid")))
    [first] = rig.rest("S", 0).actions
    rig.action_done(first, "Succeeded", 1)
    assert fired(rig.rest("S", 2)) == [("S", "poke")]


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0, 10, 20], [True, True, False]),
        ([0, 10, 61], [True, True, True]),
        ([0, 10, 59, 60, 70], [True, True, False, True, True]),
        ([0, 30, 60, 89, 91], [True, True, True, False, True]),
    ],
)
def test_max_runs_bounds_run_starts_in_any_window(times: list[int], expected: list[bool]) -> None:
    rig = Rig(make_axon(_concurrency("Allow", "maxRuns: {count: 2, per: 1m}")))
    got = []
    for t in times:
        decision = only(rig.rest("S", t), "S")
        got.append(decision.fired)
        if not decision.fired:
            assert "maxRuns 2 per 1m reached (next allowed at" in decision.reason
    assert got == expected


def test_a_skipped_firing_does_not_count_towards_max_runs() -> None:
    rig = Rig(make_axon(_concurrency("Forbid", "maxRuns: {count: 2, per: 1h}")))
    [first] = rig.rest("S", 0).actions
    assert not only(rig.rest("S", 1), "S").fired  # Forbid: skipped, not started
    rig.action_done(first, "Succeeded", 2)
    assert only(rig.rest("S", 3), "S").fired  # second start in the window: allowed


def test_the_run_view_shows_every_step_up_to_the_current_one_then_the_outcome() -> None:
    rig = Rig(make_axon(PIPELINE))
    [prep] = rig.rest("Pipe", 0).actions
    key, rid = engine.axon_key("default", "demo"), prep.sensor_run_id
    assert rig.state.run(key, "no-such-run") is None
    assert rig.state.run("default/nobody", rid) is None
    view = rig.state.run(key, rid)
    assert view is not None
    assert (view.phase, view.sensor, view.trigger, view.started) == (
        "Running",
        "Pipe",
        "poke",
        at(0),
    )
    assert [(a.step, a.index, a.task, a.attempt, a.phase) for a in view.actions] == [
        (0, 0, "Prep", 1, "Pending")
    ]
    train, evaluate = rig.action_done(prep, "Succeeded", 1).actions
    rig.action_done(evaluate, "Running", 2)
    view = rig.state.run(key, rid)
    assert view is not None
    assert [(a.step, a.index, a.kind, a.attempt, a.phase) for a in view.actions] == [
        (0, 0, "resourceExecutor", None, "Succeeded"),
        (1, 0, "trainer", 1, "Pending"),
        (1, 1, "resourceExecutor", 1, "Running"),
    ]
    rig.action_done(train, "Failed", 3)
    view = rig.state.run(key, rid)
    assert view is not None
    assert (view.phase, view.sensor, view.actions) == ("Failed", None, ())
    assert view.reason.startswith("step 1 action 0 (trainer Train) attempt 1 Failed")


def test_step_results_name_the_runs_they_started() -> None:
    rig = Rig(make_axon(PIPELINE))
    start = rig.rest("Pipe", 0)
    [prep] = start.actions
    assert start.started == (prep.sensor_run_id,)
    assert rig.action_done(prep, "Succeeded", 1).started == ()


def test_every_way_a_run_ends_is_in_the_result() -> None:
    """`StepResult.ended` names the runs a call ended, also those no decision names (a run
    replaced by another), so the runtime can update their records."""
    rig = Rig(make_axon(_concurrency("Replace")))
    [first] = rig.rest("S", 0).actions
    second = rig.rest("S", 1)
    [replacement] = second.actions
    [ended] = second.ended
    assert (ended.axon, ended.sensor, ended.run_id) == (AXON, "S", first.sensor_run_id)
    assert (ended.phase, ended.reason) == ("Failed", f"replaced by run {replacement.sensor_run_id}")
    assert [d.sensor_run_id for d in second.decisions] == [replacement.sensor_run_id]
    done = rig.action_done(replacement, "Succeeded", 2)
    assert [(e.run_id, e.phase) for e in done.ended] == [(replacement.sensor_run_id, "Succeeded")]
    started = rig.rest("S", 3)  # nothing active any more: nothing replaced
    assert started.ended == ()
    [third] = started.actions
    failed = rig.action_done(third, "Failed", 4)
    assert [(e.run_id, e.phase) for e in failed.ended] == [(third.sensor_run_id, "Failed")]
    assert "Failed" in failed.ended[0].reason
