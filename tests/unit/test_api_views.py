"""The API's pure views: phases, Myelin's shape, Alert thresholds and series, the trace chain."""

from __future__ import annotations

from typing import Any

import pytest

from ranvier.api import views
from ranvier.settings import is_loopback
from sensors.loader import load_axon_text

AXON = load_axon_text(
    """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: m}
spec:
  tasks:
    - {name: Train, train: {command: [python3, t.py], lossMetric: loss}}
    - {name: Serve, deploy: {model: M}}
  sensors:
    - name: Retrain
      triggers:
        - {name: low, type: Alert, condition: "{{acc}} < 0.9"}
      tasks:
        - trainer: {task: Train}
    - name: Deploy
      triggers:
        - {name: trained, type: Lifecycle, task: Train, condition: Succeeded}
      tasks:
        - deployer:
            name: m
            models:
              - name: r
                backendModels: [{name: r, trainer: Train, deployer: Serve}]
""",
    "m.yaml",
)


def _status(**overrides: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": "m",
        "namespace": "default",
        "generation": 1,
        "deleted": False,
        "sensors": [
            {
                "name": "Retrain",
                "runs": [
                    {
                        "id": "r1",
                        "phase": "Succeeded",
                        "trigger": "low",
                        "started": "2026-01-01T00:00:10Z",
                        "finished": "2026-01-01T00:00:20Z",
                        "reason": "",
                        "steps": [{"index": 0, "kind": "trainer", "task": "Train", "run_id": "t1"}],
                    }
                ],
            },
            {
                "name": "Deploy",
                "runs": [
                    {
                        "id": "r2",
                        "phase": "Succeeded",
                        "trigger": "trained",
                        "started": "2026-01-01T00:00:21Z",
                        "finished": "2026-01-01T00:00:30Z",
                        "reason": "",
                        "steps": [{"index": 0, "kind": "deployer", "task": "m", "run_id": "d1"}],
                    }
                ],
            },
        ],
        "tasks": [
            {
                "name": "Train",
                "kind": "train",
                "runs": [
                    {
                        "id": "t1",
                        "phase": "Succeeded",
                        "started": "2026-01-01T00:00:11Z",
                        "finished": "2026-01-01T00:00:19Z",
                        "version": 2,
                        "sensor_run_id": "r1",
                        "log_path": "/secret/where/t1.log",
                    }
                ],
            },
            {
                "name": "m",
                "kind": "deployer",
                "runs": [{"id": "d1", "phase": "Succeeded", "sensor_run_id": "r2"}],
            },
        ],
        "models": [
            {
                "task": "Train",
                "versions": [{"version": 2, "run_id": "t1", "metrics": {"loss": 0.1}}],
            }
        ],
        "deployments": [{"deployer": "m", "url": "http://r/m/", "models": []}],
    }
    status.update(overrides)
    return status


def test_myelin_shape_nests_task_runs_under_sensor_runs_without_server_paths() -> None:
    doc = views.myelin_axon(_status(), AXON)
    retrain = doc["sensors"][0]
    assert retrain["triggers"] == [{"name": "low", "type": "Alert", "condition": "{{acc}} < 0.9"}]
    assert retrain["steps"] == [[{"kind": "trainer", "task": "Train"}]]
    (run,) = retrain["children"]
    assert (run["name"], run["status"], run["startedAtTs"]) == ("r1", "Succeeded", 1767225610)
    (task,) = run["children"]
    assert (task["name"], task["taskName"], task["status"], task["version"]) == (
        "t1",
        "Train",
        "Succeeded",
        2,
    )
    assert task["startedAtTs"] == 1767225611
    assert "log_path" not in str(doc)
    assert doc["endpoint"] == "http://r/m/"
    assert doc["phase"] == "Succeeded"


