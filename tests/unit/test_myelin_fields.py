"""Myelin's fields each have a meaning once loaded (tests/data/axons/valid/16-*.yaml)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from events.model import AxonData
from sensors import engine
from sensors.loader import load_axon

AXON = Path(__file__).resolve().parents[1] / "data" / "axons" / "valid" / "16-myelin-fields.yaml"


def test_myelin_fields_load_with_their_meaning() -> None:
    axon = load_axon(AXON)
    spark = axon.spec.tasks[0]
    assert spark.spark is not None
    spec = spark.spark.spark_spec
    assert spec is not None
    assert spec.application == "gs://bucket/count-words.jar"
    assert spec.all_arguments == ["input", "--sample"]
    assert (spec.properties_config_map, spec.deploy_mode) == ("spark-settings", "cluster")
    build = spark.body.image_build
    assert build is not None
    assert build.check_image_exists is True
    assert build.volume_mounts[0]["mountPath"] == "/jobs/count-words/keys"
    train = axon.spec.tasks[1].train
    assert train is not None
    assert train.hp_tuning is not None
    kernel = train.hp_tuning.params[0].categorical
    assert kernel is not None
    assert kernel.default_value == "l2"
    [_, gate] = axon.spec.sensors
    assert gate.conditions[0].task == "TrainRegressor"


def test_a_steps_env_reaches_the_action_request() -> None:
    axon = load_axon(AXON)
    state = engine.EngineState()
    submitted = AxonData(axon=axon.metadata.name, generation=1, action="submitted")
    result = engine.submit(
        state,
        axon,
        1,
        submitted.to_event(source="test", id="s1"),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    [first] = [a for a in result.actions if a.task == "CountWords"]
    assert first.params["env"] == [{"name": "REGION", "value": "eu"}]
