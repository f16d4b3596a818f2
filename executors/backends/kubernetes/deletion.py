"""Deleting what an Axon created: everything when the Axon is deleted, and the model servers
no route uses any more.

Objects are found by the Axon's label and checked here too, so a server that ignores selectors
deletes nothing else; each deletion is idempotent (another executor may have done it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog

from events.model import utcnow
from executors.backends import k8s_objects as k8s
from executors.backends.kubernetes.api import ClusterApi, operated_api

log = structlog.get_logger(__name__)


def _labels(item: Mapping[str, Any]) -> dict[str, Any]:
    return dict((item.get("metadata") or {}).get("labels") or {})


async def _delete(
    api: ClusterApi, delete: Callable[..., Any], name: str, namespace: str, what: str
) -> bool:
    """Delete one object (its dependents in the background); False when it was gone already,
    a ClusterError about `what` when the cluster refused."""
    try:
        await api.call(delete, name, namespace, propagation_policy="Background")
    except Exception as exc:
        if api.status(exc) != 404:
            raise api.error(exc, what) from None
        return False
    return True


async def _delete_owned(
    api: ClusterApi,
    kind: str,
    list_fn: Callable[..., Any],
    delete_fn: Callable[..., Any],
    *,
    namespace: str,
    axon: str,
) -> list[str]:
    """Delete the objects of one built-in kind that ranvier made for an Axon; the `Kind/name`s
    deleted (none when the kind is not served)."""
    selector = f"{k8s.MANAGED_BY}={k8s.MANAGER},{k8s.L_AXON}={k8s.label_value(axon)}"
    try:
        listed = await api.call(list_fn, namespace, label_selector=selector)
    except Exception as exc:
        if api.status(exc) == 404:
            return []
        raise api.error(exc, f"listing {kind}s of Axon {namespace}/{axon}") from None
    deleted: list[str] = []
    for item in listed.get("items") or []:
        labels = _labels(item)
        if labels.get(k8s.L_AXON) != k8s.label_value(axon) or (
            labels.get(k8s.MANAGED_BY) != k8s.MANAGER
        ):
            continue
        name = item["metadata"]["name"]
        if await _delete(api, delete_fn, name, namespace, f"deleting {kind} {name}"):
            deleted.append(f"{kind}/{name}")
    return deleted


async def _delete_operated(api: ClusterApi, kind: str, namespace: str, axon: str) -> list[str]:
    """Delete an Axon's SparkApplications or TFJobs; none when the operator is not installed."""
    group, version, plural = operated_api(kind)
    try:
        listed = await api.call(
            api.custom.list_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            label_selector=f"{k8s.MANAGED_BY}={k8s.MANAGER},{k8s.L_AXON}={k8s.label_value(axon)}",
        )
    except Exception as exc:
        if api.status(exc) == 404:
            return []  # the operator is not installed: nothing of this kind
        raise api.error(exc, f"listing {kind}s of Axon {namespace}/{axon}") from None
    deleted: list[str] = []
    for item in listed.get("items") or []:
        if _labels(item).get(k8s.L_AXON) != k8s.label_value(axon):
            continue
        name = item["metadata"]["name"]
        with contextlib.suppress(Exception):  # gone already, or being deleted
            await api.call(
                api.custom.delete_namespaced_custom_object, group, version, namespace, plural, name
            )
            deleted.append(f"{kind}/{name}")
    return deleted


async def delete_axon(api: ClusterApi, namespace: str, axon: str) -> list[str]:
    """Delete what an Axon created: its Jobs, Deployments, Services, anchor ConfigMap (whose
    garbage collection takes the store's claim along), SparkApplications and TFJobs. Returns
    the `Kind/name`s deleted."""
    owned: tuple[tuple[str, Callable[..., Any], Callable[..., Any]], ...] = (
        ("Job", api.batch.list_namespaced_job, api.batch.delete_namespaced_job),
        ("Deployment", api.apps.list_namespaced_deployment, api.apps.delete_namespaced_deployment),
        ("Service", api.core.list_namespaced_service, api.core.delete_namespaced_service),
        ("ConfigMap", api.core.list_namespaced_config_map, api.core.delete_namespaced_config_map),
    )
    deleted: list[str] = []
    for kind, list_fn, delete_fn in owned:
        deleted += await _delete_owned(
            api, kind, list_fn, delete_fn, namespace=namespace, axon=axon
        )
    for kind in (k8s.SPARK_KIND, k8s.TFJOB_KIND):
        deleted += await _delete_operated(api, kind, namespace, axon)
    log.info("k8s.axon_deleted", namespace=namespace, axon=axon, deleted=deleted)
    return deleted


async def delete_unrouted_servers(
    api: ClusterApi, namespace: str, axon: str, routed: set[str], *, older_than: float
) -> list[str]:
    """Delete the model-server Deployments (and their Services) of an Axon whose name is not in
    `routed` and that were created more than `older_than` seconds ago (a younger one may belong
    to a deploy that has not written its routes yet). The names deleted."""
    selector = (
        f"{k8s.MANAGED_BY}={k8s.MANAGER},{k8s.L_AXON}={k8s.label_value(axon)},"
        f"{k8s.L_ROLE}={k8s.ROLE_SERVER}"
    )
    try:
        listed = await api.call(
            api.apps.list_namespaced_deployment, namespace, label_selector=selector
        )
    except Exception as exc:
        raise api.error(exc, f"listing the servers of Axon {namespace}/{axon}") from None
    now = utcnow()
    deleted: list[str] = []
    for item in listed.get("items") or []:
        meta = item.get("metadata") or {}
        labels = meta.get("labels") or {}
        name = str(meta.get("name"))
        if (
            labels.get(k8s.L_AXON) != k8s.label_value(axon)
            or labels.get(k8s.L_ROLE) != k8s.ROLE_SERVER
            or name in routed
        ):
            continue
        created = _timestamp(meta.get("creationTimestamp"))
        if created is None or (now - created).total_seconds() < older_than:
            continue
        for delete in (api.apps.delete_namespaced_deployment, api.core.delete_namespaced_service):
            await _delete(api, delete, name, namespace, f"deleting server {name}")
        deleted.append(name)
    if deleted:
        log.info("k8s.servers_collected", namespace=namespace, axon=axon, deleted=deleted)
    return deleted


def _timestamp(value: object) -> datetime | None:
    """An API server timestamp (`2025-01-01T00:00:00Z`) as an aware datetime, else None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