@pytest.mark.parametrize(
    ("change", "phase"),
    [
        ({"deleted": True}, "Deleted"),
        ({"sensors": [], "tasks": []}, "Pending"),
        (
            {"tasks": [{"name": "Train", "kind": "train", "runs": [{"phase": "Running"}]}]},
            "Running",
        ),
    ],
)
def test_axon_phase(change: dict[str, Any], phase: str) -> None:
    assert views.axon_phase(_status(**change)) == phase


def test_the_latest_sensor_run_decides_a_finished_axons_phase() -> None:
    status = _status()
    status["sensors"][1]["runs"][0]["phase"] = "Failed"
    assert views.axon_phase(status) == "Failed"
    status["sensors"][0]["runs"][0]["started"] = "2026-01-02T00:00:00Z"
    assert views.axon_phase(status) == "Succeeded"


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{{acc}} < 0.9", ("<", 0.9)),
        ("0.9 > {{acc}}", ("<", 0.9)),
        ("avg_over_time({{acc}}[5m]) >= 2", (">=", 2.0)),
        ("{{a}} < 1 and {{b}} > 2", None),
        ("{{a}} < {{b}}", None),
        ("not a condition ((", None),
    ],
)
def test_threshold_of(condition: str, expected: tuple[str, float] | None) -> None:
    found = views.threshold_of(condition)
    assert (None if found is None else (found["op"], found["value"])) == expected


def test_alert_series_keeps_the_alerts_values_and_firings_only() -> None:
    metrics = [
        {"time": "t1", "value": 0.95, "sensor": "Retrain", "trigger": "low"},
        {"time": "t2", "value": 0.5, "sensor": "Retrain", "trigger": "low"},
        {"time": "t3", "value": 7.0, "sensor": "Other", "trigger": "low"},
        {"time": "t4", "value": 0.4, "name": "acc"},  # a user's metric, not the watcher's answer
    ]
    decisions = [
        {"time": "t2", "sensor": "Retrain", "trigger": "low", "fired": True, "sensor_run_id": "r1"},
        {"time": "t1", "sensor": "Retrain", "trigger": "low", "fired": False},
        {"time": "t2", "sensor": "Deploy", "trigger": "trained", "fired": True},
    ]
    (series,) = views.alert_series(AXON, metrics, decisions)
    assert series["threshold"]["value"] == 0.9
    assert [p["value"] for p in series["points"]] == [0.95, 0.5]
    assert series["fired"] == [{"time": "t2", "sensor_run_id": "r1"}]


def test_trace_follows_the_retrain_to_its_deployment() -> None:
    metric = {
        "id": "e1",
        "type": "ranvier.metric",
        "data": {"name": "acc", "value": 0.5, "sensor": "Retrain", "trigger": "low"},
    }
    tick = {"id": "e0", "type": "ranvier.tick", "data": {}}
    trained = {
        "id": "e2",
        "type": "ranvier.lifecycle",
        "data": {"run_id": "t1", "phase": "Succeeded"},
    }
    decisions = [
        {
            "event_id": "e0",
            "sensor": "Retrain",
            "trigger": "low",
            "fired": True,
            "sensor_run_id": "r1",
        },
        {"event_id": "e2", "sensor": "Deploy", "fired": True, "sensor_run_id": "r2"},
    ]
    events = {
        "e1": metric,
        "e0": tick,
        "e2": trained,
    }  # stream order: the value, then the `for` tick
    links = views.trace("r1", _status(), decisions, events)
    assert [link["sensor"] for link in links] == ["Retrain", "Deploy"]
    assert links[0]["event"]["type"] == "ranvier.tick"
    assert links[0]["metric"]["data"]["value"] == 0.5
    assert links[1]["metric"] is None
    assert links[0]["tasks"][0]["model"]["version"] == 2
    assert links[1]["event"]["id"] == "e2"
    assert links[1]["tasks"][0]["deployment"]["url"] == "http://r/m/"
    assert views.trace("unknown", _status(), decisions, {}) == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
