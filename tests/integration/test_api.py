"""The API role over real HTTP, in front of real roles on a real nats-server.

What is checked: the Rest webhook publishes the very event `ranvier trigger` publishes and
fires its sensor exactly once per call (404 unknown Axon or sensor, 409 no Rest trigger);
writes need the bearer token, and off loopback every data request does; a bad Axon gets the
validator's file:line:col errors as JSON and nothing is submitted; bodies over the limit are
refused; and, on the quickstart run by every role, each read endpoint answers what the KV
records and streams hold (Myelin's sensors -> sensor runs -> task runs shape, models with
metrics, deployments with weights, logs, events, SSE, explain, the trace).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import subjects
from events.bus import Bus
from events.model import REST
from events.server import EmbeddedServer
from ranvier.api.role import TOKEN_ENV, TOKEN_FILE, ApiRole
from ranvier.app import AppError, trigger_rest
from sensors.axons import AxonStore
from sensors.loader import SpecError, load_axon, load_axon_text
from tests.e2e.kit import REPO
from tests.integration.api_kit import eventually, serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

HOOKS = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: hooks}
spec:
  tasks:
    - name: Echo
      container: {command: [python3, -c, "print('echo ran')"], timeout: 60s}
  sensors:
    - name: manual
      concurrency: Allow
      triggers:
        - {name: webhook, type: Rest}
      tasks:
        - resourceExecutor: {task: Echo}
    - name: after
      triggers:
        - {name: echoed, type: Lifecycle, task: Echo, condition: Failed}
      tasks:
        - resourceExecutor: {task: Echo}
"""

BAD = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: bad}
spec:
  tasks:
    - name: Train
      train: {command: [python3, t.py]}
  sensors:
    - name: s
      triggers:
        - {name: t, type: Lifecycle, task: Trian, condition: Succeeded}
      tasks:
        - trainer: {task: Train}
