"""The public SDK: what task and model code imports from `ranvier.sdk`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from executors.serving import sdk as serving_sdk
from ranvier import sdk


def test_a_model_class_gauge_lands_in_its_servers_registry() -> None:
    registry = CollectorRegistry()
    sink = serving_sdk.MetricSink(registry, {"axon": "a", "model": "m", "version": "3"})
    token = serving_sdk.bind(sink)
    try:
        sdk.metrics.gauge("quickstart accuracy", 0.75)
        sdk.metrics.counter("tokens", 4)
    finally:
        serving_sdk.unbind(token)
    text = generate_latest(registry).decode()
    assert 'quickstart_accuracy{axon="a",model="m",version="3"} 0.75' in text
    assert 'tokens_total{axon="a",model="m",version="3"} 4.0' in text


def test_a_trial_result_goes_under_the_loss_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tmp_path))
    monkeypatch.setenv("LOSS_METRIC", "val_mse")
    sdk.report_metrics(train_mse=0.5)
    path = sdk.publish_result(0.25)
    assert json.loads(path.read_text()) == {"train_mse": 0.5, "val_mse": 0.25}


def test_hpo_params_decode_and_refuse_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_PARAMS", raising=False)
    assert sdk.hpo_params() == {}
    conf = {"config-id": "0_0_1", "budget": 3, "hpo-conf": {"lr": 0.1}}
    monkeypatch.setenv("HPO_PARAMS", base64.b64encode(json.dumps(conf).encode()).decode())
    assert sdk.hpo_params() == conf
    monkeypatch.setenv("HPO_PARAMS", "not base64!")
    with pytest.raises(sdk.MetricsError, match="HPO_PARAMS is not base64 JSON"):
        sdk.hpo_params()
