"""Opt-in: the kubernetes backend and the lifecycle watcher on a real cluster (KUBECONFIG).

Runs a one-task Axon (busybox) in the namespace RANVIER_E2E_NAMESPACE (default `default`),
expects Pending/Running/Succeeded from the watcher, then deletes the anchor ConfigMap and
expects the garbage collector to delete the Job it owned.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from events.model import ActionRequest, LifecycleData
from events.watchers.lifecycle import LifecycleWatcher
from executors.backends import k8s_objects as k8s
from executors.backends.kubernetes import KubernetesBackend
from sensors.loader import load_axon_text

REASON = "no KUBECONFIG set: the real-cluster test needs a cluster (kind, minikube, ...)"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AXON = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: ranvier-e2e, namespace: NAMESPACE}
spec:
  tasks:
    - name: hello
      container:
        image: busybox:1.36.1
        command: [sh, -c, "echo hello from ranvier; ls $DATA_PATH"]
"""


@pytest.fixture
def kubeconfig() -> str:
    path = os.environ.get("KUBECONFIG")
    if not path:
        print(f"skipped: {REASON}", file=sys.stderr)  # printed, as the skip reason is
        pytest.skip(REASON)
    return path


async def test_a_job_runs_is_reported_and_is_owned(kubeconfig: str) -> None:
    namespace = os.environ.get("RANVIER_E2E_NAMESPACE", "default")
    axon = load_axon_text(AXON.replace("NAMESPACE", namespace))
    backend = KubernetesBackend.from_config(kubeconfig=kubeconfig, poll_interval=1.0)
    events: list[LifecycleData] = []
    succeeded = asyncio.Event()

    async def publish(data: LifecycleData) -> None:
        events.append(data)
        if data.phase == "Succeeded":
            succeeded.set()

    request = ActionRequest(
        axon="ranvier-e2e",
        namespace=namespace,
        sensor="e2e",
        sensor_run_id="e2e",
        step=0,
        kind="resourceExecutor",
        task="hello",
    )
    async with LifecycleWatcher(backend.api_client, publish, namespace=namespace):
        outcome = await backend.run(request, axon, Path.cwd())
        assert outcome.phase == "Succeeded", outcome.message
        await succeeded.wait()
    assert [e.phase for e in events if e.run_id == outcome.run_id][-1] == "Succeeded"
    job = outcome.outputs["job"]
    await backend.delete_axon(axon.metadata.namespace, axon.metadata.name)
    from kubernetes import client

    batch = client.BatchV1Api(backend.api_client)

    async def job_status() -> int:
        try:
            await asyncio.to_thread(batch.read_namespaced_job, job, namespace)
        except client.ApiException as exc:
            return int(exc.status)
        return 200

    # Polling the API is the only way to see the garbage collector at work.
    while (status := await job_status()) == 200:  # noqa: ASYNC110  # see above
        await asyncio.sleep(1.0)
    assert status == 404
    assert k8s.anchor_name("ranvier-e2e") == "ranvier-axon-ranvier-e2e"
