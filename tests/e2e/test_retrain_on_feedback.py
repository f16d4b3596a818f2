"""examples/02-retrain-on-feedback end to end: bad feedback retrains, the new version serves.

`ranvier up ... -d --until deployed` runs every real role (engine, executor with the deployer,
router, the calendar and metric watchers) on an embedded NATS. The test then sends the feedback
the example's header tells users to send (`request` + `reward: 0`, no `response`: the router
forwards it to every version serving /predict) through the router; the model class turns it
into the `quickstart_accuracy` gauge, and:

- the PostDeployment sensor's Alert (`{{quickstart_accuracy}} < 0.90`, `for`) starts a retrain
  within two metric intervals plus `for` of the feedback;
- the Lifecycle sensor deploys the new version, which answers `/predict` at the fixed URL;
- a continued stream of bad feedback (to the new version) starts no second retrain inside the
  cooldown (`cooldown: 10m`, `concurrency: Forbid`).

Once with the `scrape` source (the watcher scrapes the model servers itself, no Prometheus),
once with `source: prometheus` and a real Prometheus scraping the model servers (targets in a
file_sd file the test rewrites from the deployment as it changes). Intervals are 1 s here.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from events import subjects
from events.bus import Bus, ConnectOptions
from events.model import DecisionData
from ranvier.app import axon_status
from sensors.axons import AxonStore
from sensors.replay import decision_line
from sensors.runtime import caught_up as engine_caught_up
from tests.doc_blocks import header_blocks
from tests.e2e import kit
from tests.e2e.kit import REPO, state_token
from tests.integration.prometheus_kit import PrometheusServer, prometheus

__all__ = ["prometheus"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]

EXAMPLE = REPO / "examples" / "02-retrain-on-feedback"
NAME = "quickstart-retrain"
INTERVAL = 1.0
FOR = 2.0
SLACK = 15.0
"""Process start-up and scheduling on a loaded 2-core machine, on top of the contract."""
PAYLOAD = {"data": {"ndarray": [[1, 2]]}}
WAIT = 120.0


def documented_feedback() -> dict[str, Any]:
    """The body of the `curl ... send-feedback` command in the example's header."""
    path = EXAMPLE / "axon.yaml"
    [block] = header_blocks(path.read_text(encoding="utf-8"), path.name)
    [line] = [c for c in block.commands.splitlines() if "send-feedback" in c]
    argv = shlex.split(line)
    body: dict[str, Any] = json.loads(argv[argv.index("-d") + 1])
    return body


FEEDBACK = documented_feedback()


