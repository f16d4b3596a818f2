"""Pure parts of `ranvier up` and the CLI: goals, progress lines, task-run records, errors."""

from __future__ import annotations

from typing import Any

import pytest

from events.errors import RanvierError
from events.model import ActionRequest, LifecycleData
from executors.runner import TaskRun, claim_key, lifecycle_event_id
from ranvier.app import check_goal
from ranvier.cli import error_line
from ranvier.commands.status import progress_lines


def status(runs: list[dict[str, Any]], tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": "a",
        "namespace": "default",
        "generation": 1,
        "sensors": [{"name": "s", "runs": runs}],
        "tasks": tasks or [],
        "models": [],
        "deployments": [],
    }


def run(phase: str, reason: str = "") -> dict[str, Any]:
    return {"id": f"r-{phase}", "phase": phase, "trigger": None, "reason": reason, "steps": []}


@pytest.mark.parametrize(
    ("runs", "idle", "reached", "failed"),
    [
        ([], True, False, None),  # nothing has run yet: not succeeded
        ([run("Running")], True, False, None),
        ([run("Succeeded")], False, False, None),  # the engine may still fire another sensor
        ([run("Succeeded")], True, True, None),
        ([run("Succeeded"), run("Failed", "step 0 Failed: boom")], True, False, "boom"),
        ([run("Failed", "x")], False, False, "x"),  # a failure is final even while busy
    ],
)
def test_until_succeeded(
    runs: list[dict[str, Any]], idle: bool, reached: bool, failed: str | None
) -> None:
    check = check_goal("succeeded", status(runs), idle)
    assert check.reached is reached
    if failed is None:
        assert check.failed is None
    else:
        assert check.failed is not None
        assert failed in check.failed


def test_until_deployed_needs_a_succeeded_deployer_run() -> None:
    deploy = {"name": "web", "kind": "deployer", "runs": [{"id": "d", "phase": "Running"}]}
    assert not check_goal("deployed", status([run("Running")], [deploy]), False).reached
    deploy["runs"] = [{"id": "d", "phase": "Succeeded"}]
    assert check_goal("deployed", status([run("Running")], [deploy]), False).reached
    settled = check_goal("deployed", status([run("Succeeded")]), True)
    assert not settled.reached
    assert settled.failed == "idle, and no deployer step succeeded"


def test_until_idle_waits_for_active_task_runs() -> None:
    busy = {"name": "t", "kind": "container", "runs": [{"id": "x", "phase": "Running"}]}
    assert not check_goal("idle", status([], [busy]), True).reached
    assert check_goal("idle", status([]), True).reached
    assert not check_goal("idle", status([]), False).reached


def test_progress_lines_change_when_a_phase_changes() -> None:
    task_run: dict[str, Any] = {"id": "01ABCDEFGHJKMNPQ", "phase": "Running"}
    task = {"name": "T", "kind": "train", "runs": [task_run]}
    before = progress_lines(status([run("Running")], [task]))
    task_run.update(phase="Succeeded", version=2)
    after = progress_lines(status([run("Running")], [task]))
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {"t/01ABCDEFGHJKMNPQ"}
    assert after["t/01ABCDEFGHJKMNPQ"] == "task T run GHJKMNPQ Succeeded version 2"


def test_task_run_record_follows_lifecycle_and_round_trips() -> None:
    req = ActionRequest(
        axon="a", sensor="s", sensor_run_id="r", step=1, kind="trainer", task="T", attempt=2
    )
    record = TaskRun.new(req, "RUN", "exec-1")
    assert record.lifecycle().action_key == req.idempotency_key
    base = record.lifecycle()
    record.apply(
        base.model_copy(update={"phase": "Running", "outputs": {"log": "/l", "version": 3}})
    )
    assert (record.phase, record.version, record.log_path) == ("Running", 3, "/l")
    assert record.started is not None
    assert record.finished is None
    record.apply(base.model_copy(update={"phase": "Failed", "message": "m", "exit_code": 1}))
    again = TaskRun.from_json(record.to_json())
    assert again == record
    replayed = again.lifecycle()
    assert isinstance(replayed, LifecycleData)
    assert (replayed.phase, replayed.message, replayed.attempt) == ("Failed", "m", 2)


def test_claim_keys_are_one_safe_token_per_action() -> None:
    a, b = claim_key("ax/s/r/0/1"), claim_key("ax/s/r/0/2")
    assert a != b
    assert a.startswith("claim.")
    assert len(a.split(".")) == 2
    assert lifecycle_event_id("RUN", "Running") != lifecycle_event_id("RUN", "Failed")


def test_task_run_from_garbage_is_a_ranvier_error() -> None:
    with pytest.raises(RanvierError, match="corrupt task-run record"):
        TaskRun.from_json(b"[1]")


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            "axon.yaml:41:13: error: sensors[1]: no task",
            "axon.yaml:41:13: error: sensors[1]: no task",
        ),
        ("axon.yaml: error: empty file", "axon.yaml: error: empty file"),
        ("cannot reach a NATS server", "error: cannot reach a NATS server"),
        ("the error: is elsewhere", "error: the error: is elsewhere"),
    ],
)
def test_error_line_never_doubles_the_prefix(message: str, line: str) -> None:
    assert error_line(RanvierError(message)) == line
