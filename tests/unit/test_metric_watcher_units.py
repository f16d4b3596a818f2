"""The metric watcher's plain parts: exposition parsing, outage logging, event ids, plans,
telemetry collectors, the scrape/prometheus validation split and the Prometheus manifests."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from structlog.testing import capture_logs

from events.errors import RanvierError
from events.telemetry import Telemetry
from events.watchers.metrics import Outages, instance_of, metrics_url, parse_exposition
from sensors.axons import StoredAxon, spec_digest
from sensors.expr import parse_condition
from sensors.loader import load_axon, load_axon_text
from sensors.watcher import JOB, metric_event_id, plan_axon

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "02-retrain-on-feedback" / "axon.yaml"
MANIFESTS = ROOT / "manifests" / "base"


def stored(text: str | None = None) -> StoredAxon:
    axon = load_axon(EXAMPLE) if text is None else load_axon_text(text)
    return StoredAxon(
        name=axon.metadata.name,
        namespace=axon.metadata.namespace,
        generation=1,
        digest=spec_digest(axon),
        axon=axon,
        source=None,
        submitted=datetime(2024, 1, 1, tzinfo=UTC),
    )


def test_parse_exposition_reads_what_a_model_server_exposes() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("acc", "accuracy", ["axon", "version"], registry=registry)
    gauge.labels(axon="a", version="2").set(0.25)
    counter = Counter("feedback", "feedback", ["axon"], registry=registry)
    counter.labels(axon="a").inc(3)
    samples = {s.name: s for s in parse_exposition(generate_latest(registry).decode())}
    assert samples["acc"].labels == {"axon": "a", "version": "2"}
    assert samples["acc"].value == 0.25
    assert samples["acc"].timestamp is None
    assert samples["feedback_total"].value == 3.0


def test_parse_exposition_refuses_garbage() -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # the parser raises a bare ValueError
        parse_exposition("this is { not an exposition\n")


@pytest.mark.parametrize(
    ("url", "instance", "scraped"),
    [
        ("http://127.0.0.1:8001", "127.0.0.1:8001", "http://127.0.0.1:8001/metrics"),
        ("http://model/", "model:80", "http://model/metrics"),
        ("https://model/metrics", "model:443", "https://model/metrics"),
    ],
)
def test_targets(url: str, instance: str, scraped: str) -> None:
    assert instance_of(url) == instance
    assert metrics_url(url) == scraped


def test_an_outage_is_logged_once_and_its_end_once() -> None:
    outages = Outages("scrape", clock=iter(range(100)).__next__)
    with capture_logs() as logs:
        for _ in range(5):
            outages.failed("t1", "refused")
        outages.failed("t2", "timeout")
        outages.succeeded("t1")
        outages.succeeded("t1")
        outages.failed("t1", "refused")
    assert [(e["event"], e["target"]) for e in logs] == [
        ("scrape.down", "t1"),
        ("scrape.down", "t2"),
        ("scrape.recovered", "t1"),
        ("scrape.down", "t1"),
    ]
    assert outages.failures == 7
    assert outages.outages == 3
    assert outages.is_down("t1")


def test_event_ids_are_deterministic_per_query_and_tick() -> None:
    where = ("default", "a", "s", "t", "acc")
    assert metric_event_id(where, 7) == metric_event_id(where, 7)
    assert metric_event_id(where, 7) != metric_event_id(where, 8)
    assert metric_event_id(where, 7) != metric_event_id(("default", "a", "s", "u", "acc"), 7)
    long = ("n" * 200, "a" * 200, "s" * 200, "t" * 200, "k" * 4000)
    assert len(metric_event_id(long, 10**12)) <= 128


def test_the_example_plan_reads_its_alert() -> None:
    plan = plan_axon(stored(), None)
    assert plan is not None
    assert (plan.source, plan.interval, plan.url) == ("scrape", 5.0, None)
    [watch] = plan.watches
    assert (watch.sensor, watch.trigger) == ("PostDeployment", "accuracy-low")
    assert watch.query == parse_condition("{{quickstart_accuracy}} < 0.90").queries[0]


AXON = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: planned}
spec:
  metrics: {source: prometheus, interval: 2s}
  tasks:
    - {name: Train, train: {command: [python3, train.py]}}
  sensors:
    - name: s
      triggers:
        - name: low
          type: Alert
          condition: "{{acc}} < 0.9 and {{acc}} + {{drift}} < 1"
          resolve: "{{acc}} > 0.95 or histogram_quantile(0.9, {{lat}}) < 1"
      conditions:
        - {name: enough, condition: "sum({{requests}}) > 10"}
      tasks:
        - trainer: {task: Train}
"""


