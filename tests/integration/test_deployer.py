"""The deployer with a real nats-server, real trainer runs, real model servers and the router.

Versions are trained by the local backend (tests/data/deploy/train.py: version N predicts N for
`[[1, 2]]`), registered in the registry, deployed by `LocalDeployer` as `ranvier serve`
processes, and reached through `RouterRole` (the router over the KV table), so every answer
below went through the same path as a user's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from events import subjects
from events.bus import Bus
from events.model import ActionRequest, LifecycleData
from events.subjects import MODELS_BUCKET
from executors.backends.local import LocalBackend, group_members
from executors.deploy_flow import deploy_key, router_key
from executors.deployer import LocalDeployer
from executors.kv import BusKeyValue
from executors.registry import ModelRegistry
from executors.runner import ExecutorRunner, TaskRun, task_run_key
from executors.serving.kv_table import RouterRole
from sensors.axons import AxonStore
from sensors.spec import Axon

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "deploy"
AXON = "deploytest"
PAYLOAD = {"data": {"ndarray": [[1, 2]]}}
REQUESTS = 400
BOUND = 60  # 6 standard deviations of a 50/50 split over 400 requests


def make_axon() -> Axon:
    return Axon.model_validate(
        {
            "apiVersion": "ranvier.dev/v1alpha1",
            "kind": "Axon",
            "metadata": {"name": AXON},
            "spec": {
                "tasks": [
                    {
                        "name": "Train",
                        "train": {
                            "command": [sys.executable, "train.py"],
                            "lossMetric": "loss",
                            "lossMetricSelector": "lower",
                        },
                    },
                    {"name": "Serve", "deploy": {"model": "LinearModel"}},
                    {"name": "ServeBroken", "deploy": {"model": "Broken"}},
                ],
            },
        }
    )


def deployer_spec(
    *, task: str = "Serve", rollout: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "linear",
        "models": [
            {
                "name": "linear",
                "backendModels": [{"name": "linear", "trainer": "Train", "deployer": task}],
            }
        ],
        "routes": [{"path": "/predict", "dag": [{"model": "linear", "path": "/predict"}]}],
    }
    if rollout is not None:
        spec["rolloutSpec"] = rollout
    return spec


CANARY = [
    {"destinations": [{"destinationIndex": 0, "weight": 50}, {"destinationIndex": 1, "weight": 50}]}
]


@dataclass
class Stack:
    """Everything a deploy test drives."""

    bus: Bus
    backend: LocalBackend
    deployer: LocalDeployer
    registry: ModelRegistry
    router: RouterRole
    axon: Axon
    client: httpx.AsyncClient
    runs: int = 0

    async def train(self) -> int:
        """One real trainer run, registered like the runner does; its version number."""
        self.runs += 1
        request = ActionRequest(
            axon=AXON,
            sensor="train",
            sensor_run_id=f"run-{self.runs}",
            step=0,
            kind="trainer",
            task="Train",
        )
        outcome = await self.backend.run(request, self.axon, DATA)
        assert outcome.phase == "Succeeded", outcome.message
        assert outcome.version is not None
        assert outcome.model_path is not None
        await self.registry.record_run(
            axon=AXON,
            task="Train",
            version=outcome.version,
            run_id=outcome.run_id,
            model_dir=outcome.model_path,
            succeeded=True,
        )
        return outcome.version

    async def deploy(self, spec: dict[str, Any]) -> Any:
        self.runs += 1
        request = ActionRequest(
            axon=AXON,
            sensor="deploy",
            sensor_run_id=f"run-{self.runs}",
            step=0,
            kind="deployer",
            task=spec["name"],
            params={"deployer": spec},
        )
        return await self.deployer.deploy(request, self.axon, DATA)

    @property
    def predict_url(self) -> str:
        assert self.router.url is not None
        return f"{self.router.url}/{AXON}/predict"

    async def answer(self) -> float:
        response = await self.client.post(self.predict_url, json=PAYLOAD)
        assert response.status_code == 200, response.text
        value: float = response.json()["data"]["ndarray"][0][0]
        return value

    async def until_serving(self, version: int) -> None:
        """Wait until the router's table reaches `version` (the router reloads it live)."""
        while True:
            response = await self.client.post(self.predict_url, json=PAYLOAD)
            if response.status_code == 200 and response.json()["data"]["ndarray"][0][0] == version:
                return
            await asyncio.sleep(0.05)

    async def split(self, n: int = REQUESTS) -> Counter[float]:
        counts: Counter[float] = Counter()
        for _ in range(n):
            counts[await self.answer()] += 1
        return counts

    async def record(self) -> dict[str, Any]:
        found = await self.bus.kv_get(MODELS_BUCKET, deploy_key("default", AXON, "linear"))
        assert found is not None
        value: dict[str, Any] = json.loads(found[0])
        return value


