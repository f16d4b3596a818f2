"""Spec generations, deletion, and the persisted state (canonical JSON per Axon)."""

from __future__ import annotations

import json

import pytest

from events.model import LifecycleData
from sensors import engine
from tests.unit.engine_kit import AXON, Rig, at, fired, make_axon, only, submit_event

GEN1 = """
- name: Watch
  triggers:
    - {name: low, type: Alert, condition: "{{acc}} < 0.9", for: 10s}
    - {name: poke, type: Rest}
  tasks:
    - trainer: {task: Train}
- name: Other
  triggers:
    - {name: slow, type: Alert, condition: "{{latency}} > 2", for: 10s}
  tasks:
    - resourceExecutor: {task: Eval}
    - resourceExecutor: {task: Deploy}
"""


def _pending(rig: Rig) -> None:
    rig.metric("acc", 0.5, 0)
    rig.metric("latency", 5, 0)


@pytest.mark.parametrize(
    ("old", "new", "watch_fires", "other_fires", "watch_reason"),
    [
        pytest.param(GEN1, GEN1, True, True, "unchanged, state kept", id="unchanged"),
        pytest.param(
            GEN1,
            GEN1.replace("< 0.9", "< 0.8"),
            False,
            True,
            "trigger 'low' changed",
            id="trigger-changed",
        ),
        pytest.param(
            GEN1,
            GEN1.replace("for: 10s}\n    - {name: poke", "for: 20s}\n    - {name: poke"),
            False,
            True,
            "trigger 'low' changed",
            id="for-changed",
        ),
        pytest.param(
            GEN1,
            GEN1.replace("{name: poke, type: Rest}", "{name: poked, type: Rest}"),
            True,
            True,
            "trigger 'poked' added; trigger 'poke' removed",
            id="other-trigger-changed-keeps-alert",
        ),
    ],
)
def test_a_new_generation_keeps_unchanged_state_and_resets_what_changed(
    old: str, new: str, watch_fires: bool, other_fires: bool, watch_reason: str
) -> None:
    rig = Rig(make_axon(old))
    _pending(rig)
    result = engine.submit(rig.state, make_axon(new), 2, submit_event(2, "submit-2"), at(5))
    assert watch_reason in only(result, "Watch").reason
    assert only(result, "Other").reason == "generation 2: unchanged, state kept"
    # whatever kept its pending episode fires at 10s; a reset trigger starts from scratch
    got = fired(rig.tick(10))
    assert (("Watch", "low") in got) is watch_fires
    assert (("Other", "slow") in got) is other_fires


def test_changed_tasks_end_the_active_run_and_keep_triggers() -> None:
    rig = Rig(make_axon(GEN1))
    [action] = rig.rest("Watch", 0).actions
    new = GEN1.replace("trainer: {task: Train}", "resourceExecutor: {task: Prep}")
    result = engine.submit(rig.state, make_axon(new), 2, submit_event(2, "submit-2"), at(1))
    reason = only(result, "Watch").reason
    assert f"tasks changed (ended run {action.sensor_run_id})" in reason
    late = only(rig.action_done(action, "Succeeded", 2), "Watch")
    assert "already finished (Failed: the sensor's tasks changed in generation 2)" in late.reason
    assert fired(rig.rest("Watch", 3)) == [("Watch", "poke")]  # Forbid no longer blocks


def test_unchanged_tasks_keep_the_active_run_going() -> None:
    rig = Rig(make_axon(GEN1))
    assert rig.metric("latency", 5, 0).actions == ()
    [eval_] = rig.tick(10).actions
    engine.submit(rig.state, make_axon(GEN1), 2, submit_event(2, "submit-2"), at(11))
    [deploy] = rig.action_done(eval_, "Succeeded", 12).actions
    assert (deploy.task, deploy.generation) == ("Deploy", 1)


def test_a_removed_sensor_is_recorded_and_its_runs_end() -> None:
    rig = Rig(make_axon(GEN1))
    rig.rest("Watch", 0)
    only_other = GEN1.split("- name: Other", maxsplit=1)[0]
    result = engine.submit(rig.state, make_axon(only_other), 2, submit_event(2, "s2"), at(1))
    assert [d.sensor for d in result.decisions] == ["Watch", "Other"]
    assert "sensor removed" in result.decisions[1].reason
    assert rig.metric("latency", 5, 2).decisions == ()


def test_runs_of_a_removed_sensor_end_and_are_reported() -> None:
    rig = Rig(make_axon(GEN1))
    [train] = rig.rest("Watch", 0).actions
    only_other = "- name: Other" + GEN1.split("- name: Other", maxsplit=1)[1]
    result = engine.submit(rig.state, make_axon(only_other), 2, submit_event(2, "s2"), at(1))
    assert [(e.sensor, e.run_id, e.phase) for e in result.ended] == [
        ("Watch", train.sensor_run_id, "Failed")
    ]
    assert result.ended[0].reason == "sensor removed in generation 2"