def test_plan_covers_resolve_and_conditions_once_per_query() -> None:
    plan = plan_axon(stored(AXON), "http://prom:9090")
    assert plan is not None
    assert (plan.source, plan.interval, plan.url) == ("prometheus", 2.0, "http://prom:9090")
    seen = [(w.trigger, w.query.key) for w in plan.watches]
    assert len(seen) == len(set(seen))
    assert {t for t, _ in seen} == {"low", "enough"}
    alert = plan.watches[0]
    spec = stored(AXON).axon.spec.sensors[0].triggers[0]
    assert alert.trigger == spec.name
    texts = [spec.condition, spec.resolve or ""]  # type: ignore[union-attr]  # an Alert trigger
    wanted = {q.key for text in texts for q in parse_condition(text).queries}
    assert {k for t, k in seen if t == "low"} == wanted
    assert len(plan.queries) == len({w.query.key for w in plan.watches})


def test_no_alert_no_plan() -> None:
    text = AXON.split("  sensors:", maxsplit=1)[0] + "  sensors: []\n"
    assert plan_axon(stored(text), None) is None


def test_prometheus_only_promql_is_accepted_with_the_prometheus_source() -> None:
    assert load_axon_text(AXON).spec.metrics is not None
    with pytest.raises(RanvierError, match=r"histogram_quantile.*use `source: prometheus`"):
        load_axon_text(AXON.replace("source: prometheus", "source: scrape"))


@dataclasses.dataclass
class _Stats:
    events: int = 3
    queued: int = 2
    reasons: dict[str, int] = dataclasses.field(default_factory=lambda: {"stale": 1})


def test_telemetry_exposes_a_roles_counters_and_durations() -> None:
    telemetry = Telemetry()
    stats = _Stats()
    telemetry.add_stats("engine", lambda: stats, gauges=("queued",))
    telemetry.observe("engine", "batch_duration", 0.02)
    stats.events += 1
    text = generate_latest(telemetry.registry).decode()
    families = {s.name: s for s in parse_exposition(text)}
    assert families["ranvier_engine_events_total"].value == 4.0
    assert families["ranvier_engine_queued"].value == 2.0
    assert families["ranvier_engine_reasons_total"].labels == {"reason": "stale"}
    assert families["ranvier_engine_batch_duration_seconds_count"].value == 1.0


def test_manifests_scrape_the_model_servers_and_the_control_plane() -> None:
    [config] = yaml.safe_load_all((MANIFESTS / "prometheus.yaml").read_text(encoding="utf-8"))
    jobs = {j["job_name"] for j in yaml.safe_load(config["data"]["scrape.yaml"])["scrape_configs"]}
    assert {JOB, "ranvier-control-plane"} <= jobs
    plane = yaml.safe_load_all((MANIFESTS / "control-plane.yaml").read_text(encoding="utf-8"))
    scraped = {}
    for doc in plane:
        if doc["kind"] != "Deployment":
            continue
        template = doc["spec"]["template"]
        port = (template["metadata"].get("annotations") or {}).get("prometheus.io/port")
        (container,) = template["spec"]["containers"]
        args = container["args"]
        role = args[args.index("--role") + 1]
        if "--metrics-port" in args:
            assert args[args.index("--metrics-port") + 1] == port
            scraped[role] = port
    assert set(scraped) == {"engine", "executor", "watcher", "router", "api"}
