"""The Axon controller on an emulated cluster: `kubectl apply` runs an Axon, `kubectl delete`
cleans up, an invalid object gets a status condition and never reaches the engine.

The control plane is the real roles (`build_roles` with the kubernetes backend) on a real
nats-server; Axon objects are created and deleted through the Kubernetes API with the real
client, in Myelin's group (`myelinproj.io`, the optional CRD component), as `kubectl` does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from events.bus import Bus
from events.server import EmbeddedServer
from executors.backends import k8s_objects as k8s
from executors.controller import as_document
from sensors.axons import AxonStore
from tests.integration.k8s_kit import (
    AVAILABLE,
    COMPLETE,
    Env,
    env,
    finished_pod,
    install_axon_crds,
    set_deployment_status,
    set_job_status,
)
from tests.integration.test_k8s_pipeline import control_plane, task_jobs

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GROUP = "myelinproj.io"

AXON = """
apiVersion: myelinproj.io/v1alpha1
kind: Axon
metadata:
  name: hello
  namespace: default
spec:
  tasks:
    - name: Train
      train:
        image: registry.example/hello-train:1
        lossMetric: loss
        command: [python, train.py]
    - name: Serve
      deploy:
        image: registry.example/hello-serve:1
        endpointType: REST
        model: Model
  sensors:
    - name: TrainOnStart
      tasks:
        - trainer:
            task: Train
    - name: DeployWhenTrained
      triggers:
        - name: trained
          type: Lifecycle
          condition: Succeeded
          task: Train
      tasks:
        - deployer:
            name: hellodeployer
            replicas: 1
            models:
              - name: Hello
                modelSelectionStrategy: best
                backendModels:
                  - name: hello
                    trainer: Train
                    deployer: Serve
            routes:
              - path: /predict
                dag:
                  - model: Hello
                    path: /predict
"""

BROKEN = """
apiVersion: myelinproj.io/v1alpha1
kind: Axon
metadata:
  name: broken
  namespace: default
spec:
  tasks:
    - name: Train
      train:
        image: registry.example/hello-train:1
        command: [python, train.py]
  sensors:
    - name: TrainOnStart
      tasks:
        - trainer:
            task: Trian
"""


def custom(env: Env) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(env.api)


async def apply(env: Env, text: str) -> None:
    body = yaml.safe_load(text)
    await asyncio.to_thread(
        custom(env).create_namespaced_custom_object, GROUP, "v1alpha1", "default", "axons", body
    )


async def read(env: Env, name: str) -> dict[str, Any]:
    found = await asyncio.to_thread(
        custom(env).get_namespaced_custom_object, GROUP, "v1alpha1", "default", "axons", name
    )
    assert isinstance(found, dict)
    return found


def events_for(env: Env, name: str) -> list[dict[str, Any]]:
    return [e for e in env.objects("Event") if e["involvedObject"]["name"] == name]


async def test_an_applied_axon_runs_shows_its_endpoint_and_is_cleaned_up_on_delete(
    bus: Bus, nats_server: EmbeddedServer, env: Env, tmp_path: Path
) -> None:
    install_axon_crds(env, GROUP)  # ranvier.dev's CRD is not installed: skipped, not an error
    async with control_plane(bus, env, nats_server, tmp_path) as plane:
        await apply(env, AXON)

        (train,) = await plane.until(lambda: task_jobs(env, "Train"), "train Job")
        await finished_pod(env, train, json.dumps({"loss": 0.5}))
        await set_job_status(env, train["metadata"]["name"], COMPLETE)
        (dep,) = await plane.until(lambda: env.objects("Deployment"), "Deployment")
        await plane.until(lambda: env.objects("Service"), "Service")
        await set_deployment_status(env, dep["metadata"]["name"], AVAILABLE)

        async def finished() -> dict[str, Any] | None:
            status = (await read(env, "hello")).get("status") or {}
            return status if status.get("phase") == "Succeeded" and "endpoint" in status else None

        status = await plane.until(finished, "status with the endpoint")
        router = plane.roles["router"]
        assert status["endpoint"] == f"{router.url}/hello/"
        assert status["observedGeneration"] == 1
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Valid"]["status"] == "True"
        assert conditions["Submitted"]["status"] == "True"
        sensors = {s["name"]: s["lastRun"]["phase"] for s in status["sensors"]}
        assert sensors == {"TrainOnStart": "Succeeded", "DeployWhenTrained": "Succeeded"}
        assert [e["reason"] for e in events_for(env, "hello")] == ["Submitted"]
        assert dep["metadata"]["labels"][k8s.L_AXON] == "hello"

        await asyncio.to_thread(
            custom(env).delete_namespaced_custom_object,
            GROUP,
            "v1alpha1",
            "default",
            "axons",
            "hello",
        )

        def cleaned() -> bool:
            kinds = ("Job", "Deployment", "Service", "ConfigMap")
            return not any(env.objects(kind) for kind in kinds)

        await plane.until(cleaned, "the Axon's objects deleted")
        stored = await AxonStore(bus).get("default", "hello")
        assert stored is not None
        assert stored.deleted


async def test_an_invalid_object_gets_a_condition_naming_line_and_field_and_is_not_submitted(
    bus: Bus, nats_server: EmbeddedServer, env: Env, tmp_path: Path
) -> None:
    install_axon_crds(env, GROUP)
    async with control_plane(bus, env, nats_server, tmp_path) as plane:
        await apply(env, BROKEN)

        async def invalid() -> dict[str, Any] | None:
            status = (await read(env, "broken")).get("status") or {}
            return status if status.get("phase") == "Invalid" else None

        status = await plane.until(invalid, "the Invalid status")
        ((valid,),) = [[c for c in status["conditions"] if c["type"] == "Valid"]]
        assert valid["status"] == "False"
        assert valid["reason"] == "ValidationFailed"
        # `axons.<group>/<ns>/<name>:LINE:COL: error: <field>: ...`, the loader's own wording
        assert valid["message"].startswith("axons.myelinproj.io/default/broken:")
        assert "error: sensors[0].tasks[0].trainer.task: no task named 'Trian'" in valid["message"]
        assert "did you mean 'Train'" in valid["message"]
        line, column = (int(n) for n in valid["message"].split(":")[1:3])
        shown = as_document(await read(env, "broken")).splitlines()
        assert shown[line - 1][column - 1 :].startswith("Trian")
        await plane.until(lambda: events_for(env, "broken"), "the Warning Event")
        (event,) = events_for(env, "broken")
        assert (event["type"], event["reason"]) == ("Warning", "Invalid")

        # Never submitted: nothing on the bus, nothing on the cluster.
        assert await AxonStore(bus).get("default", "broken") is None
        assert env.objects("Job") == []

        # A fixed generation is submitted (generation 2 of the object).
        await asyncio.to_thread(
            custom(env).patch_namespaced_custom_object,
            GROUP,
            "v1alpha1",
            "default",
            "axons",
            "broken",
            {"spec": yaml.safe_load(BROKEN.replace("Trian", "Train"))["spec"]},
        )

        async def valid_now() -> dict[str, Any] | None:
            status = (await read(env, "broken")).get("status") or {}
            return status if status.get("observedGeneration") == 2 else None

        fixed = await plane.until(valid_now, "generation 2 observed")
        assert [c["status"] for c in fixed["conditions"]] == ["True", "True"]
        await plane.until(lambda: task_jobs(env, "Train"), "the fixed Axon's Job")