@pytest.fixture
async def stack(bus: Bus, tmp_path: Path) -> AsyncIterator[Stack]:
    state = tmp_path / "state"
    backend = LocalBackend(state)
    deployer = LocalDeployer(bus, state_dir=state, start_timeout=60.0)
    router = RouterRole(bus)
    serving = asyncio.create_task(router.run())
    await router.listening.wait()
    async with httpx.AsyncClient(timeout=30.0) as client:
        made = Stack(
            bus, backend, deployer, ModelRegistry(BusKeyValue(bus, MODELS_BUCKET)), router,
            make_axon(), client,
        )  # fmt: skip
        yield made
    await made.deployer.shutdown()  # a test may have replaced it (a restarted deployer)
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await backend.shutdown()


def pids(stack: Stack) -> dict[str, int]:
    return {s.version: s.pid for s in stack.deployer.live_servers()}


def routed(part: tuple[bytes, int] | None) -> dict[str, tuple[float, str]]:
    """{version: (weight, url)} of the router part's backends."""
    assert part is not None
    table = json.loads(part[0])
    return {
        b["version"]: (b["weight"], b["url"])
        for d in table["deployers"]
        for m in d["models"]
        for b in m["backends"]
    }


async def canary_of_two(stack: Stack) -> tuple[int, int]:
    """The Axon submitted (as a user's file in DATA), two versions deployed 50/50."""
    await AxonStore(stack.bus).submit(stack.axon, DATA / "axon.yaml")
    first = await stack.train()
    assert (await stack.deploy(deployer_spec(rollout=CANARY))).phase == "Succeeded"
    second = await stack.train()
    assert (await stack.deploy(deployer_spec(rollout=CANARY))).phase == "Succeeded"
    await stack.until_serving(second)
    return first, second


async def assert_restored(
    stack: Stack, restarted: LocalDeployer, record: dict[str, Any], old: dict[str, int]
) -> None:
    """`restarted` serves the same versions with the same weights on new servers."""
    part = await stack.bus.kv_get(MODELS_BUCKET, router_key("default", AXON))
    new = {s.version: s.pid for s in restarted.live_servers()}
    assert set(new) == set(old)
    assert not set(new.values()) & set(old.values())
    assert not any(group_members(pid) for pid in old.values())
    urls = {s.version: s.url for s in restarted.live_servers()}
    weights = {b["version"]: b["weight"] for m in record["models"] for b in m["backends"]}
    assert routed(part) == {v: (weights[v], urls[v]) for v in weights}
    after = await stack.record()
    assert (after["run_id"], after["history"]) == (record["run_id"], record["history"])
    counts = await stack.split()
    assert set(counts) == {float(v) for v in old}
    for version in old:
        assert abs(counts[float(version)] - REQUESTS / 2) <= BOUND, counts


@pytest.mark.slow
async def test_canary_splits_traffic_then_moves_to_the_new_version(stack: Stack) -> None:
    first = await stack.train()
    outcome = await stack.deploy(deployer_spec(rollout=CANARY))
    assert outcome.phase == "Succeeded", outcome.message
    await stack.until_serving(first)
    # one deployed version: it takes all the traffic
    assert set(await stack.split(50)) == {first}

    second = await stack.train()
    outcome = await stack.deploy(deployer_spec(rollout=CANARY))
    assert outcome.phase == "Succeeded", outcome.message
    await stack.until_serving(second)
    counts = await stack.split()
    assert set(counts) == {first, second}
    assert abs(counts[first] - REQUESTS / 2) <= BOUND, counts
    record = await stack.record()
    weights = {b["version"]: b["weight"] for m in record["models"] for b in m["backends"]}
    assert weights == {str(second): 50.0, str(first): 50.0}
    before = pids(stack)

    third = await stack.train()
    outcome = await stack.deploy(deployer_spec(rollout=CANARY))
    assert outcome.phase == "Succeeded", outcome.message
    assert outcome.outputs["stopped"] == 1
    await stack.until_serving(third)
    counts = await stack.split()
    assert set(counts) == {second, third}
    after = pids(stack)
    assert set(after) == {str(second), str(third)}
    assert after[str(second)] == before[str(second)]  # still routed: kept, not restarted
    assert not group_members(before[str(first)])  # no longer routed: stopped


