"""Pod logs of a run (`ranvier logs` on the kubernetes backend).

A run's record names its cluster object (a Job, SparkApplication or TFJob); its pods are found
by the label the controller of that kind puts on them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from executors.backends.kubernetes.api import ClusterError

# What a run's record names (its outputs' key) -> the label its pods carry, and their container.
POD_SELECTORS: Final[dict[str, tuple[str, str | None]]] = {
    "job": ("job-name", "main"),
    "sparkapplication": ("sparkoperator.k8s.io/app-name", None),
    "tfjob": ("training.kubeflow.org/job-name", "tensorflow"),
}


def run_object(outputs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind key, name) of the cluster object a run's record names, or None (a local run)."""
    for key in POD_SELECTORS:
        value = outputs.get(key)
        name = value[0] if isinstance(value, list) and value else value
        if isinstance(name, str) and name:
            return key, name
    return None


async def _run_pods(core: Any, namespace: str, kind: str, name: str) -> list[str]:
    """The names of a run's pods (a Spark run: its driver), sorted; a ClusterError when none
    is left (finished pods go with their Job after its TTL)."""
    from kubernetes import client

    label = POD_SELECTORS[kind][0]
    try:
        resp: Any = await asyncio.to_thread(
            core.list_namespaced_pod,
            namespace,
            label_selector=f"{label}={name}",
            _preload_content=False,
        )
    except client.ApiException as exc:
        if exc.status != 404:
            raise ClusterError(f"listing the pods of {name}: {exc.status} {exc.reason}") from None
        resp = None  # no pods at all in the namespace
    items = json.loads(resp.data).get("items") or [] if resp is not None else []
    pods = sorted(
        str(meta["name"])
        for pod in items
        if ((meta := pod.get("metadata") or {}).get("labels") or {}).get(label) == name
        and (kind != "sparkapplication" or (meta.get("labels") or {}).get("spark-role") == "driver")
    )
    if not pods:
        raise ClusterError(
            f"no pods of {name} in namespace {namespace} are left",
            hint="finished pods are removed with their Job (ttlSecondsAfterFinished)",
        )
    return pods


async def run_log_chunks(
    api_client: Any, namespace: str, kind: str, name: str, *, follow: bool = False
) -> AsyncIterator[tuple[str, bytes]]:
    """(pod name, bytes) of the logs of a run's pods, pod by pod (a Spark run: its driver);
    with `follow`, each pod's log until it ends. A ClusterError when no pod is left (finished
    pods go with their Job after its TTL)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    container = POD_SELECTORS[kind][1]
    pods = await _run_pods(core, namespace, kind, name)
    for pod in pods:
        kwargs: dict[str, Any] = {"follow": follow, "_preload_content": False}
        if container is not None:
            kwargs["container"] = container
        try:
            stream: Any = await asyncio.to_thread(
                core.read_namespaced_pod_log, pod, namespace, **kwargs
            )
        except client.ApiException as exc:
            raise ClusterError(f"reading the log of pod {pod}: {exc.status} {exc.reason}") from None
        chunks = stream.stream(4096, decode_content=True)
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, b"")
                if not chunk:
                    break
                yield pod, chunk
        finally:
            stream.release_conn()