"""


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN


async def _runs(client: httpx.AsyncClient, axon: str, sensor: str) -> list[dict[str, Any]]:
    doc = (await client.get(f"api/v1/axons/default/{axon}")).json()
    return next(s["children"] for s in doc["sensors"] if s["name"] == sensor)


async def test_webhook_fires_its_sensor_once_per_call(
    bus: Bus, tmp_path: Path, token_env: str
) -> None:
    async with (
        serving(bus, tmp_path / "state", ("engine", "executor", "api")) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=10.0) as client,
    ):
        submitted = await client.post(
            "api/v1/axons", content=HOOKS, headers={**AUTH, "Content-Type": "application/yaml"}
        )
        assert submitted.status_code == 201, submitted.text
        assert submitted.json() == {"name": "hooks", "namespace": "default", "generation": 1}

        hook = "api/v1/axons/default/hooks/sensors/manual/trigger"
        ids = []
        for n in range(3):
            answer = await client.post(hook, json={"n": n}, headers=AUTH)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["event_id"])
        assert len(set(ids)) == 3

        async def three_done() -> list[dict[str, Any]] | None:
            runs = await _runs(client, "hooks", "manual")
            done = [r for r in runs if r["status"] == "Succeeded" and r["children"]]
            return runs if len(done) >= 3 else None

        runs = await eventually(three_done, within=90)
        await asyncio.sleep(1.0)  # a fourth firing, if any, would show by now
        runs = await _runs(client, "hooks", "manual")
        assert len(runs) == 3
        assert [len(r["children"]) for r in runs] == [1, 1, 1]
        for run in runs:
            task = run["children"][0]
            assert task["taskName"] == "Echo"
            assert task["status"] == "Succeeded"
            assert isinstance(task["startedAtTs"], int)

        # the stored events are exactly the three calls, shaped as `ranvier trigger` makes them
        stored = []
        async for item in bus.replay(filter_subject=subjects.events_filter("hooks", "rest")):
            stored.append(item.event)
        assert [e.id for e in stored] == ids
        assert [e.data["payload"] for e in stored] == [{"n": 0}, {"n": 1}, {"n": 2}]
        cli_id = await trigger_rest(bus, "default", "hooks", "manual", {"n": 3})
        async for item in bus.replay(filter_subject=subjects.events_filter("hooks", "rest")):
            if item.event.id == cli_id:
                cli = item.event
        assert (cli.type, cli.subject, cli.source) == (REST, stored[0].subject, stored[0].source)
        assert {k: v for k, v in cli.data.items() if k != "payload"} == {
            k: v for k, v in stored[0].data.items() if k != "payload"
        }

        unknown_axon = await client.post(
            "api/v1/axons/default/nope/sensors/manual/trigger", json={}, headers=AUTH
        )
        assert unknown_axon.status_code == 404
        assert "no Axon default/nope" in unknown_axon.json()["detail"]
        unknown_sensor = await client.post(
            "api/v1/axons/default/hooks/sensors/nope/trigger", json={}, headers=AUTH
        )
        assert unknown_sensor.status_code == 404
        assert "sensors: manual, after" in unknown_sensor.json()["detail"]
        not_rest = await client.post(
            "api/v1/axons/default/hooks/sensors/after/trigger", json={}, headers=AUTH
        )
        assert not_rest.status_code == 409
        assert "no Rest trigger" in not_rest.json()["detail"]
        not_object = await client.post(hook, json=[1, 2], headers=AUTH)
        assert not_object.status_code == 400
        not_json = await client.post(hook, content=b"{nope", headers=AUTH)
        assert not_json.status_code == 400
        assert "not JSON" in not_json.json()["detail"]
        unauthorised = await client.post(hook, json={})
        assert unauthorised.status_code == 401
        # nothing of the refused calls reached the stream
        count = 0
        async for _ in bus.replay(filter_subject=subjects.events_filter("hooks", "rest")):
            count += 1
        assert count == 4


async def test_writes_need_the_token_and_loopback_generates_one(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    state = tmp_path / "state"
    async with (
        serving(bus, state, ("api",)) as (url, roles),
        httpx.AsyncClient(base_url=url, timeout=10.0) as client,
    ):
        path = state / TOKEN_FILE
        generated = path.read_text().strip()
        assert generated == roles["api"].token
        assert len(generated) >= 32
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert (state / "api.url").read_text().strip() == url

        assert (await client.get("api/v1/axons")).status_code == 200  # reads: open on loopback
        assert (await client.get("")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": generated}):
            refused = await client.post("api/v1/axons", content=HOOKS, headers=headers)
            assert refused.status_code == 401
            assert "RANVIER_API_TOKEN" in refused.json()["hint"]
            gone = await client.delete("api/v1/axons/default/hooks", headers=headers)
            assert gone.status_code == 401
        assert await AxonStore(bus).list() == []
        ok = await client.post(
            "api/v1/axons", content=HOOKS, headers={"Authorization": f"Bearer {generated}"}
        )
        assert ok.status_code == 201
    assert not (state / "api.url").exists()


async def test_off_loopback_every_data_request_needs_the_token(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(AppError, match="without a token"):
        ApiRole(bus, state_dir=tmp_path / "s", host="0.0.0.0")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with serving(bus, tmp_path / "state", ("api",), api_host="0.0.0.0") as (url, _):
        port = url.rstrip("/").rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/", timeout=10) as client:
            for path in ("api/v1/axons", "api/v1/events", "openapi.json", "docs"):
                assert (await client.get(path)).status_code == 401, path
                assert (await client.get(path, headers=AUTH)).status_code == 200, path
            for path in ("", "static/console.js", "healthz", "readyz"):  # no data in these
                assert (await client.get(path)).status_code == 200, path
    assert not (tmp_path / "state" / TOKEN_FILE).exists()  # a given token is never written


async def test_bad_axon_gets_the_validators_errors_and_nothing_is_submitted(
    bus: Bus, tmp_path: Path, token_env: str
) -> None:
    with pytest.raises(SpecError) as expected:
        load_axon_text(BAD, "request")
    async with (
        serving(bus, tmp_path / "state", ("api",)) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=10.0, headers=AUTH) as client,
    ):
        answer = await client.post("api/v1/axons", content=BAD)
        assert answer.status_code == 422
        body = answer.json()
        assert [e["text"] for e in body["errors"]] == [str(i) for i in expected.value.issues]
        first = body["errors"][0]
        assert (first["line"], first["column"]) == (11, 44)
        assert first["text"].startswith("request:11:44: error: sensors[0].triggers[0].task")
        assert "did you mean 'Train'" in first["message"]
        assert await AxonStore(bus).list() == []

        for junk in (b"", b"\xff\xfe", b"- a list\n", b"a: [unclosed"):
            refused = await client.post("api/v1/axons", content=junk)
            assert refused.status_code == 422, junk
            assert refused.json()["errors"], junk
        too_big = await client.post("api/v1/axons", content=b"#" * (2 * 1024 * 1024))
        assert too_big.status_code == 413
        hook_too_big = await client.post(
            "api/v1/axons/default/x/sensors/y/trigger", content=b" " * (2 * 1024 * 1024)
        )
        assert hook_too_big.status_code == 413

        assert (await client.delete("api/v1/axons/default/bad")).status_code == 404
        assert (await client.get("api/v1/axons/default/bad")).status_code == 404
        assert (await client.post("api/v1/axons", content=HOOKS)).status_code == 201
        deleted = await client.delete("api/v1/axons/default/hooks")
        assert deleted.json() == {"name": "hooks", "namespace": "default", "deleted": True}
        doc = (await client.get("api/v1/axons/default/hooks")).json()
        assert doc["phase"] == "Deleted"
        assert await AxonStore(bus).list() == []


async def _sse_events(client: httpx.AsyncClient, path: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async with client.stream("GET", path) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                found.append(json.loads(line[5:]))
                if len(found) >= count:
                    return found
    return found


async def test_quickstart_through_every_read_endpoint(
    bus: Bus, tmp_path: Path, token_env: str
) -> None:
    file = REPO / "examples" / "01-quickstart" / "axon.yaml"
    roles = ("engine", "executor", "watcher", "router", "api")
    async with (
        serving(bus, tmp_path / "state", roles) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=20.0) as client,
    ):
        await AxonStore(bus).submit(load_axon(file), file)

        async def deployed() -> dict[str, Any] | None:
            doc = (await client.get("api/v1/axons/default/quickstart")).json()
            return doc if doc["endpoint"] and doc["phase"] == "Succeeded" else None

        doc = await eventually(deployed, within=120)
        listed = (await client.get("api/v1/axons")).json()
        assert [(r["name"], r["phase"], r["endpoint"]) for r in listed] == [
            ("quickstart", "Succeeded", doc["endpoint"])
        ]
        assert listed[0]["lastRun"]["sensor"] == "DeployOnTrained"

        sensors = {s["name"]: s for s in doc["sensors"]}
        assert sensors["TrainOnStart"]["triggers"] == []
        assert sensors["TrainOnStart"]["steps"] == [
            [{"kind": "resourceExecutor", "task": "PrepareData"}],
            [{"kind": "trainer", "task": "TrainModel"}],
        ]
        assert sensors["DeployOnTrained"]["triggers"][0]["type"] == "Lifecycle"
        (train_run,) = sensors["TrainOnStart"]["children"]
        assert train_run["status"] == "Succeeded"
        assert [(c["taskName"], c["status"]) for c in train_run["children"]] == [
            ("PrepareData", "Succeeded"),
            ("TrainModel", "Succeeded"),
        ]
        assert all(isinstance(c["startedAtTs"], int) for c in train_run["children"])
        assert "log_path" not in json.dumps(doc)
        assert all("path" not in v for m in doc["models"] for v in m["versions"])

        models = (await client.get("api/v1/axons/default/quickstart/models")).json()
        (model,) = models
        assert model["task"] == "TrainModel"
        assert model["lossMetric"] == "loss"
        assert [v["version"] for v in model["versions"]] == [1]
        assert "loss" in model["versions"][0]["metrics"]

        deployments = (await client.get("api/v1/axons/default/quickstart/deployments")).json()
        backends = deployments[0]["models"][0]["backends"]
        assert [(str(b["version"]), b["weight"]) for b in backends] == [("1", 100)]
        predicted = await client.post(
            f"{doc['endpoint']}predict", json={"data": {"ndarray": [[1, 2]]}}
        )
        assert predicted.status_code == 200

        train = train_run["children"][1]
        log = await client.get(
            f"api/v1/axons/default/quickstart/tasks/TrainModel/runs/{train['id']}/log"
        )
        assert log.status_code == 200
        assert log.headers["content-type"].startswith("text/plain")
        missing = await client.get("api/v1/axons/default/quickstart/tasks/TrainModel/runs/x/log")
        assert missing.status_code == 404

        runs = (await client.get("api/v1/axons/default/quickstart/runs")).json()
        assert [r["sensor"] for r in runs] == ["TrainOnStart", "DeployOnTrained"]

        chain = (
            await client.get(f"api/v1/axons/default/quickstart/runs/{train_run['id']}/trace")
        ).json()["links"]
        assert [link["sensor"] for link in chain] == ["TrainOnStart", "DeployOnTrained"]
        assert chain[0]["event"]["type"] == "ranvier.axon"
        assert chain[0]["tasks"][1]["model"]["version"] == 1
        assert chain[1]["event"]["type"] == "ranvier.lifecycle"
        assert chain[1]["event"]["data"]["run_id"] == train["id"]
        assert chain[1]["tasks"][0]["deployment"]["url"] == doc["endpoint"]
        assert (await client.get("api/v1/axons/default/quickstart/runs/x/trace")).status_code == 404

        lifecycle = (await client.get("api/v1/events?axon=quickstart&type=lifecycle")).json()
        assert lifecycle
        assert {e["type"] for e in lifecycle} == {"ranvier.lifecycle"}
        assert len((await client.get("api/v1/events?limit=2")).json()) == 2
        bad_type = await client.get("api/v1/events?type=nonsense")
        assert bad_type.status_code == 400
        assert "unknown event type" in bad_type.json()["detail"]

        why = (await client.get(f"api/v1/events/{chain[1]['event']['id']}/decisions")).json()
        fired = [d for d in why["decisions"] if d["fired"]]
        assert [d["sensor"] for d in fired] == ["DeployOnTrained"]

        assert (await client.get("api/v1/axons/default/quickstart/alerts")).json() == []

        # live: the events stream delivers an event published after it was opened
        reader = asyncio.create_task(_sse_events(client, "api/v1/events/stream?type=rest", 1))
        await asyncio.sleep(1.0)
        await client.post("api/v1/axons", content=HOOKS, headers=AUTH)
        hooked = await client.post(
            "api/v1/axons/default/hooks/sensors/manual/trigger", json={"x": 1}, headers=AUTH
        )
        async with asyncio.timeout(20):
            (live,) = await reader
        assert live["id"] == hooked.json()["event_id"]
        assert live["data"]["payload"] == {"x": 1}
        async with asyncio.timeout(20):
            (axon_doc,) = await _sse_events(client, "api/v1/axons/default/quickstart/stream", 1)
        assert axon_doc["name"] == "quickstart"
        assert axon_doc["phase"] == "Succeeded"


def test_run_role_api_serves_until_sigterm_and_refuses_off_loopback_without_token(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")}
    argv = [sys.executable, "-m", "ranvier", "run", "--role", "api", "--nats-url", nats_server.url]
    argv += ["--state-dir", str(state)]
    refused = subprocess.run(
        [*argv, "--api-host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: the API would listen on 0.0.0.0 without a token (set RANVIER_API_TOKEN, which "
        "every request must then carry, or bind it to 127.0.0.1)"
    ]
    with subprocess.Popen([*argv, "--api-port", "0"], env=env) as process:
        try:
            deadline = time.monotonic() + 60
            while not (state / "api.url").exists():
                assert process.poll() is None, "the API role exited"
                assert time.monotonic() < deadline, "the API role did not start"
                time.sleep(0.1)
            url = (state / "api.url").read_text().strip()
            assert httpx.get(f"{url}readyz", timeout=10).json() == {"status": "ready"}
            assert httpx.get(f"{url}api/v1/axons", timeout=10).json() == []
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    assert not (state / "api.url").exists()