async def test_failed_start_rolls_back_to_the_previous_table(stack: Stack) -> None:
    version = await stack.train()
    assert (await stack.deploy(deployer_spec())).phase == "Succeeded"
    await stack.until_serving(version)
    part = await stack.bus.kv_get(MODELS_BUCKET, router_key("default", AXON))
    record = await stack.record()
    serving = pids(stack)

    outcome = await stack.deploy(deployer_spec(task="ServeBroken"))

    assert outcome.phase == "Failed"
    assert "did not start" in outcome.message
    assert "are corrupt" in outcome.message  # the server's own last log line says why
    assert await stack.bus.kv_get(MODELS_BUCKET, router_key("default", AXON)) == part
    assert await stack.record() == record
    assert pids(stack) == serving  # the broken server is gone, the working one kept
    assert len(list(stack.deployer.servers_dir.glob("*.json"))) == 1
    assert set(await stack.split(20)) == {version}


async def test_undeploy_and_recover_leave_no_processes(stack: Stack, bus: Bus) -> None:
    version = await stack.train()
    assert (await stack.deploy(deployer_spec())).phase == "Succeeded"
    await stack.until_serving(version)
    [server] = stack.deployer.live_servers()

    # a second executor on the same state dir finds servers nobody watches any more
    other = LocalDeployer(bus, state_dir=stack.deployer.state_dir)
    # the first executor "crashes": it forgets its servers (their records stay on disk)
    stack.deployer._servers.clear()
    recovered = await other.recover()
    assert [r.pid for r in recovered] == [server.pid]
    assert not group_members(server.pid)
    assert await bus.kv_get(MODELS_BUCKET, router_key("default", AXON)) is None
    assert await bus.kv_get(MODELS_BUCKET, deploy_key("default", AXON, "linear")) is None

    assert (await stack.deploy(deployer_spec())).phase == "Succeeded"
    [server] = stack.deployer.live_servers()
    await stack.deployer.undeploy_axon("default", AXON)
    assert not group_members(server.pid)
    assert stack.deployer.live_servers() == []
    assert await bus.kv_get(MODELS_BUCKET, router_key("default", AXON)) is None


async def test_a_clean_restart_serves_the_recorded_deployment_again(stack: Stack, bus: Bus) -> None:
    await canary_of_two(stack)
    record = await stack.record()
    old = pids(stack)

    await stack.deployer.shutdown()  # `ranvier down`: servers stop, routes go, record stays
    assert not any(group_members(pid) for pid in old.values())
    assert await bus.kv_get(MODELS_BUCKET, router_key("default", AXON)) is None
    assert await stack.record() == record

    restarted = LocalDeployer(bus, state_dir=stack.deployer.state_dir, start_timeout=60.0)
    stack.deployer = restarted  # the fixture stops its servers
    assert await restarted.recover() == []  # nothing was left running
    await assert_restored(stack, restarted, record, old)


async def test_recovery_after_a_crash_replaces_the_orphaned_servers(stack: Stack, bus: Bus) -> None:
    await canary_of_two(stack)
    record = await stack.record()
    old = pids(stack)
    stack.deployer._servers.clear()  # the executor "crashes": its servers are orphans now

    restarted = LocalDeployer(bus, state_dir=stack.deployer.state_dir, start_timeout=60.0)
    stack.deployer = restarted
    stopped = await restarted.recover()
    assert sorted(r.pid for r in stopped) == sorted(old.values())
    await assert_restored(stack, restarted, record, old)


async def test_orphans_of_a_record_without_restart_data_are_stopped_and_unrouted(
    stack: Stack, bus: Bus
) -> None:
    version = await stack.train()
    assert (await stack.deploy(deployer_spec())).phase == "Succeeded"
    await stack.until_serving(version)
    old = pids(stack)
    record = await stack.record()
    for field in ("request", "host", "state_dir"):  # as written before deployments survived
        del record[field]
    await bus.kv_put(
        MODELS_BUCKET, deploy_key("default", AXON, "linear"), json.dumps(record).encode()
    )
    stack.deployer._servers.clear()

    restarted = LocalDeployer(bus, state_dir=stack.deployer.state_dir)
    stack.deployer = restarted
    assert sorted(r.pid for r in await restarted.recover()) == sorted(old.values())
    assert restarted.live_servers() == []
    assert not any(group_members(pid) for pid in old.values())
    assert await bus.kv_get(MODELS_BUCKET, router_key("default", AXON)) is None
    assert await bus.kv_get(MODELS_BUCKET, deploy_key("default", AXON, "linear")) is None