def test_stale_generations_are_ignored() -> None:
    rig = Rig(make_axon(GEN1))
    engine.submit(rig.state, rig.axon, 3, submit_event(3, "s3"), at(1))
    result = engine.submit(rig.state, rig.axon, 2, submit_event(2, "s2"), at(2))
    assert result.ignored is not None
    assert "not newer than the applied generation 3" in result.ignored
    assert rig.state.generation("default", AXON) == 3


@pytest.mark.parametrize("via", ["submit", "step"])
def test_deleting_an_axon_drops_its_state(via: str) -> None:
    rig = Rig(make_axon(GEN1))
    [action] = rig.rest("Watch", 0).actions
    run_id = action.sensor_run_id
    delete = submit_event(1, "del-1", action="deleted")
    if via == "submit":
        result = engine.submit(rig.state, rig.axon, 1, delete, at(1))
    else:
        result = engine.step(rig.state, delete, at(1))
    assert result.deleted == ("default/demo",)
    assert [d.sensor for d in result.decisions] == ["Watch", "Other"]
    # One path whichever way it comes: the same reasons, and the active run ends with it.
    assert [d.reason for d in result.decisions] == [
        "Axon deleted: state of the sensor dropped (1 active run(s) ended)",
        "Axon deleted: state of the sensor dropped (0 active run(s) ended)",
    ]
    [ended] = result.ended
    assert (ended.sensor, ended.phase, ended.reason) == ("Watch", "Failed", engine.AXON_DELETED)
    assert ended.run_id == run_id
    assert rig.state.keys() == ()
    assert rig.rest("Watch", 2).decisions == ()


def test_the_axon_an_event_is_about() -> None:
    rest = submit_event(1, "e1")
    assert engine.event_axon(rest) == "default/demo"
    other = rest.model_copy(update={"data": {**rest.data, "namespace": "team-a"}})
    assert engine.event_axon(other) == "team-a/demo"
    nameless = rest.model_copy(update={"data": {"generation": 1}})
    assert engine.event_axon(nameless) is None
    assert engine.step(engine.EngineState(), nameless, at(0)).ignored == (
        "event e1 (ranvier.axon) names no Axon"
    )


def test_dump_is_canonical_json_and_load_restores_behaviour() -> None:
    rig = Rig(make_axon(GEN1))
    _pending(rig)
    [action] = rig.rest("Watch", 1).actions
    rig.lifecycle("Train", "Succeeded", 2, run_id="other")
    dumped = rig.state.dump_axon(rig.axon)
    assert dumped == json.dumps(json.loads(dumped), sort_keys=True, separators=(",", ":")).encode()
    restored = engine.EngineState()
    restored.load_axon(rig.axon, dumped)
    assert restored.dump_axon(rig.axon) == dumped
    copy = Rig(rig.axon)
    copy.state, copy.count = restored, rig.count
    for r in (rig, copy):
        assert fired(r.tick(10)) == [("Other", "slow")]
        assert only(r.action_done(action, "Succeeded", 11), "Watch").reason.endswith(
            "run Succeeded"
        )
    assert rig.state.dump_axon(rig.axon) == copy.state.dump_axon(rig.axon)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d | {"spec": "0" * 24}, "was written for a different spec"),
        (lambda d: d | {"version": 99}, "has version 99"),
        (lambda d: {k: v for k, v in d.items() if k != "runs"}, "is unreadable"),
    ],
)
def test_loading_a_state_that_does_not_fit_is_an_error(mutate: object, message: str) -> None:
    rig = Rig(make_axon(GEN1))
    data = json.loads(rig.state.dump_axon(rig.axon))
    bad = json.dumps(mutate(data)).encode()  # type: ignore[operator]  # the table holds lambdas
    with pytest.raises(engine.EngineError, match=message):
        engine.EngineState().load_axon(rig.axon, bad)
    with pytest.raises(engine.EngineError, match="unreadable"):
        engine.EngineState().load_axon(rig.axon, b"not json")


def test_lifecycle_edges_survive_a_new_generation() -> None:
    rig = Rig(
        make_axon("""
        - name: OnTrain
          triggers:
            - {name: t, type: Lifecycle, task: Train, condition: Succeeded}
          concurrency: Allow
          tasks:
            - resourceExecutor: {task: Deploy}
        """)
    )
    edge = LifecycleData(axon=AXON, task="Train", run_id="r1", phase="Succeeded")
    assert fired(rig.feed(edge.to_event(source="t", id="e1", time=at(0)), 0))
    engine.submit(rig.state, rig.axon, 2, submit_event(2, "s2"), at(1))
    assert not fired(rig.feed(edge.to_event(source="t", id="e2", time=at(2)), 2))
