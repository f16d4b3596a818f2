"""The cluster as the backend calls it: the synchronous `kubernetes` client in worker threads.

Bodies go in and come out as plain dicts (the objects `executors.backends.k8s_objects`
renders), and refusals become `ClusterError`s that say what to check.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from events.errors import RanvierError
from executors.backends import k8s_objects as k8s

log = structlog.get_logger(__name__)


class ClusterError(RanvierError, RuntimeError):
    """The cluster refused or could not do what a run needs (say what to check)."""


def api_client_for(
    *, api_url: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> Any:
    """A `kubernetes.client.ApiClient`: for `api_url` when given (plain HTTP, no credentials:
    tests and `kubectl proxy`), else from a kubeconfig (`KUBECONFIG`, `~/.kube/config`), else
    the in-cluster service account."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if api_url:
        configuration.host = api_url.rstrip("/")
        return client.ApiClient(configuration)
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]  # untyped in kubernetes
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except (config.ConfigException, OSError, TypeError):
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]  # untyped there
                client_configuration=configuration
            )
        except config.ConfigException:
            raise ClusterError(
                "no Kubernetes configuration found",
                hint="set KUBECONFIG, run inside a pod with a service account, or pass "
                "--kube-api-url",
            ) from None
    return client.ApiClient(configuration)


def operated_api(kind: str) -> tuple[str, str, str]:
    """(group, version, plural) of an operator's kind (SparkApplication or TFJob)."""
    if kind == k8s.SPARK_KIND:
        group, version = k8s.SPARK_API.split("/")
        return group, version, k8s.SPARK_PLURAL
    group, version = k8s.TFJOB_API.split("/")
    return group, version, k8s.TFJOB_PLURAL


class ClusterApi:
    """The API groups the backend uses, and the calls it makes through them."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """`fn(*args, **kwargs)` in a worker thread; the response body as a dict."""
        resp = await asyncio.to_thread(fn, *args, _preload_content=False, **kwargs)
        data = resp.data
        return json.loads(data) if data else {}

    @staticmethod
    def status(exc: BaseException) -> int | None:
        """The HTTP status of an API error, None for anything else."""
        from kubernetes.client import ApiException

        return exc.status if isinstance(exc, ApiException) else None

    def error(self, exc: BaseException, what: str) -> ClusterError:
        """`exc` as a ClusterError about `what`; a refusal points at the executor's RBAC."""
        status = self.status(exc)
        reason = getattr(exc, "reason", None) or str(exc)
        if status in (401, 403):
            return ClusterError(
                f"{what}: the cluster refused ({status} {reason})",
                hint="check the executor's RBAC (manifests/base/rbac.yaml)",
            )
        return ClusterError(f"{what}: {status or ''} {reason}".strip())

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object; if it already exists, return the existing one."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        table: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "Job": (self.batch.create_namespaced_job, self.batch.read_namespaced_job),
            "ConfigMap": (
                self.core.create_namespaced_config_map,
                self.core.read_namespaced_config_map,
            ),
            "PersistentVolumeClaim": (
                self.core.create_namespaced_persistent_volume_claim,
                self.core.read_namespaced_persistent_volume_claim,
            ),
            "Service": (self.core.create_namespaced_service, self.core.read_namespaced_service),
            "Deployment": (
                self.apps.create_namespaced_deployment,
                self.apps.read_namespaced_deployment,
            ),
        }
        create, read = table[kind]
        try:
            created = await self.call(create, ns, dict(obj))
        except Exception as exc:
            if self.status(exc) != 409:
                raise self.error(exc, f"creating {kind} {ns}/{name}") from None
        else:
            log.info("k8s.created", kind=kind, namespace=ns, name=name)
            return created
        return await self.call(read, name, ns)

    async def create_operated(self, obj: Mapping[str, Any]) -> None:
        """Create a SparkApplication or TFJob; one that exists already is fine (a retry)."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        group, version, plural = operated_api(kind)
        try:
            await self.call(
                self.custom.create_namespaced_custom_object, group, version, ns, plural, dict(obj)
            )
        except Exception as exc:
            status = self.status(exc)
            if status == 404:
                raise ClusterError(
                    f"creating {kind} {ns}/{name}: the cluster does not know {kind}",
                    hint="install the Spark operator (kubeflow/spark-operator)"
                    if kind == k8s.SPARK_KIND
                    else "install the Kubeflow training operator (kubeflow/training-operator)",
                ) from None
            if status != 409:
                raise self.error(exc, f"creating {kind} {ns}/{name}") from None
        else:
            log.info("k8s.created", kind=kind, namespace=ns, name=name)

    async def read_run_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A run's Job, SparkApplication or TFJob as it is now; None when there is none."""
        try:
            if kind == "Job":
                return await self.call(self.batch.read_namespaced_job, name, namespace)
            group, version, plural = operated_api(kind)
            return await self.call(
                self.custom.get_namespaced_custom_object, group, version, namespace, plural, name
            )
        except Exception as exc:
            if self.status(exc) == 404:
                return None
            raise self.error(exc, f"reading {kind} {namespace}/{name}") from None

    def reader(self, kind: str) -> Callable[..., Any]:
        """`read(name, namespace, **kwargs)` of a run's object: a Job's status, or a
        SparkApplication or TFJob."""
        if kind == "Job":
            return self.batch.read_namespaced_job_status
        group, version, plural = operated_api(kind)

        def read(name: str, namespace: str, **kwargs: Any) -> Any:
            return self.custom.get_namespaced_custom_object(
                group, version, namespace, plural, name, **kwargs
            )

        return read

    async def delete_run_object(self, kind: str, namespace: str, name: str) -> None:
        """Delete a run's Job, SparkApplication or TFJob, pods in the background; gone already
        is fine, and any other failure is logged (the run ends cancelled either way)."""
        try:
            if kind == "Job":
                await self.call(
                    self.batch.delete_namespaced_job,
                    name,
                    namespace,
                    propagation_policy="Background",
                )
            else:
                group, version, plural = operated_api(kind)
                await self.call(
                    self.custom.delete_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    propagation_policy="Background",
                )
        except Exception as exc:
            if self.status(exc) != 404:
                log.warning("k8s.cancel_failed", name=name, error=str(exc))
