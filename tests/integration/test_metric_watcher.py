"""The metric watcher against real servers: nats-server, `ranvier serve` and Prometheus.

- scrape source: the watcher finds the model server in the Axon's deployment record, publishes
  unknown before any feedback, the gauge's value after feedback, and a stale unknown when the
  server is gone, with a single warning for the whole outage;
- prometheus source: the templated query pinned to the Axon goes to a real Prometheus that
  scrapes the model server; Prometheus down gives stale unknowns and one warning;
- a tick published twice (a restarted watcher, or two replicas) is stored once;
- the watcher's counters appear on the control plane's own /metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from bench.serving import ServerProcess, running, serve_argv
from events import subjects
from events.bus import Bus, kv_key
from events.model import MetricData
from events.telemetry import Telemetry
from sensors.axons import AxonStore
from sensors.expr import parse_condition
from sensors.loader import load_axon_text
from sensors.promql import SeriesStore
from sensors.watcher import MetricsWatcher, plan_axon
from tests.integration.prometheus_kit import PrometheusServer, prometheus

__all__ = ["prometheus"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "02-retrain-on-feedback"
NAME = "watched"
QUERY = "{{quickstart_accuracy}}"
WAIT = 60.0


def axon_text(source: str, url: str | None = None) -> str:
    where = f", url: {url}" if url else ""
    return f"""
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {{name: {NAME}}}
spec:
  metrics: {{source: {source}, interval: 0.5s{where}}}
  tasks:
    - name: Train
      train: {{command: [python3, train.py]}}
  sensors:
    - name: Retrain
      triggers:
        - name: low
          type: Alert
          condition: "{QUERY} < 0.9"
          resolve: "{QUERY} > 0.95"
      tasks:
        - trainer: {{task: Train}}
"""


@contextmanager
def model_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """The example's model class served by a real `ranvier serve`, labelled for NAME."""
    version = tmp_path / "version-1"
    version.mkdir(exist_ok=True)
    (version / "model.json").write_text(json.dumps({"w": 3.0, "b": 2.0}), encoding="utf-8")
    env = {"RANVIER_AXON": NAME, "RANVIER_MODEL": "regressor", "RANVIER_VERSION": "1"}
    argv = serve_argv("QuickstartModel", "--model-path", str(version))
    with running(argv, cwd=EXAMPLE, env=env) as server:
        yield server


async def deploy_record(bus: Bus, url: str) -> None:
    record = {"deployer": "d", "models": [{"name": "m", "backends": [{"name": "m", "url": url}]}]}
    await bus.kv_put(
        subjects.MODELS_BUCKET, kv_key("deploy", "default", NAME, "d"), json.dumps(record).encode()
    )


async def feedback(url: str, reward: float) -> None:
    async with httpx.AsyncClient(timeout=10.0) as http:
        answer = await http.post(f"{url}/send-feedback", json={"reward": reward})
        assert answer.status_code == 200, answer.text


@asynccontextmanager
async def watching(bus: Bus, **kwargs: object) -> AsyncIterator[MetricsWatcher]:
    watcher = MetricsWatcher(bus, refresh=0.2, **kwargs)  # type: ignore[arg-type]  # test kwargs
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class Values:
    """The metric events the watcher publishes, read from the stream as they arrive."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[MetricData] = []
        self._last = 0

    async def wait_for(self, what: str, check: Callable[[MetricData], bool]) -> MetricData:
        """The first event (seen before or arriving now) for which `check` holds."""
        for data in self.seen:
            if check(data):
                return data
        subject = subjects.events_filter(NAME, "metric")
        try:
            async with asyncio.timeout(WAIT):
                async for item in self.bus.follow(filter_subject=subject, since=self._last + 1):
                    self._last = item.seq
                    data = MetricData.model_validate(item.event.data)
                    self.seen.append(data)
                    if check(data):
                        return data
        except TimeoutError:
            pass
        pytest.fail(f"no metric event {what} within {WAIT}s")


async def test_scrape_source_values_unknown_and_outage(bus: Bus, tmp_path: Path) -> None:
    await AxonStore(bus).submit(load_axon_text(axon_text("scrape")))
    values = Values(bus)
    with capture_logs() as logs, model_server(tmp_path) as server:
        await deploy_record(bus, server.url)
        async with watching(bus):
            first = await values.wait_for("at all", lambda d: True)
            assert first.name == parse_condition(f"{QUERY} < 0.9").queries[0].key
            assert (first.sensor, first.trigger, first.source) == ("Retrain", "low", "scrape")
            assert first.value is None  # no feedback yet: the gauge does not exist
            assert not first.stale
            await feedback(server.url, 0.5)
            await feedback(server.url, 1.0)
            # A scrape may fall between the two feedbacks (0.5 first); the mean must follow.
            known = await values.wait_for(
                "with the mean of both rewards",
                lambda d: d.value is not None and d.value == pytest.approx(0.75),
            )
            assert known.value == pytest.approx(0.75)
            server.process.terminate()
            server.process.wait(timeout=10)
            gone = await values.wait_for("stale", lambda d: d.stale)
            assert gone.value is None
            ticks = len(values.seen)
            await values.wait_for(
                "two more ticks",
                lambda d: len(values.seen) >= ticks + 2 or d.value is not None,
            )
    assert sum(e["event"] == "scrape.down" for e in logs) == 1
    assert all(e["log_level"] != "error" for e in logs)


async def test_prometheus_source_values_and_outage(
    bus: Bus, tmp_path: Path, prometheus: PrometheusServer
) -> None:
    await AxonStore(bus).submit(load_axon_text(axon_text("prometheus", prometheus.url)))
    values = Values(bus)
    with capture_logs() as logs, model_server(tmp_path) as server:
        prometheus.set_targets([server.url])
        await feedback(server.url, 0.25)
        async with watching(bus):
            got = await values.wait_for("from Prometheus", lambda d: d.value is not None)
            assert got.value == pytest.approx(0.25)
            assert got.source == "prometheus"
            assert prometheus.query(f'quickstart_accuracy{{axon="{NAME}"}}')
            prometheus.stop()
            await values.wait_for("stale", lambda d: d.stale)
            ticks = len(values.seen)
            await asyncio.sleep(1.5)  # three more intervals of a Prometheus that is down
            assert len(values.seen) == ticks  # still unknown: not said again
    assert sum(e["event"] == "prometheus.down" for e in logs) == 1


async def test_a_tick_is_published_once_across_restarts(bus: Bus, tmp_path: Path) -> None:
    stored = await AxonStore(bus).submit(load_axon_text(axon_text("scrape")))
    telemetry = Telemetry()
    served = telemetry.serve(0)
    try:
        with model_server(tmp_path) as server:
            await deploy_record(bus, server.url)
            await feedback(server.url, 0.5)
            before = (await bus.stream_info()).state.messages
            published: list[int] = []
            for _ in range(2):  # the watcher, then the same watcher restarted within the tick
                watcher = MetricsWatcher(bus, telemetry=telemetry if not published else None)
                plan = plan_axon(stored, None)
                assert plan is not None
                plan.store = SeriesStore()
                plan.next_tick = 4242
                try:
                    published.append(await watcher.tick(plan))
                finally:
                    await watcher.aclose()
            assert published == [1, 1]
            assert (await bus.stream_info()).state.messages == before + 1
            async with httpx.AsyncClient() as http:
                text = (await http.get(served.url)).text
            assert "ranvier_watcher_published_total 1.0" in text
            assert "ranvier_watcher_tick_duration_seconds_count 1.0" in text
    finally:
        served.close()
