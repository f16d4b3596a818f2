"""The public SDK: what task and model code imports from `ranvier.sdk` (`hpo_params` is
tested with the study, in test_hpo.py)."""

from __future__ import annotations

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
