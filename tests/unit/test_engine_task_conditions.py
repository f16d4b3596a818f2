"""Metric conditions with `task`: they read what that task's latest Succeeded run reported."""

from __future__ import annotations

from tests.unit.engine_kit import Rig, fired, make_axon, only

GATED = """
- name: DeployIfGood
  triggers:
    - {name: trained, type: Lifecycle, task: Train, condition: Succeeded}
    - {name: poke, type: Rest}
  conditions:
    - {name: accurate, type: Metric, condition: "{{train_accuracy}} > 0.95", task: Train}
  concurrency: Allow
  tasks:
    - resourceExecutor: {task: Deploy}
"""


def test_the_run_that_fires_the_lifecycle_trigger_also_answers_the_condition() -> None:
    rig = Rig(make_axon(GATED))
    good = rig.lifecycle(
        "Train", "Succeeded", run_id="r1", outputs={"metrics": {"train_accuracy": 0.97}}
    )
    assert fired(good) == [("DeployIfGood", "trained")]
    assert len(good.actions) == 1
    recorded = [d for d in good.decisions if not d.fired]
    assert "recorded from task Train run r1 (train_accuracy=0.97)" in recorded[0].reason


def test_a_worse_later_run_blocks_the_firing_with_its_value() -> None:
    rig = Rig(make_axon(GATED))
    rig.lifecycle("Train", "Succeeded", run_id="r1", outputs={"metrics": {"train_accuracy": 0.97}})
    bad = rig.lifecycle(
        "Train", "Succeeded", run_id="r2", outputs={"metrics": {"train_accuracy": 0.5}}
    )
    assert fired(bad) == []
    decision = next(d for d in bad.decisions if d.trigger == "trained")
    assert "condition 'accurate' is false" in decision.reason
    assert "train_accuracy=0.5" in decision.reason
    # a Rest firing later still reads the latest run's value
    assert "is false" in only(rig.rest("DeployIfGood", trigger="poke"), "DeployIfGood").reason


def test_a_run_that_reported_no_such_metric_leaves_the_condition_unknown() -> None:
    rig = Rig(make_axon(GATED))
    rig.lifecycle("Train", "Succeeded", run_id="r1", outputs={"metrics": {"train_accuracy": 0.99}})
    result = rig.lifecycle("Train", "Succeeded", run_id="r2", outputs={"metrics": {"loss": 0.1}})
    assert fired(result) == []
    decision = next(d for d in result.decisions if d.trigger == "trained")
    assert "condition 'accurate' is unknown" in decision.reason


def test_a_failed_run_and_metric_events_do_not_change_a_task_condition() -> None:
    rig = Rig(make_axon(GATED))
    rig.lifecycle("Train", "Succeeded", run_id="r1", outputs={"metrics": {"train_accuracy": 0.99}})
    rig.lifecycle("Train", "Failed", run_id="r2", outputs={"metrics": {"train_accuracy": 0.1}})
    assert rig.metric("train_accuracy", 0.1).decisions == ()
    assert fired(rig.rest("DeployIfGood", trigger="poke")) == [("DeployIfGood", "poke")]


def test_without_task_the_condition_still_reads_metric_events() -> None:
    rig = Rig(make_axon(GATED.replace(", task: Train}", "}")))
    rig.lifecycle("Train", "Succeeded", run_id="r1", outputs={"metrics": {"train_accuracy": 0.99}})
    assert "unknown" in only(rig.rest("DeployIfGood", trigger="poke"), "DeployIfGood").reason
    rig.metric("train_accuracy", 0.99)
    assert fired(rig.rest("DeployIfGood", trigger="poke")) == [("DeployIfGood", "poke")]
