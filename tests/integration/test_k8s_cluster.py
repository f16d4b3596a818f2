"""The kubernetes backend and the lifecycle watcher against kmock's KubernetesEmulator.

The real `kubernetes` client talks HTTP to the emulator (`k8s_kit`); the test plays the
cluster's controllers (it sets Job and Deployment status) and a second kmock server plays the
image registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client

from events.model import ActionRequest, LifecycleData
from events.watchers.lifecycle import LifecycleWatcher, lifecycle_event_id
from executors.backends import k8s_objects as k8s
from executors.backends.base import Backend
from executors.backends.kubernetes import KubernetesBackend, KubeStarted
from sensors.loader import load_axon
from sensors.spec import Axon
from tests.integration.k8s_kit import (
    COMPLETE,
    RUNNING,
    Env,
    by_role,
    drop_connections,
    env,
    eventually,
    registry_has,
    set_job_status,
    settings_for,
)

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "examples" / "gpt2-shakespeare" / "axon.yaml"


def backend_for(env: Env) -> KubernetesBackend:
    return KubernetesBackend(
        env.api, settings=settings_for(env), poll_interval=0.02, registry_scheme="http"
    )


def request(axon: Axon, sensor: str, step: int, kind: str, task: str, **params: Any) -> Any:
    return ActionRequest(
        axon=axon.metadata.name,
        namespace=axon.metadata.namespace,
        sensor=sensor,
        sensor_run_id="run-1",
        step=step,
        kind=kind,  # type: ignore[arg-type]  # the tests pass valid kinds
        task=task,
        params=params,
    )


def deploy_request(axon: Axon, **params: Any) -> Any:
    """The GPT-2 Axon's deployer action: DeploymentDecisionMaker's first step."""
    deployer = axon.spec.sensor("DeploymentDecisionMaker")
    assert deployer is not None
    spec = deployer.steps[0][0].deployer
    assert spec is not None
    deployer_params = spec.model_dump(mode="json", by_alias=True)
    return request(
        axon,
        "DeploymentDecisionMaker",
        0,
        "deployer",
        "gpt2deployer",
        deployer=deployer_params,
        **params,
    )


def test_backend_satisfies_the_protocol() -> None:
    backend: Backend = KubernetesBackend(client.ApiClient(client.Configuration()))
    assert backend.name == "kubernetes"


async def test_gpt2_actions_create_jobs_deployment_service_and_lifecycle(env: Env) -> None:
    axon = load_axon(GPT2)
    registry_has(env, axon, "TrainGPT2", "DeployGPT2")  # DataPrep's image must be built
    backend = backend_for(env)
    events: list[LifecycleData] = []

    async def publish(data: LifecycleData) -> None:
        events.append(data)

    watcher = LifecycleWatcher(env.api, publish, namespace="default", retry_delay=0.05)
    started: list[KubeStarted] = []

    async def on_running(run: KubeStarted) -> None:
        started.append(run)

    async with watcher:
        # DataPrepGPT2: a kaniko build first (its image is not in the registry), then the Job.
        prep = asyncio.create_task(
            backend.run(
                request(axon, "TrainOnStart", 0, "resourceExecutor", "DataPrepGPT2"),
                axon,
                GPT2.parent,
                run_id="prep-1",
                on_running=on_running,
            )
        )
        build = (await eventually(lambda: by_role(env, "build"), "build job"))[0]
        assert build["spec"]["template"]["spec"]["containers"][0]["args"][2].startswith(
            f"--destination={env.registry_url}/ml/preprocess-myelin-gpt2:"
        )
        await set_job_status(env, build["metadata"]["name"], COMPLETE)
        job = (await eventually(lambda: by_role(env, "task"), "prep job"))[0]
        name = job["metadata"]["name"]
        await eventually(lambda: [e for e in events if e.run_id == "prep-1"], "Pending")
        await set_job_status(env, name, RUNNING)
        await eventually(lambda: [e for e in events if e.phase == "Running"], "Running")
        await set_job_status(env, name, COMPLETE)
        outcome = await prep
        assert (outcome.phase, outcome.message) == ("Succeeded", "")
        assert started[0].names == (name,)

        # TrainGPT2: its image exists, so no build; the watch is dropped while it finishes.
        train = asyncio.create_task(
            backend.run(
                request(axon, "TrainOnStart", 1, "trainer", "TrainGPT2"),
                axon,
                GPT2.parent,
                run_id="train-1",
            )
        )
        train_job = await eventually(
            lambda: [j for j in by_role(env, "task") if j["metadata"]["name"] != name], "train"
        )
        train_name = train_job[0]["metadata"]["name"]
        await set_job_status(env, train_name, RUNNING)
        await eventually(
            lambda: [e for e in events if e.run_id == "train-1" and e.phase == "Running"], "run"
        )
        connects = watcher.connects

        def finish_train() -> None:  # the Job finishes while the API server is away
            for key, obj in env.cluster.objects.items():
                if key[2] == train_name:
                    obj.patch({"status": COMPLETE, "metadata": {"resourceVersion": "1000"}})

        await drop_connections(env, finish_train)
        await eventually(lambda: watcher.connects >= connects + 2, "watch resumed")
        outcome = await train
        assert outcome.phase == "Succeeded"
        assert outcome.outputs["version"] == "train-1"
        await eventually(
            lambda: [e for e in events if e.run_id == "train-1" and e.phase == "Succeeded"],
            "train Succeeded",
        )

        # The deployer: DeployGPT2 (s2i) runs because its image already exists.
        deploy = asyncio.create_task(
            backend.run(
                deploy_request(axon, versions={"shakespearegpt2": "train-1"}),
                axon,
                GPT2.parent,
                run_id="deploy-1",
            )
        )
        dep = (await eventually(lambda: env.objects("Deployment"), "deployment"))[0]
        await eventually(lambda: env.objects("Service"), "service")
        await asyncio.to_thread(
            env.apps.patch_namespaced_deployment_status,
            dep["metadata"]["name"],
            "default",
            {"status": {"readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}},
            _preload_content=False,
            _content_type="application/merge-patch+json",
        )
        outcome = await deploy
        assert outcome.phase == "Succeeded", outcome.message
        assert outcome.outputs["servers"][0]["version"] == "train-1"
        await eventually(
            lambda: [e for e in events if e.run_id == "deploy-1" and e.phase == "Succeeded"],
            "deploy Succeeded",
        )

    # Exactly one event per transition, for every run, across the dropped watch.
    seen = [(e.task, e.run_id, e.phase) for e in events]
    assert seen == [
        ("DataPrepGPT2", "prep-1", "Pending"),
        ("DataPrepGPT2", "prep-1", "Running"),
        ("DataPrepGPT2", "prep-1", "Succeeded"),
        ("TrainGPT2", "train-1", "Pending"),
        ("TrainGPT2", "train-1", "Running"),
        ("TrainGPT2", "train-1", "Succeeded"),
        ("gpt2deployer", "deploy-1", "Pending"),
        ("gpt2deployer", "deploy-1", "Running"),
        ("gpt2deployer", "deploy-1", "Succeeded"),
    ]
    assert len({lifecycle_event_id(e) for e in events}) == len(events)
    assert (events[2].sensor, events[2].step) == ("TrainOnStart", 0)

    # What was created: one build, two Jobs, one Deployment and Service, the store and anchor.
    jobs = env.objects("Job")
    assert sorted(j["metadata"]["labels"][k8s.L_ROLE] for j in jobs) == ["build", "task", "task"]
    anchor = next(c for c in env.objects("ConfigMap") if c["metadata"]["name"].startswith("ran"))
    for obj in [*jobs, *env.objects("Deployment"), *env.objects("Service")]:
        meta = obj["metadata"]
        assert meta["ownerReferences"][0]["uid"] == anchor["metadata"]["uid"]
        assert {k8s.L_AXON, k8s.L_TASK, k8s.MANAGED_BY} <= set(meta["labels"])
        kubernetes_validate.validate(obj, "1.30", strict=True)
    (claim,) = env.objects("PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "nfs"
    train_pod = next(j for j in jobs if j["metadata"]["name"] == train_name)["spec"]["template"]
    env_vars = {e["name"]: e.get("value") for e in train_pod["spec"]["containers"][0]["env"]}
    assert env_vars["MODEL_PATH"] == "/ranvier/models/TrainGPT2/train-1"
    assert train_pod["spec"]["serviceAccountName"] == "myelin-app-myelin"


async def test_a_restarted_watcher_repeats_nothing_and_catches_up(env: Env) -> None:
    axon = load_axon(GPT2)
    registry_has(env, axon, "TrainGPT2")
    backend = backend_for(env)
    first: list[LifecycleData] = []
    second: list[LifecycleData] = []

    async def keep(into: list[LifecycleData]) -> Callable[[LifecycleData], Awaitable[None]]:
        async def publish(data: LifecycleData) -> None:
            into.append(data)

        return publish

    run = asyncio.create_task(
        backend.run(
            request(axon, "TrainOnStart", 1, "trainer", "TrainGPT2"),
            axon,
            GPT2.parent,
            run_id="t-1",
        )
    )
    async with LifecycleWatcher(env.api, await keep(first), namespace="default"):
        job = (await eventually(lambda: by_role(env, "task"), "job"))[0]
        await set_job_status(env, job["metadata"]["name"], RUNNING)
        await eventually(lambda: len(first) == 2, "Pending and Running")
    await set_job_status(env, job["metadata"]["name"], COMPLETE)  # while no watcher runs
    assert (await run).phase == "Succeeded"
    async with LifecycleWatcher(env.api, await keep(second), namespace="default"):
        await eventually(lambda: second, "catch-up")
    assert [e.phase for e in first] == ["Pending", "Running"]
    assert [e.phase for e in second] == ["Succeeded"]


async def test_s2i_without_an_existing_image_fails_clearly(env: Env) -> None:
    axon = load_axon(GPT2)
    registry_has(env, axon)  # nothing exists
    outcome = await backend_for(env).run(deploy_request(axon), axon, GPT2.parent)
    assert outcome.phase == "Failed"
    assert "s2i, which the kubernetes backend does not support" in outcome.message
    assert env.objects("Deployment") == []


async def test_failed_job_and_cancel(env: Env) -> None:
    axon = load_axon(GPT2)
    registry_has(env, axon, "TrainGPT2")
    backend = backend_for(env)
    run = asyncio.create_task(
        backend.run(request(axon, "S", 1, "trainer", "TrainGPT2"), axon, GPT2.parent, run_id="f")
    )
    job = (await eventually(lambda: by_role(env, "task"), "job"))[0]
    failed = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "Oops"}]}
    await set_job_status(env, job["metadata"]["name"], failed)
    outcome = await run
    assert (outcome.phase, outcome.message) == ("Failed", "Oops")

    run = asyncio.create_task(
        backend.run(request(axon, "S", 1, "trainer", "TrainGPT2"), axon, GPT2.parent, run_id="c")
    )
    await eventually(lambda: len(by_role(env, "task")) == 2, "second job")
    assert await backend.cancel("c", "cancelled: replaced")
    outcome = await run
    assert (outcome.phase, outcome.message) == ("Failed", "cancelled: replaced")
    assert [j["metadata"]["labels"][k8s.L_RUN] for j in by_role(env, "task")] == ["f"]
    assert not await backend.cancel("c")