def prepare(tmp_path: Path, source: str) -> Path:
    """A copy of the example with 1 s intervals (and the metric source under test)."""
    folder = tmp_path / "example"
    folder.mkdir()
    for item in EXAMPLE.iterdir():
        if item.suffix in (".py", ".yaml"):
            (folder / item.name).write_text(item.read_text(encoding="utf-8"), encoding="utf-8")
    doc = yaml.safe_load((folder / "axon.yaml").read_text(encoding="utf-8"))
    doc["spec"]["metrics"] = {"source": source, "interval": f"{INTERVAL:g}s"}
    [alert] = next(s for s in doc["spec"]["sensors"] if s["name"] == "PostDeployment")["triggers"]
    assert alert["cooldown"] == "10m"  # the example's own guard is what is tested
    alert["for"] = f"{FOR:g}s"
    (folder / "axon.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return folder / "axon.yaml"


def ranvier(*argv: str, state: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return kit.ranvier(*argv, state=state, env=env, timeout=200)


async def until(what: str, check: Callable[[], Awaitable[Any]], limit: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


def gauge(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


class Pipeline:
    """The running `ranvier up`: its bus (for KV records) and the HTTP client for its servers."""

    def __init__(self, bus: Bus, http: httpx.AsyncClient, prom: PrometheusServer | None) -> None:
        self.bus = bus
        self.http = http
        self.prom = prom

    async def status(self) -> dict[str, Any]:
        stored = await AxonStore(self.bus).get("default", NAME)
        assert stored is not None
        return await axon_status(self.bus, stored)

    async def backends(self) -> list[dict[str, Any]]:
        status = await self.status()
        found = [b for d in status["deployments"] for m in d["models"] for b in m["backends"]]
        if self.prom is not None:  # Prometheus scrapes what is deployed now
            self.prom.set_targets(b["url"] for b in found)
        return found

    async def runs(self, sensor: str) -> list[dict[str, Any]]:
        status = await self.status()
        return next(s["runs"] for s in status["sensors"] if s["name"] == sensor)

    async def train_runs(self) -> list[dict[str, Any]]:
        status = await self.status()
        return next(t["runs"] for t in status["tasks"] if t["name"] == "TrainModel")

    async def feedback(self, url: str) -> None:
        """Send the example's feedback (a reward of 0) as its header does."""
        sent = await self.http.post(f"{url}send-feedback", json=FEEDBACK)
        assert sent.status_code == 200, sent.text


async def retrain_loop(tmp_path: Path, source: str, prom: PrometheusServer | None) -> None:
    # what Myelin's and Seldon's clients send: no answer to follow back, a bad reward
    assert "response" not in FEEDBACK
    assert FEEDBACK["reward"] == 0
    axon = prepare(tmp_path, source)
    state = tmp_path / "state"
    env = kit.clean_env()
    if prom is not None:
        env["RANVIER_PROMETHEUS_URL"] = prom.url
    up = ranvier(
        "up", str(axon), "-d", "--until", "deployed", "--timeout", "150", state=state, env=env
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        shown = ranvier("endpoint", NAME, "-o", "json", state=state, env=env)
        assert shown.returncode == 0, shown.stderr
        url = json.loads(shown.stdout)["fixedUrl"]
        nats_url = (state / "nats.url").read_text(encoding="utf-8").strip()
        options = ConnectOptions(
            servers=[nats_url],
            token=state_token(state),
            connect_timeout=5.0,
            request_timeout=5.0,
        )
        async with Bus.connect(options) as bus, httpx.AsyncClient(timeout=30.0) as http:
            await run_checks(Pipeline(bus, http, prom), url)
            await replayed_as_live(bus, axon, tmp_path, state=state, env=env)
    finally:
        down = ranvier("down", state=state, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


async def run_checks(pipe: Pipeline, url: str) -> None:
    [first] = await pipe.backends()
    assert await pipe.runs("PostDeployment") == []
    if pipe.prom is not None:
        prom = pipe.prom
        await until("Prometheus scraping the model server", _scraped(prom, first["url"]))

    # Bad feedback drives the gauge below 0.90; a retrain starts within 2 intervals + `for`.
    sent = time.time()
    for _ in range(3):
        await pipe.feedback(url)
    scraped = (await pipe.http.get(f"{first['url']}/metrics")).text
    accuracy = gauge(scraped, "quickstart_accuracy")
    assert accuracy is not None
    assert accuracy < 0.90
    [run] = await until("the PostDeployment retrain", lambda: pipe.runs("PostDeployment"))
    assert run["trigger"] == "accuracy-low"
    started = _epoch(run["started"])
    source = "scrape" if pipe.prom is None else "prometheus"
    print(f"\n{source}: retrain started {started - sent:.2f}s after the feedback")
    assert started - sent <= 2 * INTERVAL + FOR + SLACK

    # The retrained version is deployed and answers at the fixed URL.
    async def moved() -> list[dict[str, Any]]:
        found = await pipe.backends()
        return [b for b in found if b["version"] != first["version"]]

    [new] = await until("the new version deployed", moved)
    assert int(new["version"]) > int(first["version"])
    answer = await pipe.http.post(f"{url}predict", json=PAYLOAD)
    assert answer.status_code == 200, answer.text
    assert answer.json()["meta"]["modelVersion"] == new["version"]

    # A continued stream of bad feedback, now to the new version: no second retrain.
    async def low_on_new() -> bool:
        await pipe.backends()  # keeps Prometheus' targets in step with the deployment
        await pipe.feedback(url)
        text = (await pipe.http.get(f"{new['url']}/metrics")).text
        value = gauge(text, "quickstart_accuracy")
        return value is not None and value < 0.90

    await until("the new version's accuracy below 0.90", low_on_new)
    end = time.monotonic() + FOR + 4 * INTERVAL
    while time.monotonic() < end:  # the alert sees it for longer than `for`
        await pipe.feedback(url)
        await asyncio.sleep(INTERVAL / 2)
    await until("the retrain's TrainModel run to finish", _all_done(pipe))
    runs = await pipe.runs("PostDeployment")
    assert [r["trigger"] for r in runs] == ["accuracy-low"]
    assert len(await pipe.train_runs()) == 2  # the first training and one retrain


async def replayed_as_live(
    bus: Bus, axon: Path, tmp_path: Path, *, state: Path, env: dict[str, str]
) -> None:
    """`ranvier events export`, then `ranvier sensors test` over it: the same sensor runs, with
    the same ids, as the live run, and every decision the same (timed Alerts included: the
    PostDeployment retrain fired on a tick between two metric samples)."""
    recording = tmp_path / "recording.jsonl"
    exported = ranvier("events", "export", "-f", str(recording), state=state, env=env)
    assert exported.returncode == 0, exported.stderr
    await until("the engine to handle every recorded event", lambda: engine_caught_up(bus))
    recorded = {json.loads(line)["id"] for line in recording.read_text().splitlines()}
    tested = await asyncio.to_thread(  # a dry run needs no server, hence no --state-dir
        subprocess.run,
        [sys.executable, "-m", "ranvier", "sensors", "test", str(axon), "--events", str(recording)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stderr
    replayed = [json.loads(line) for line in tested.stdout.splitlines() if line.strip()]
    shown = ranvier("get", "axon", NAME, "-o", "json", state=state, env=env)
    live_runs = sorted(
        (sensor["name"], run["id"])
        for sensor in json.loads(shown.stdout)["sensors"]
        for run in sensor["runs"]
    )
    replay_runs = sorted(
        {(d["sensor"], d["sensor_run_id"]) for d in replayed if d["fired"] and d["sensor_run_id"]}
    )
    print(f"\nlive runs:     {live_runs}\nreplayed runs: {replay_runs}")
    assert replay_runs == live_runs
    assert ("PostDeployment", next(r for s, r in live_runs if s == "PostDeployment")) in replay_runs
    live = [  # what the engine decided for the recorded events (more keep coming meanwhile)
        decision_line(DecisionData.model_validate(item.event.data))
        async for item in bus.replay(stream=subjects.DECISIONS_STREAM)
        if item.event.data.get("axon") == NAME and item.event.data["event_id"] in recorded
    ]
    assert replayed == live


def _scraped(prom: PrometheusServer, url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        prom.set_targets([url])
        found = await asyncio.to_thread(prom.query, 'up{job="ranvier-model-servers"} == 1')
        return bool(found)

    return check


def _all_done(pipe: Pipeline) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        runs = await pipe.train_runs()
        return all(r["phase"] in ("Succeeded", "Failed") for r in runs)

    return check


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_retrain_on_bad_feedback_scrape_source(tmp_path: Path) -> None:
    await retrain_loop(tmp_path, "scrape", None)


async def test_retrain_on_bad_feedback_prometheus_source(
    tmp_path: Path, prometheus: PrometheusServer
) -> None:
    await retrain_loop(tmp_path, "prometheus", prometheus)
