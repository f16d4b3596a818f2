"""How the metric watcher reads Myelin's bare `{{name}}` when several series answer.

A bare template names the Axon's metric: after a retrain, Myelin's rolloutSpec serves versions
1 and 2 side by side, each with its own accuracy gauge; `{{acc}} < 0.90` reads their mean
(`avg({{acc}})`, the accuracy users see under an even split) instead of an unknown value.
Anything that already says which series (matchers, an aggregation, a function) is unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sensors.axons import StoredAxon
from sensors.expr import parse_condition, render_prometheus
from sensors.loader import load_axon_text
from sensors.promql import SeriesStore, evaluate_query
from sensors.watcher import axon_query, plan_axon

NOW = 1000.0


@pytest.mark.parametrize(
    ("condition", "rendered"),
    [
        ("{{acc}} < 0.9", 'avg(acc{axon="a"})'),
        ('{{acc}}{version="2"} < 0.9', 'acc{axon="a",version="2"}'),
        ("min({{acc}}) < 0.9", 'min(acc{axon="a"})'),
        ("max_over_time({{acc}}[1m]) < 0.9", 'max_over_time(acc{axon="a"}[1m])'),
        ("acc < 0.9", "acc"),  # not a template: the user's own PromQL
    ],
)
def test_only_a_bare_template_is_averaged(condition: str, rendered: str) -> None:
    query = parse_condition(condition).queries[0]
    read = axon_query(query)
    assert read == query  # same key: the engine matches its values as before
    assert render_prometheus(read, {"axon": "a"}) == rendered


def store(values: dict[str, float]) -> SeriesStore:
    found = SeriesStore()
    for version, value in values.items():
        labels = {"model": "m", "version": version, "instance": f"h:{version}"}
        found.add("acc", labels, value, NOW - 1)
    return found


@pytest.mark.parametrize(
    ("values", "bare", "read"),
    [
        ({}, None, None),
        ({"1": 0.0}, 0.0, 0.0),
        ({"1": 0.0, "2": 1.0}, None, 0.5),
        ({"1": 0.8, "2": 0.9, "3": 1.0}, None, 0.9),
    ],
)
def test_several_series_read_as_their_mean(
    values: dict[str, float], bare: float | None, read: float | None
) -> None:
    query = parse_condition("{{acc}} < 0.9").queries[0]
    assert evaluate_query(query, store(values), NOW) == bare  # PromQL's own rule: unknown
    assert evaluate_query(axon_query(query), store(values), NOW) == pytest.approx(read)


SHOWCASE_ALERT = """
apiVersion: myelinproj.io/v1alpha1
kind: Axon
metadata: {name: ml-gpt2}
spec:
  tasks:
    - {name: TrainGPT2, train: {command: [python, train.py]}}
  sensors:
    - name: PostDeploymentDecisionMaker
      triggers:
        - name: DeployAccuracy
          type: Alert
          condition: "{{shakespeare_gpt2_deploy_accuracy}} < 0.90"
      tasks:
        - trainer: {task: TrainGPT2}
"""


def test_the_watchers_plan_reads_the_myelin_condition_as_the_axons_value() -> None:
    axon = load_axon_text(SHOWCASE_ALERT)
    stored = StoredAxon(
        name="ml-gpt2",
        namespace="default",
        generation=1,
        digest="d",
        axon=axon,
        source=None,
        submitted=datetime(2026, 1, 1, tzinfo=UTC),
    )
    plan = plan_axon(stored, None)
    assert plan is not None
    [watch] = plan.watches
    rendered = render_prometheus(watch.query, {"axon": "ml-gpt2"})
    assert rendered == 'avg(shakespeare_gpt2_deploy_accuracy{axon="ml-gpt2"})'
