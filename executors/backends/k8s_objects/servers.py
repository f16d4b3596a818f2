"""The model servers of a deploy task: a Deployment and a Service per (task, model version).

They are re-labelled by each deploy run that routes to them; the pods are scraped by
Prometheus for the metrics Alerts watch.
"""

from __future__ import annotations

from typing import Any

from executors.backends.k8s_objects.names import (
    A_IMAGE,
    L_DEPLOYMENT,
    L_MODEL_VERSION,
    MANAGED_BY,
    MANAGER,
    ROLE_SERVER,
    SERVER_PORT,
    SERVICE_PORT,
    label_value,
    server_name,
)
from executors.backends.k8s_objects.ownership import (
    Owner,
    RenderSettings,
    Run,
    object_meta,
    run_annotations,
    run_labels,
)
from executors.backends.k8s_objects.pods import model_path, pod_spec
from sensors.spec import Axon, Task


def server_objects(
    axon: Axon,
    task: Task,
    run: Run,
    image: str,
    *,
    settings: RenderSettings,
    owner: Owner | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment and Service of a deploy task serving `run.model_version`."""
    assert task.deploy is not None
    version = run.model_version or "latest"
    name = server_name(axon.metadata.name, task.name, version)
    selector = {MANAGED_BY: MANAGER, L_DEPLOYMENT: name}
    labels = {**run_labels(axon, task.name, run, ROLE_SERVER), L_DEPLOYMENT: name}
    labels[L_MODEL_VERSION] = label_value(version)
    pod = pod_spec(
        axon,
        task,
        run,
        image,
        settings,
        model_path=model_path(task, run),
        restart="Always",
        port=SERVER_PORT,
    )
    annotations = {**run_annotations(axon, task.name, run), A_IMAGE: image}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name, axon, owner, labels, annotations),
        "spec": {
            "replicas": task.deploy.replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": _scraped(labels), "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, axon, owner, labels, annotations),
        "spec": {
            "selector": selector,
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
    return deployment, service


def _scraped(labels: dict[str, str]) -> dict[str, Any]:
    """A server pod's metadata: its labels, and where Prometheus scrapes its metrics."""
    return {
        "labels": labels,
        "annotations": {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(SERVER_PORT),
            "prometheus.io/path": "/metrics",
        },
    }


def service_url(axon: Axon, task: str, version: str) -> str:
    """The in-cluster URL of a deploy task's model server for one version (the router's)."""
    name = server_name(axon.metadata.name, task, version)
    return f"http://{name}.{axon.metadata.namespace}.svc:{SERVICE_PORT}"
