"""Spark and TFJob runs on an emulated cluster: the executor creates the operator's object, its
lifecycle follows the object's status (as the operators write it), and deleting the Axon deletes
the objects. The test plays the operators: it writes `status` through the status subresource.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client

from events.bus import Bus
from events.server import EmbeddedServer
from executors.backends import k8s_objects as k8s
from ranvier.app import axon_status
from sensors.axons import AxonStore
from sensors.loader import load_axon_text
from tests.integration.k8s_kit import Env, env
from tests.integration.test_k8s_pipeline import control_plane
from tests.unit.k8s_validation import validate

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

AXON = """
apiVersion: myelinproj.io/v1alpha1
kind: Axon
metadata: {name: ops}
spec:
  tasks:
    - name: Aggregate
      spark:
        image: spark:3.5.1
        sparkSpec: {class: org.example.Agg, jars: [local:///opt/app/agg.jar]}
    - name: DistTrain
      train:
        image: tf:2
        command: [python, dist.py]
        tfJobSpec:
          cleanPodPolicy: Running
          tfReplicaSpecs:
            Worker: {replicas: 2, restartPolicy: Never}
  sensors:
    - name: Go
      tasks:
        - resourceExecutor: {task: Aggregate}
        - trainer: {task: DistTrain}
"""

SPARK = ("sparkoperator.k8s.io", "v1beta2", "sparkapplications")
TFJOB = ("kubeflow.org", "v1", "tfjobs")


def install_operators(env: Env) -> None:
    for group, version, plural in (SPARK, TFJOB):
        env.cluster.resources[f"{group}/{version}/{plural}"] = kmock.ResourceInfo(namespaced=True)


async def set_status(env: Env, api: tuple[str, str, str], name: str, status: Any) -> None:
    group, version, plural = api
    await asyncio.to_thread(
        client.CustomObjectsApi(env.api).patch_namespaced_custom_object_status,
        group,
        version,
        "default",
        plural,
        name,
        {"status": status},
    )


def created(env: Env, kind: str) -> list[dict[str, Any]]:
    return env.objects(kind)


def reported(env: Env, kind: str) -> str | None:
    (obj,) = env.objects(kind)
    found = (obj["metadata"].get("annotations") or {}).get("ranvier.dev/reported")
    return str(found) if found is not None else None


async def test_spark_then_tfjob_run_to_the_end_from_their_status(
    bus: Bus, nats_server: EmbeddedServer, env: Env, tmp_path: Path
) -> None:
    install_operators(env)
    axon = load_axon_text(AXON, "ops.yaml")
    async with control_plane(bus, env, nats_server, tmp_path) as plane:
        await AxonStore(bus).submit(axon)
        (app,) = await plane.until(lambda: created(env, "SparkApplication"), "SparkApplication")
        validate(app)
        assert created(env, "TFJob") == []  # step 2 waits for step 1
        name = app["metadata"]["name"]
        await set_status(env, SPARK, name, {"applicationState": {"state": "RUNNING"}})
        await set_status(env, SPARK, name, {"applicationState": {"state": "COMPLETED"}})

        # the watcher role follows the operators' objects too (and marks what it reported)
        await plane.until(lambda: reported(env, "SparkApplication") == "Succeeded", "reported")
        (tfjob,) = await plane.until(lambda: created(env, "TFJob"), "TFJob")
        validate(tfjob)
        done = {"conditions": [{"type": "Succeeded", "status": "True", "reason": "TFJobSucceeded"}]}
        await set_status(env, TFJOB, tfjob["metadata"]["name"], done)

        stored = await AxonStore(bus).get("default", "ops")
        assert stored is not None

        async def finished() -> dict[str, Any] | None:
            status = await axon_status(bus, stored)
            runs = {t["name"]: [r["phase"] for r in t["runs"]] for t in status["tasks"]}
            sensors = [r["phase"] for s in status["sensors"] for r in s["runs"]]
            wanted = {"Aggregate": ["Succeeded"], "DistTrain": ["Succeeded"]}
            done = all(runs.get(k) == v for k, v in wanted.items()) and sensors == ["Succeeded"]
            return status if done else None

        await plane.until(finished, "both runs and the sensor run Succeeded")

        await AxonStore(bus).delete("default", "ops")
        await plane.until(
            lambda: not created(env, "SparkApplication") and not created(env, "TFJob"),
            "the operators' objects deleted with the Axon",
        )
    assert tfjob["metadata"]["labels"][k8s.L_TASK] == "DistTrain"


async def test_a_failed_spark_application_fails_the_run_with_its_message(
    bus: Bus, nats_server: EmbeddedServer, env: Env, tmp_path: Path
) -> None:
    install_operators(env)
    axon = load_axon_text(AXON, "ops.yaml")
    async with control_plane(bus, env, nats_server, tmp_path) as plane:
        await AxonStore(bus).submit(axon)
        (app,) = await plane.until(lambda: created(env, "SparkApplication"), "SparkApplication")
        failed = {"applicationState": {"state": "FAILED", "errorMessage": "driver OOMKilled"}}
        await set_status(env, SPARK, app["metadata"]["name"], failed)
        stored = await AxonStore(bus).get("default", "ops")
        assert stored is not None

        async def run() -> dict[str, Any] | None:
            status = await axon_status(bus, stored)
            (task,) = [t for t in status["tasks"] if t["name"] == "Aggregate"]
            runs = task["runs"]
            return runs[0] if runs and runs[0]["phase"] == "Failed" else None

        failed_run = await plane.until(run, "the spark run Failed")
        assert "driver OOMKilled" in failed_run["message"]
        assert created(env, "TFJob") == []