async def test_a_deleted_axon_is_not_served_again(stack: Stack, bus: Bus) -> None:
    await canary_of_two(stack)
    await stack.deployer.shutdown()
    await AxonStore(bus).delete("default", AXON)

    restarted = LocalDeployer(bus, state_dir=stack.deployer.state_dir)
    stack.deployer = restarted
    await restarted.recover()
    assert restarted.live_servers() == []
    assert await bus.kv_get(MODELS_BUCKET, deploy_key("default", AXON, "linear")) is None
    assert await bus.kv_get(MODELS_BUCKET, router_key("default", AXON)) is None


async def test_the_runner_recovers_its_deployer_and_deploys_under_its_run_id(
    stack: Stack, bus: Bus
) -> None:
    await canary_of_two(stack)
    old = pids(stack)
    stack.deployer._servers.clear()  # a crashed executor's servers

    state = stack.deployer.state_dir
    deployer = LocalDeployer(bus, state_dir=state, start_timeout=60.0)
    stack.deployer = deployer
    runner = ExecutorRunner(bus, backend=LocalBackend(state), deployer=deployer, state_dir=state)
    running = asyncio.create_task(runner.run())
    try:
        await runner.ready.wait()
        # recovery ran before the runner took work: the orphans replaced, the table rewritten
        assert not any(group_members(pid) for pid in old.values())
        assert set(pids(stack)) == set(old)
        assert set(routed(await bus.kv_get(MODELS_BUCKET, router_key("default", AXON)))) == set(old)

        request = ActionRequest(
            axon=AXON,
            sensor="deploy",
            sensor_run_id="by-runner",
            step=0,
            kind="deployer",
            task="linear",
            params={"deployer": deployer_spec(rollout=CANARY)},
        )
        await bus.publish(request.to_event(source="test"))
        done = await final_lifecycle(bus, "linear")
        assert done.phase == "Succeeded", done.message
        found = await bus.kv_get(
            subjects.RUNS_BUCKET, task_run_key("default", AXON, "linear", done.run_id)
        )
        assert found is not None
        assert TaskRun.from_json(found[0]).phase == "Succeeded"
        assert (await stack.record())["run_id"] == done.run_id  # one id for the deploy run
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def final_lifecycle(bus: Bus, task: str) -> LifecycleData:
    follow = bus.follow(since=1, filter_subject=subjects.events_filter(AXON, "lifecycle"))
    async with contextlib.aclosing(follow) as items:
        async for item in items:
            data = item.event.payload()
            assert isinstance(data, LifecycleData)
            if data.task == task and data.phase in ("Succeeded", "Failed"):
                return data
    raise AssertionError("unreachable")  # pragma: no cover


async def test_deploy_without_a_trained_version_fails_clearly(stack: Stack) -> None:
    outcome = await stack.deploy(deployer_spec())
    assert outcome.phase == "Failed"
    assert "has no Succeeded version" in outcome.message
    assert stack.deployer.live_servers() == []


async def run_cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ranvier",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_endpoint_json(stack: Stack) -> None:
    nats = stack.bus.url
    code, _, err = await run_cli("endpoint", AXON, "-o", "json", "--nats-url", nats)
    assert code == 1
    assert "nothing is deployed for axon 'deploytest'" in err

    first = await stack.train()
    await stack.deploy(deployer_spec(rollout=CANARY))
    second = await stack.train()
    assert (await stack.deploy(deployer_spec(rollout=CANARY))).phase == "Succeeded"

    code, out, err = await run_cli("endpoint", AXON, "-o", "json", "--nats-url", nats)
    assert code == 0, err
    document = json.loads(out)
    assert document["fixedUrl"] == f"{stack.router.url}/{AXON}/"
    [model] = document["models"]
    assert model["name"] == "linear"
    backends = {b["version"]: b for b in model["backends"]}
    assert set(backends) == {str(first), str(second)}
    assert {b["weight"] for b in backends.values()} == {50.0}
    # the URLs are the model servers': each answers with its own version
    for version, backend in backends.items():
        response = await stack.client.post(f"{backend['url']}/predict", json=PAYLOAD)
        assert response.json()["data"]["ndarray"][0][0] == int(version)
    # the Myelin recipe: ${fixedUrl}predict
    response = await stack.client.post(f"{document['fixedUrl']}predict", json=PAYLOAD)
    assert response.status_code == 200
