"""The GPT-2 Axon end to end on an emulated cluster, through the bus.

A real nats-server, the real roles as `ranvier run --role engine,executor,watcher,router
--backend kubernetes` builds them (`ranvier.app.build_roles`), the real `kubernetes` client
against kmock's emulator (`k8s_kit`). The test plays the cluster: it moves Jobs to Running and
Complete, leaves the trainer's metrics in its pod's termination message, and makes the model
server's Deployment available. The images are in the (fake) registry, so nothing is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from events import subjects
from events.bus import Bus
from events.model import LIFECYCLE
from events.server import EmbeddedServer
from executors.backends import k8s_objects as k8s
from executors.deploy_flow import router_key
from executors.serving.routing import RoutingTable
from ranvier.app import RoleOptions, axon_status, build_roles, run_roles
from ranvier.commands.endpoint import read_endpoint
from sensors.axons import AxonStore
from sensors.loader import load_axon
from tests.integration.k8s_kit import (
    AVAILABLE,
    COMPLETE,
    RUNNING,
    Env,
    by_role,
    env,
    eventually,
    finished_pod,
    registry_has,
    set_deployment_status,
    set_job_status,
)

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "examples" / "gpt2-shakespeare" / "axon.yaml"
ROLES = ["engine", "executor", "watcher", "router"]


@contextlib.asynccontextmanager
async def control_plane(
    bus: Bus, env: Env, nats: EmbeddedServer, state: Path
) -> AsyncIterator[Plane]:
    """The roles of a cluster deployment, on one bus, until the block ends."""
    options = RoleOptions(
        state,
        backend="kubernetes",
        nats_url=nats.url,
        kube_api_url=env.api_url,
        registry=f"{env.registry_url}/ml",
        registry_insecure=True,
        kube_poll_interval=0.05,
    )
    roles = build_roles(bus, ROLES, options)
    stop = asyncio.Event()
    task = asyncio.create_task(run_roles(roles, stop))
    try:
        yield Plane(roles, task)
    finally:
        stop.set()
        await task


@dataclass
class Plane:
    """The running roles; `until` waits for a condition, failing at once if a role failed."""

    roles: dict[str, Any]
    task: asyncio.Task[None]

    async def until(self, check: Callable[[], Awaitable[Any] | Any], what: str) -> Any:
        """`eventually(check)`, but a role that stopped is the test's error, not a timeout."""

        async def checked() -> Any:
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the roles stopped while waiting for {what}")
            value = check()
            return await value if asyncio.iscoroutine(value) else value

        return await eventually(checked, what)


def task_jobs(env: Env, task: str) -> list[dict[str, Any]]:
    return [
        j for j in by_role(env, k8s.ROLE_TASK) if j["metadata"]["annotations"][k8s.A_TASK] == task
    ]


async def lifecycle_events(bus: Bus) -> list[dict[str, Any]]:
    return [
        item.event.data
        async for item in bus.replay(filter_subject=subjects.events_filter(None, "lifecycle"))
        if item.event.type == LIFECYCLE
    ]


