"""Settings, the owner every object of an Axon hangs from, and the labels of a run's objects.

Every object carries an ownerReference to the Axon custom object when one exists in the
namespace, else to a per-Axon ConfigMap anchor; deleting either deletes everything the Axon
created, through Kubernetes' garbage collector. The store's claim is owned the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from events.model import ActionRequest
from executors.backends.k8s_objects.names import (
    A_ACTION,
    A_AXON,
    A_NAMESPACE,
    A_RUN,
    A_TASK,
    L_AXON,
    L_MODEL_VERSION,
    L_ROLE,
    L_RUN,
    L_TASK,
    L_VERSION,
    MANAGED_BY,
    MANAGER,
    ROLE_ANCHOR,
    ROLE_STORE,
    RenderError,
    anchor_name,
    claim_name,
    label_value,
)
from sensors.spec import Axon

# Settings and ownership


@dataclass(frozen=True)
class RenderSettings:
    """What the cluster deployment decides, not the Axon (from RANVIER_* settings)."""

    registry: str | None = None
    registry_secret: str | None = None
    nats_url: str | None = None
    kaniko_image: str = "gcr.io/kaniko-project/executor:v1.23.2"
    git_image: str = "alpine/git:2.45.2"
    busybox_image: str = "busybox:1.36.1"
    image_pull_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Owner:
    """The object every object of an Axon is owned by (Axon custom object or anchor ConfigMap)."""

    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        """The ownerReference: not a controller, so nothing else is implied."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "blockOwnerDeletion": False,
        }


PLACEHOLDER_UID: Final = "00000000-0000-0000-0000-000000000000"


def placeholder_owner(axon: Axon) -> Owner:
    """The anchor as `ranvier k8s render` shows it (the cluster assigns the uid)."""
    return Owner("v1", "ConfigMap", anchor_name(axon.metadata.name), PLACEHOLDER_UID)


@dataclass(frozen=True)
class Run:
    """One action run, as far as rendering needs it."""

    request: ActionRequest
    run_id: str
    model_version: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def base_labels(axon: Axon, role: str) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGER,
        L_AXON: label_value(axon.metadata.name),
        L_ROLE: role,
    }


def object_meta(
    name: str,
    axon: Axon,
    owner: Owner | None,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": axon.metadata.namespace,
        "labels": dict(labels),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def run_labels(axon: Axon, task: str, run: Run, role: str) -> dict[str, str]:
    """Labels of a run's objects: axon, task, run, version (spec generation), model version."""
    labels = base_labels(axon, role)
    labels[L_TASK] = label_value(task)
    labels[L_RUN] = label_value(run.run_id)
    labels[L_VERSION] = str(run.request.generation)
    if run.model_version is not None:
        labels[L_MODEL_VERSION] = label_value(run.model_version)
    labels.update(run.labels)
    return labels


def run_annotations(axon: Axon, task: str, run: Run) -> dict[str, str]:
    """Exact names and the action request, for the lifecycle watcher."""
    return {
        A_AXON: axon.metadata.name,
        A_NAMESPACE: axon.metadata.namespace,
        A_TASK: task,
        A_RUN: run.run_id,
        A_ACTION: json.dumps(run.request.model_dump(mode="json"), sort_keys=True),
    }


def anchor_config_map(axon: Axon) -> dict[str, Any]:
    """The ConfigMap that owns an Axon's objects when there is no Axon custom object."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(
            anchor_name(axon.metadata.name),
            axon,
            None,
            base_labels(axon, ROLE_ANCHOR),
            {
                A_AXON: axon.metadata.name,
                "ranvier.dev/purpose": "Owns the objects this Axon created; delete it to "
                "delete them all.",
            },
        ),
        "data": {"axon": axon.metadata.name},
    }


def store_claim(axon: Axon, owner: Owner | None) -> dict[str, Any] | None:
    """The PersistentVolumeClaim of the Axon's volumeClaimTemplate, or None."""
    template = axon.spec.volume_claim_template
    name = claim_name(axon)
    if template is None or name is None:
        return None
    spec: dict[str, Any] = {"accessModes": list(template.spec.access_modes)}
    resources: dict[str, Any] = {}
    if template.spec.resources.requests:
        resources["requests"] = dict(template.spec.resources.requests)
    if template.spec.resources.limits:
        resources["limits"] = dict(template.spec.resources.limits)
    if not resources.get("requests", {}).get("storage"):
        raise RenderError(
            f"volumeClaimTemplate {template.metadata.name!r} of axon {axon.metadata.name!r} "
            f"has no resources.requests.storage",
            hint="add e.g. `resources: {requests: {storage: 1Gi}}`",
        )
    spec["resources"] = resources
    if template.spec.storage_class_name is not None:
        spec["storageClassName"] = template.spec.storage_class_name
    if template.spec.volume_mode is not None:
        spec["volumeMode"] = template.spec.volume_mode
    if template.spec.volume_name is not None:
        spec["volumeName"] = template.spec.volume_name
    labels = {**base_labels(axon, ROLE_STORE), **template.metadata.labels}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(name, axon, owner, labels, dict(template.metadata.annotations)),
        "spec": spec,
    }