async def test_gpt2_runs_step_by_step_on_the_cluster(
    bus: Bus, nats_server: EmbeddedServer, env: Env, tmp_path: Path
) -> None:
    axon = load_axon(GPT2)
    registry_has(env, axon, "DataPrepGPT2", "TrainGPT2", "DeployGPT2")
    trainer = axon.spec.task("TrainGPT2")
    assert trainer is not None
    assert trainer.train is not None
    assert trainer.train.loss_metric
    metrics = {trainer.train.loss_metric: 0.25, "steps": 600.0}
    async with control_plane(bus, env, nats_server, tmp_path) as plane:
        await AxonStore(bus).submit(axon, GPT2)

        # Step 1 of TrainOnStart: the DataPrepGPT2 Job, and nothing else yet.
        (prep,) = await plane.until(lambda: task_jobs(env, "DataPrepGPT2"), "prep Job")
        assert task_jobs(env, "TrainGPT2") == []
        await set_job_status(env, prep["metadata"]["name"], RUNNING)
        await set_job_status(env, prep["metadata"]["name"], COMPLETE)

        # Step 2: the TrainGPT2 Job, once DataPrep Succeeded; its metrics in the pod message.
        (train,) = await plane.until(lambda: task_jobs(env, "TrainGPT2"), "train Job")
        assert env.objects("Deployment") == []
        await finished_pod(env, train, json.dumps(metrics))
        await set_job_status(env, train["metadata"]["name"], COMPLETE)

        # The Lifecycle trigger on TrainGPT2 Succeeded deploys: Deployment + Service.
        (dep,) = await plane.until(lambda: env.objects("Deployment"), "Deployment")
        (svc,) = await plane.until(lambda: env.objects("Service"), "Service")
        await set_deployment_status(env, dep["metadata"]["name"], AVAILABLE)

        stored = await AxonStore(bus).get("default", "ml-gpt2")
        assert stored is not None

        async def deployed() -> dict[str, Any] | None:
            status = await axon_status(bus, stored)
            runs = {t["name"]: [r["phase"] for r in t["runs"]] for t in status["tasks"]}
            sensors = {s["name"]: [r["phase"] for r in s["runs"]] for s in status["sensors"]}
            done = runs.get("gpt2deployer") == ["Succeeded"] and sensors.get(
                "DeploymentDecisionMaker"
            ) == ["Succeeded"]
            return status if done else None

        status = await plane.until(deployed, "deployed")
        endpoint = await read_endpoint(bus, "ml-gpt2", "default")
        part = await bus.kv_get(subjects.MODELS_BUCKET, router_key("default", "ml-gpt2"))
        reporter = plane.roles["watcher"].cluster.publish

    # `get axon -o json`: every task run and sensor run Succeeded, one of each.
    tasks = {t["name"]: t["runs"] for t in status["tasks"]}
    for name in ("DataPrepGPT2", "TrainGPT2", "gpt2deployer"):
        assert [r["phase"] for r in tasks[name]] == ["Succeeded"], name
    sensors = {s["name"]: s["runs"] for s in status["sensors"]}
    for name in ("TrainOnStart", "DeploymentDecisionMaker"):
        assert [r["phase"] for r in sensors[name]] == ["Succeeded"], name
    assert [s["task"] for s in sensors["TrainOnStart"][0]["steps"]] == ["DataPrepGPT2", "TrainGPT2"]

    # The trainer's version, with the metrics from its pod, is the one deployed.
    (model,) = status["models"]
    (version,) = model["versions"]
    assert (model["task"], version["metrics"]) == ("TrainGPT2", metrics)
    assert dep["metadata"]["labels"][k8s.L_MODEL_VERSION] == str(version["version"])
    assert train["metadata"]["labels"][k8s.L_MODEL_VERSION] == str(version["version"])

    # The router's table sends traffic to the Service; `ranvier endpoint` answers as locally.
    svc_url = f"http://{svc['metadata']['name']}.default.svc:{k8s.SERVICE_PORT}"
    assert part is not None
    table = RoutingTable.model_validate_json(part[0])
    assert {b.url for d in table.deployers for m in d.models for b in m.backends} == {svc_url}
    (deployment,) = endpoint["deployments"]
    assert endpoint["fixedUrl"].endswith("/ml-gpt2/")
    backends = [b for m in deployment["models"] for b in m["backends"]]
    assert [(b["url"], b["version"]) for b in backends] == [(svc_url, str(version["version"]))]

    # Each transition of each run reached the stream exactly once, in order per run.
    events = await lifecycle_events(bus)
    seen = Counter((e["task"], e["run_id"], e["phase"]) for e in events)
    assert {k: n for k, n in seen.items() if n > 1} == {}
    per_run: dict[tuple[str, str], list[str]] = {}
    for e in events:
        per_run.setdefault((e["task"], e["run_id"]), []).append(e["phase"])
    run_ids = {name: runs[0]["id"] for name, runs in tasks.items() if runs}
    assert {task: per_run[(task, run_ids[task])] for task in run_ids} == {
        "DataPrepGPT2": ["Pending", "Running", "Succeeded"],
        "TrainGPT2": ["Pending", "Running", "Succeeded"],
        "gpt2deployer": ["Pending", "Running", "Succeeded"],
    }
    assert len(per_run) == len(run_ids)
    # The objects carry the runner's run ids, which is how the watcher reports them.
    assert prep["metadata"]["annotations"][k8s.A_RUN] == run_ids["DataPrepGPT2"]
    assert dep["metadata"]["annotations"][k8s.A_RUN] == run_ids["gpt2deployer"]
    assert reporter.skipped > 0  # the watcher saw transitions the runner had reported
