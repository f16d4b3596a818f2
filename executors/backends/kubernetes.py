"""The kubernetes backend: an Axon's actions as Jobs, Deployments and Services in its namespace.

`run()` has the local backend's shape, so the runner drives either through
`executors.backends.base.Backend`: it creates the objects (`executors.backends.k8s_objects`
renders them), awaits `on_running` once the run's Job or Deployment exists, and returns a
`RunOutcome` when the Job finished or every model server is available. It polls the run's own
object for that; publishing lifecycle events for everyone else is the lifecycle watcher's job
(`events.watchers.lifecycle`), which gives its events the same ids as the runner's would have
(`lifecycle_event_id`), so the bus keeps one of each.

Objects belong to the Axon: to the Axon custom object when it exists in the namespace, else to a
per-Axon ConfigMap anchor created on first use; deleting that owner deletes them all.

Images: a task with `image` runs it. A task with `imageBuild` runs
`<registry>/<repositoryName>:<content hash>`; unless `check_image_exists` finds that tag in the
registry already, a kaniko Job (one per tag, shared by concurrent runs) builds and pushes it
first. s2i builds are not supported: such a task runs only when its image already exists.

Cancelling a run deletes its Job (and the pods, in the background). Cancelling the coroutine
that awaits `run()` does not: the Job keeps running and the watcher reports how it ends.
The client is the synchronous `kubernetes` client, called in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx
import structlog

from events.errors import RanvierError
from events.model import ActionRequest, LifecycleData, Phase, new_id, utcnow
from events.watchers.lifecycle import (
    MERGE_PATCH,
    deployment_phase,
    job_phase,
    spark_phase,
    tfjob_phase,
)
from executors.backends import k8s_objects as k8s
from executors.backends.base import Lost, lifecycle
from executors.backends.local import RunOutcome
from executors.registry import parse_metrics
from sensors.spec import Axon, Deployer, Task

log = structlog.get_logger(__name__)

DEFAULT_POLL: Final = 2.0
_MANIFEST_TYPES: Final = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


class ClusterError(RanvierError, RuntimeError):
    """The cluster refused or could not do what a run needs (say what to check)."""


@dataclass(frozen=True)
class KubeStarted:
    """A run's Job or Deployment exists: what the runner reports as Running."""

    run_id: str
    kind: str
    names: tuple[str, ...]
    namespace: str
    image: str | None = None

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The Running lifecycle payload."""
        outputs: dict[str, Any] = {self.kind.lower(): list(self.names)}
        if self.image is not None:
            outputs["image"] = self.image
        return lifecycle(request, self.run_id, "Running", outputs=outputs)


OnRunning = Callable[[KubeStarted], Awaitable[None]]
AllocateVersion = Callable[[str, str, str], Awaitable[int]]
"""`(namespace, axon, task) -> version`: the next model version number of a train task."""


@dataclass
class _Live:
    request: ActionRequest
    namespace: str
    jobs: list[str] = field(default_factory=list)
    operated: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of the SparkApplications and TFJobs the run created."""
    cancel_reason: str | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


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


class KubernetesBackend:
    """Runs Axon actions on a Kubernetes cluster."""

    name: Final = "kubernetes"

    def __init__(
        self,
        api_client: Any,
        *,
        settings: k8s.RenderSettings | None = None,
        poll_interval: float = DEFAULT_POLL,
        check_image_exists: bool = True,
        registry_scheme: str = "https",
        allocate_version: AllocateVersion | None = None,
    ) -> None:
        """`api_client` is a `kubernetes.client.ApiClient` (see `from_config`).

        `allocate_version` numbers trainer runs' model versions (1, 2, 3... per task, as the
        registry needs them); without it a trainer run's version is its run id.
        """
        from kubernetes import client

        self.api_client = api_client
        self.settings = settings or k8s.RenderSettings()
        self.poll_interval = poll_interval
        self.check_image_exists = check_image_exists
        self.registry_scheme = registry_scheme
        self.allocate_version = allocate_version
        self._core = client.CoreV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._live: dict[str, _Live] = {}
        self._closed = False

    @classmethod
    def from_config(
        cls, *, kubeconfig: str | None = None, context: str | None = None, **kwargs: Any
    ) -> KubernetesBackend:
        """A backend for the cluster of a kubeconfig (or in-cluster config inside a pod)."""
        return cls(api_client_for(kubeconfig=kubeconfig, context=context), **kwargs)

    # -- API calls (sync client, in threads; bodies are plain dicts) --------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        resp = await asyncio.to_thread(fn, *args, _preload_content=False, **kwargs)
        data = resp.data
        return json.loads(data) if data else {}

    @staticmethod
    def _status(exc: BaseException) -> int | None:
        from kubernetes.client import ApiException

        return exc.status if isinstance(exc, ApiException) else None

    def _api_error(self, exc: BaseException, what: str) -> ClusterError:
        status = self._status(exc)
        reason = getattr(exc, "reason", None) or str(exc)
        if status in (401, 403):
            return ClusterError(
                f"{what}: the cluster refused ({status} {reason})",
                hint="check the executor's RBAC (manifests/base/rbac.yaml)",
            )
        return ClusterError(f"{what}: {status or ''} {reason}".strip())

    async def _create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object; if it already exists, return the existing one."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        table: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "Job": (self._batch.create_namespaced_job, self._batch.read_namespaced_job),
            "ConfigMap": (
                self._core.create_namespaced_config_map,
                self._core.read_namespaced_config_map,
            ),
            "PersistentVolumeClaim": (
                self._core.create_namespaced_persistent_volume_claim,
                self._core.read_namespaced_persistent_volume_claim,
            ),
            "Service": (self._core.create_namespaced_service, self._core.read_namespaced_service),
            "Deployment": (
                self._apps.create_namespaced_deployment,
                self._apps.read_namespaced_deployment,
            ),
        }
        create, read = table[kind]
        try:
            created = await self._call(create, ns, dict(obj))
        except Exception as exc:
            if self._status(exc) != 409:
                raise self._api_error(exc, f"creating {kind} {ns}/{name}") from None
        else:
            log.info("k8s.created", kind=kind, namespace=ns, name=name)
            return created
        return await self._call(read, name, ns)

    # -- ownership, store, images ------------------------------------------------------------

    async def owner(self, axon: Axon) -> k8s.Owner:
        """The Axon custom object if it exists, else the per-Axon ConfigMap anchor."""
        ns, name = axon.metadata.namespace, axon.metadata.name
        try:
            found = await self._call(
                self._custom.get_namespaced_custom_object,
                k8s.GROUP,
                k8s.VERSION,
                ns,
                k8s.PLURAL,
                name,
            )
        except Exception as exc:
            if self._status(exc) not in (404, 403):
                raise self._api_error(exc, f"reading Axon {ns}/{name}") from None
        else:
            uid = (found.get("metadata") or {}).get("uid")
            if uid:
                return k8s.Owner(f"{k8s.GROUP}/{k8s.VERSION}", k8s.KIND, name, uid)
        anchor = await self._create(k8s.anchor_config_map(axon))
        uid = (anchor.get("metadata") or {}).get("uid")
        if not uid:
            raise ClusterError(
                f"the API server returned ConfigMap {ns}/{k8s.anchor_name(name)} without a uid",
                hint="the objects of this Axon cannot be owned; is this a real API server?",
            )
        return k8s.Owner("v1", "ConfigMap", k8s.anchor_name(name), uid)

    async def image_exists(self, image: str) -> bool | None:
        """Whether `registry/repo:tag` exists (registry API v2); None when it cannot tell."""
        host, _, rest = image.partition("/")
        repo, _, tag = rest.rpartition(":")
        url = f"{self.registry_scheme}://{host}/v2/{repo}/manifests/{tag}"
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                resp = await http.head(url, headers={"Accept": _MANIFEST_TYPES})
        except httpx.HTTPError as exc:
            log.info("k8s.registry_unreachable", image=image, error=str(exc))
            return None
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        log.info("k8s.registry_unknown", image=image, status=resp.status_code)
        return None

    async def ensure_image(self, axon: Axon, task: Task, owner: k8s.Owner, live: _Live) -> str:
        """The image a task runs, building it first (kaniko Job) when it has to."""
        image = k8s.image_ref(axon, task, self.settings)
        build = task.body.image_build
        if build is None:
            return image
        if self.check_image_exists and build.check_image_exists and await self.image_exists(image):
            log.info("k8s.image_exists", task=task.name, image=image)
            return image
        job = k8s.build_job(axon, task, self.settings, owner)  # RenderError for s2i
        name = job["metadata"]["name"]
        await self._create(job)
        live.jobs.append(name)
        phase, message = await self._wait_job(axon.metadata.namespace, name, live)
        live.jobs.remove(name)
        if phase != "Succeeded":
            raise ClusterError(f"image build {name} for task {task.name!r} failed: {message}")
        return image

    # -- running -----------------------------------------------------------------------------

    async def run(
        self,
        request: ActionRequest,
        axon: Axon,
        axon_dir: Path,
        *,
        run_id: str | None = None,
        on_running: OnRunning | None = None,
    ) -> RunOutcome:
        """Run one action to its end (`axon_dir` is unused: sources come from artifacts).

        Never raises for the task's own failure or a cluster refusal: those come back Failed.
        """
        run_id = run_id or new_id()
        started = utcnow()
        bound = log.bind(run_id=run_id, axon=request.axon, task=request.task, kind=request.kind)
        if self._closed:
            return RunOutcome(run_id, "Failed", "cancelled: executor shut down")
        live = _Live(request, axon.metadata.namespace)
        self._live[run_id] = live
        try:
            if request.kind == "deployer":
                phase, message, outputs = await self._deploy(
                    request, axon, run_id, live, on_running
                )
            else:
                phase, message, outputs = await self._job(request, axon, run_id, live, on_running)
        except (k8s.RenderError, ClusterError) as exc:
            bound.info("task.failed", reason=str(exc))
            return RunOutcome(run_id, "Failed", str(exc), started=started)
        finally:
            self._live.pop(run_id, None)
        bound.info("task.finished", phase=phase, reason=message)
        return RunOutcome(
            run_id,
            "Succeeded" if phase == "Succeeded" else "Failed",
            message,
            outputs=outputs,
            started=started,
        )

    async def _job(
        self,
        request: ActionRequest,
        axon: Axon,
        run_id: str,
        live: _Live,
        on_running: OnRunning | None,
    ) -> tuple[Phase, str, dict[str, Any]]:
        task = k8s.check_runnable(axon, request.kind, request.task)
        owner = await self.owner(axon)
        claim = k8s.store_claim(axon, owner)
        if claim is not None:
            await self._create(claim)
        image = await self.ensure_image(axon, task, owner, live)
        version = request.params.get("version")
        if task.kind == "train" and version is None:
            version = (
                run_id
                if self.allocate_version is None
                else await self.allocate_version(
                    axon.metadata.namespace, axon.metadata.name, task.name
                )
            )
        run = k8s.Run(request, run_id, model_version=None if version is None else str(version))
        job = k8s.task_object(axon, task, run, image, settings=self.settings, owner=owner)
        name, kind = job["metadata"]["name"], job["kind"]
        if live.cancelled.is_set():
            return "Failed", live.cancel_reason or "cancelled", {}
        if kind == "Job":
            await self._create(job)
            live.jobs.append(name)
        else:
            await self._create_operated(job)
            live.operated.append((kind, name))
        if live.cancel_reason is not None:  # cancelled while the Job was being created
            await self._delete_jobs(live)
            return "Failed", live.cancel_reason, {}
        if on_running is not None:
            await on_running(KubeStarted(run_id, kind, (name,), axon.metadata.namespace, image))
        if kind == "Job":
            phase, message = await self._wait_job(axon.metadata.namespace, name, live)
        else:
            phase, message = await self._wait_operated(axon.metadata.namespace, kind, name, live)
        outputs: dict[str, Any] = {kind.lower(): name, "image": image}
        if version is not None:
            outputs.update(version=version, model_path=k8s.model_path(task, run))
        if task.kind == "train" and phase == "Succeeded":
            outputs.update(await self.job_metrics(axon.metadata.namespace, name))
        return phase, message, outputs

    async def adopt(self, request: ActionRequest, axon: Axon, run_id: str) -> RunOutcome | None:
        """Follow to its end the Job of a run another executor started and did not finish
        (it was killed); None when there is no such Job (nothing to adopt: the run is lost).

        The Job keeps running whoever watches it; what the stopped executor would have
        reported at the end (phase, model version, a trainer's metrics) is read from the Job
        and its pod, so the run finishes once, reported by its new executor.
        """
        if request.kind == "deployer":
            return None  # a deploy is re-planned, not adopted: it is quick and idempotent
        try:
            task = k8s.check_runnable(axon, request.kind, request.task)
        except k8s.RenderError:
            return None
        ns = axon.metadata.namespace
        name = k8s.job_name(axon.metadata.name, task.name, run_id)
        kind = (
            k8s.SPARK_KIND
            if task.kind == "spark"
            else k8s.TFJOB_KIND
            if k8s.is_tf_job(task)
            else "Job"
        )
        try:
            if kind == "Job":
                job = await self._call(self._batch.read_namespaced_job, name, ns)
            else:
                group, api_version, plural = self._operated_api(kind)
                job = await self._call(
                    self._custom.get_namespaced_custom_object, group, api_version, ns, plural, name
                )
        except Exception as exc:
            if self._status(exc) == 404:
                return None
            raise self._api_error(exc, f"reading {kind} {ns}/{name}") from None
        meta = job.get("metadata") or {}
        started = utcnow()
        live = _Live(request, ns)
        if kind == "Job":
            live.jobs.append(name)
        else:
            live.operated.append((kind, name))
        self._live[run_id] = live
        log.info("k8s.adopted", kind=kind, name=name, run_id=run_id, task=task.name)
        try:
            if kind == "Job":
                phase, message = await self._wait_job(ns, name, live)
            else:
                phase, message = await self._wait_operated(ns, kind, name, live)
        finally:
            self._live.pop(run_id, None)
        outputs: dict[str, Any] = {kind.lower(): name}
        image = (meta.get("annotations") or {}).get(k8s.A_IMAGE)
        if image:
            outputs["image"] = image
        version = (meta.get("labels") or {}).get(k8s.L_MODEL_VERSION)
        if version is not None:
            run = k8s.Run(request, run_id, model_version=str(version))
            number = int(version) if str(version).isdigit() else version
            outputs.update(version=number, model_path=k8s.model_path(task, run))
        if task.kind == "train" and kind == "Job" and phase == "Succeeded":
            outputs.update(await self.job_metrics(ns, name))
        return RunOutcome(
            run_id,
            "Succeeded" if phase == "Succeeded" else "Failed",
            message,
            outputs=outputs,
            started=started,
        )

    async def job_metrics(self, namespace: str, job: str) -> dict[str, Any]:
        """A finished trainer Job's metrics, from its pod's termination message.

        `ranvier.sdk.report_metrics` writes them there as well as to `MODEL_PATH/metrics.json`
        (which only the pods see). `{"metrics": {...}}`, plus `metrics_error` when the message
        is not a metrics object; nothing when no pod left a message.
        """
        try:
            pods = await self._call(
                self._core.list_namespaced_pod, namespace, label_selector=f"job-name={job}"
            )
        except Exception as exc:
            log.info("k8s.metrics_unreadable", job=job, error=str(exc))
            return {}
        for pod in pods.get("items") or []:
            if ((pod.get("metadata") or {}).get("labels") or {}).get("job-name") != job:
                continue  # a server that ignored the selector
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                if status.get("name") != "main":
                    continue
                message = ((status.get("state") or {}).get("terminated") or {}).get("message")
                if message:
                    reading = parse_metrics(message)
                    found: dict[str, Any] = {"metrics": reading.metrics}
                    if reading.error is not None:
                        found["metrics_error"] = reading.error
                    return found
        return {}

    async def _deploy(
        self,
        request: ActionRequest,
        axon: Axon,
        run_id: str,
        live: _Live,
        on_running: OnRunning | None,
    ) -> tuple[Phase, str, dict[str, Any]]:
        raw = request.params.get("deployer")
        try:
            deployer = Deployer.model_validate(raw if raw is not None else {})
        except ValueError as exc:
            raise k8s.RenderError(
                f"deployer action {request.task!r} carries no valid deployer spec: {exc}"
            ) from None
        versions: Mapping[str, Any] = request.params.get("versions") or {}
        wanted = {
            backend.name: [str(v) for v in _as_list(versions.get(backend.name, "latest"))]
            for model in deployer.models
            for backend in model.backend_models
        }
        owner = await self.owner(axon)
        claim = k8s.store_claim(axon, owner)
        if claim is not None:
            await self._create(claim)
        names: list[str] = []
        servers: list[dict[str, Any]] = []
        for model in deployer.models:
            for backend in model.backend_models:
                task = k8s.check_runnable(axon, "deployer", backend.deployer)
                image = await self.ensure_image(axon, task, owner, live)
                for version in wanted[backend.name]:
                    run = k8s.Run(request, run_id, model_version=version)
                    deployment, service = k8s.server_objects(
                        axon, task, run, image, settings=self.settings, owner=owner
                    )
                    await self._apply_server(deployment)
                    await self._create(service)
                    name = deployment["metadata"]["name"]
                    names.append(name)
                    servers.append(
                        {
                            "model": model.name,
                            "backend": backend.name,
                            "task": task.name,
                            "version": version,
                            "deployment": name,
                            "url": k8s.service_url(axon, task.name, version),
                        }
                    )
        if on_running is not None:
            await on_running(KubeStarted(run_id, "Deployment", tuple(names), live.namespace))
        for name in names:
            phase, message = await self._wait_deployment(live.namespace, name, live)
            if phase != "Succeeded":
                return phase, message, {"servers": servers}
        return "Succeeded", "", {"servers": servers}

    async def _apply_server(self, deployment: dict[str, Any]) -> None:
        """Create the Deployment, or hand an existing one to this run (labels, pod template)."""
        ns, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        try:
            await self._call(self._apps.create_namespaced_deployment, ns, deployment)
            log.info("k8s.created", kind="Deployment", namespace=ns, name=name)
            return
        except Exception as exc:
            if self._status(exc) != 409:
                raise self._api_error(exc, f"creating Deployment {ns}/{name}") from None
        meta = deployment["metadata"]
        patch = {
            "metadata": {
                "labels": meta["labels"],
                "annotations": {**meta["annotations"], "ranvier.dev/reported": None},
            },
            "spec": {
                "replicas": deployment["spec"]["replicas"],
                "template": deployment["spec"]["template"],
            },
        }
        try:
            await self._call(
                self._apps.patch_namespaced_deployment, name, ns, patch, _content_type=MERGE_PATCH
            )
        except Exception as exc:
            raise self._api_error(exc, f"updating Deployment {ns}/{name}") from None

    # -- waiting -----------------------------------------------------------------------------

    async def _poll(
        self,
        read: Callable[..., Any],
        namespace: str,
        name: str,
        live: _Live,
        phase_of: Callable[[Mapping[str, Any]], tuple[Phase, str]],
    ) -> tuple[Phase, str]:
        while True:
            try:
                obj = await self._call(read, name, namespace)
            except Exception as exc:
                if self._status(exc) == 404:
                    return "Failed", live.cancel_reason or f"{name} was deleted"
                log.info("k8s.poll_failed", name=name, error=str(exc))
                await asyncio.sleep(max(self.poll_interval, 0.5))  # the API server is away
            else:
                phase, message = phase_of(obj)
                if phase in ("Succeeded", "Failed"):
                    return phase, message
            if live.cancel_reason is not None:  # read once more first: it may have finished
                await self._delete_jobs(live)
                return "Failed", live.cancel_reason
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await live.cancelled.wait()

    async def _wait_job(self, namespace: str, name: str, live: _Live) -> tuple[Phase, str]:
        return await self._poll(
            self._batch.read_namespaced_job_status, namespace, name, live, job_phase
        )

    def _operated_api(self, kind: str) -> tuple[str, str, str]:
        """(group, version, plural) of an operator's kind."""
        if kind == k8s.SPARK_KIND:
            group, version = k8s.SPARK_API.split("/")
            return group, version, k8s.SPARK_PLURAL
        group, version = k8s.TFJOB_API.split("/")
        return group, version, k8s.TFJOB_PLURAL

    async def _create_operated(self, obj: Mapping[str, Any]) -> None:
        """Create a SparkApplication or TFJob; one that exists already is fine (a retry)."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        group, version, plural = self._operated_api(kind)
        try:
            await self._call(
                self._custom.create_namespaced_custom_object, group, version, ns, plural, dict(obj)
            )
        except Exception as exc:
            status = self._status(exc)
            if status == 404:
                raise ClusterError(
                    f"creating {kind} {ns}/{name}: the cluster does not know {kind}",
                    hint="install the Spark operator (kubeflow/spark-operator)"
                    if kind == k8s.SPARK_KIND
                    else "install the Kubeflow training operator (kubeflow/training-operator)",
                ) from None
            if status != 409:
                raise self._api_error(exc, f"creating {kind} {ns}/{name}") from None
        else:
            log.info("k8s.created", kind=kind, namespace=ns, name=name)

    async def _wait_operated(
        self, namespace: str, kind: str, name: str, live: _Live
    ) -> tuple[Phase, str]:
        group, version, plural = self._operated_api(kind)

        def read(name: str, namespace: str, **kwargs: Any) -> Any:
            return self._custom.get_namespaced_custom_object(
                group, version, namespace, plural, name, **kwargs
            )

        phase_of = spark_phase if kind == k8s.SPARK_KIND else tfjob_phase
        return await self._poll(read, namespace, name, live, phase_of)

    async def _wait_deployment(self, namespace: str, name: str, live: _Live) -> tuple[Phase, str]:
        return await self._poll(
            self._apps.read_namespaced_deployment_status, namespace, name, live, deployment_phase
        )

    # -- stopping ----------------------------------------------------------------------------

    async def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Stop a live run: its Jobs are deleted (pods go in the background) unless they
        finished already, in which case the run ends as they did; False if unknown here.

        The run's own wait reads its object once more before deleting, so a Job that finished
        just before (and that the lifecycle watcher may have reported) is never reported Failed.
        A deploy run stops waiting; its Deployment stays (it may already serve traffic).
        """
        live = self._live.get(run_id)
        if live is None:
            return False
        if live.cancel_reason is None:
            live.cancel_reason = reason
        live.cancelled.set()
        return True

    async def _delete_jobs(self, live: _Live) -> None:
        """Delete a cancelled run's Jobs (not shared builds), SparkApplications and TFJobs;
        gone already is fine."""
        for kind, name in list(live.operated):
            group, version, plural = self._operated_api(kind)
            try:
                await self._call(
                    self._custom.delete_namespaced_custom_object,
                    group,
                    version,
                    live.namespace,
                    plural,
                    name,
                    propagation_policy="Background",
                )
            except Exception as exc:
                if self._status(exc) != 404:
                    log.warning("k8s.cancel_failed", name=name, error=str(exc))
        for name in list(live.jobs):
            if "-build-" in name:
                continue  # a build is shared by concurrent runs of the same image
            try:
                await self._call(
                    self._batch.delete_namespaced_job,
                    name,
                    live.namespace,
                    propagation_policy="Background",
                )
            except Exception as exc:
                if self._status(exc) != 404:
                    log.warning("k8s.cancel_failed", name=name, error=str(exc))

    async def cancel_axon(
        self, axon: str, namespace: str = "default", reason: str = "cancelled: axon deleted"
    ) -> list[str]:
        """Stop every live run of an Axon here; the run ids stopped."""
        ids = [
            rid
            for rid, live in self._live.items()
            if live.request.axon == axon and live.namespace == namespace
        ]
        await asyncio.gather(*(self.cancel(rid, reason) for rid in ids))
        return ids

    async def shutdown(self, reason: str = "cancelled: executor shut down") -> None:
        """Refuse new runs; the live ones are left running on the cluster. The runner stops
        waiting for them without acking their actions, so another executor (or this one,
        restarted) adopts their Jobs when the actions come back (`adopt`)."""
        del reason  # nothing is cancelled
        self._closed = True

    async def recover(self) -> list[Lost]:
        """Nothing is lost by an executor restart: Jobs keep running, the watcher reports them."""
        return []

    async def delete_unrouted_servers(
        self, namespace: str, axon: str, routed: set[str], *, older_than: float
    ) -> list[str]:
        """Delete the model-server Deployments (and their Services) of an Axon whose name is
        not in `routed` and that were created more than `older_than` seconds ago (a younger
        one may belong to a deploy that has not written its routes yet). The names deleted."""
        selector = (
            f"{k8s.MANAGED_BY}={k8s.MANAGER},{k8s.L_AXON}={k8s.label_value(axon)},"
            f"{k8s.L_ROLE}={k8s.ROLE_SERVER}"
        )
        try:
            listed = await self._call(
                self._apps.list_namespaced_deployment, namespace, label_selector=selector
            )
        except Exception as exc:
            raise self._api_error(exc, f"listing the servers of Axon {namespace}/{axon}") from None
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
            for delete in (
                self._apps.delete_namespaced_deployment,
                self._core.delete_namespaced_service,
            ):
                try:
                    await self._call(delete, name, namespace, propagation_policy="Background")
                except Exception as exc:
                    if self._status(exc) != 404:
                        raise self._api_error(exc, f"deleting server {name}") from None
            deleted.append(name)
        if deleted:
            log.info("k8s.servers_collected", namespace=namespace, axon=axon, deleted=deleted)
        return deleted

    async def delete_axon(self, namespace: str, axon: str) -> list[str]:
        """Delete what an Axon created: its Jobs, Deployments, Services and anchor ConfigMap
        (whose garbage collection takes the store's claim along). Objects are found by the
        Axon's label and checked here too, so a server that ignores selectors deletes nothing
        else; each deletion is idempotent (another executor may have done it). Returns the
        `Kind/name`s deleted."""
        selector = f"{k8s.MANAGED_BY}={k8s.MANAGER},{k8s.L_AXON}={k8s.label_value(axon)}"
        kinds: tuple[tuple[str, Callable[..., Any], Callable[..., Any]], ...] = (
            ("Job", self._batch.list_namespaced_job, self._batch.delete_namespaced_job),
            (
                "Deployment",
                self._apps.list_namespaced_deployment,
                self._apps.delete_namespaced_deployment,
            ),
            ("Service", self._core.list_namespaced_service, self._core.delete_namespaced_service),
            (
                "ConfigMap",
                self._core.list_namespaced_config_map,
                self._core.delete_namespaced_config_map,
            ),
        )
        deleted: list[str] = []
        for kind, list_fn, delete_fn in kinds:
            try:
                listed = await self._call(list_fn, namespace, label_selector=selector)
            except Exception as exc:
                if self._status(exc) == 404:
                    continue
                raise self._api_error(exc, f"listing {kind}s of Axon {namespace}/{axon}") from None
            for item in listed.get("items") or []:
                meta = item.get("metadata") or {}
                labels = meta.get("labels") or {}
                if labels.get(k8s.L_AXON) != k8s.label_value(axon) or (
                    labels.get(k8s.MANAGED_BY) != k8s.MANAGER
                ):
                    continue
                try:
                    await self._call(
                        delete_fn, meta["name"], namespace, propagation_policy="Background"
                    )
                except Exception as exc:
                    if self._status(exc) != 404:
                        raise self._api_error(exc, f"deleting {kind} {meta['name']}") from None
                    continue
                deleted.append(f"{kind}/{meta['name']}")
        for kind in (k8s.SPARK_KIND, k8s.TFJOB_KIND):
            group, version, plural = self._operated_api(kind)
            try:
                listed = await self._call(
                    self._custom.list_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    plural,
                    label_selector=selector,
                )
            except Exception as exc:
                if self._status(exc) == 404:
                    continue  # the operator is not installed: nothing of this kind
                raise self._api_error(exc, f"listing {kind}s of Axon {namespace}/{axon}") from None
            for item in listed.get("items") or []:
                meta = item.get("metadata") or {}
                if (meta.get("labels") or {}).get(k8s.L_AXON) != k8s.label_value(axon):
                    continue
                with contextlib.suppress(Exception):  # gone already, or being deleted
                    await self._call(
                        self._custom.delete_namespaced_custom_object,
                        group,
                        version,
                        namespace,
                        plural,
                        meta["name"],
                    )
                    deleted.append(f"{kind}/{meta['name']}")
        log.info("k8s.axon_deleted", namespace=namespace, axon=axon, deleted=deleted)
        return deleted


# ---------------------------------------------------------------------------------------------
# Pod logs of a run (`ranvier logs` on the kubernetes backend)

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


async def run_log_chunks(
    api_client: Any, namespace: str, kind: str, name: str, *, follow: bool = False
) -> AsyncIterator[tuple[str, bytes]]:
    """(pod name, bytes) of the logs of a run's pods, pod by pod (a Spark run: its driver);
    with `follow`, each pod's log until it ends. A ClusterError when no pod is left (finished
    pods go with their Job after its TTL)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    label, container = POD_SELECTORS[kind]
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


def _timestamp(value: object) -> datetime | None:
    """An API server timestamp (`2025-01-01T00:00:00Z`) as an aware datetime, else None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


__all__ = [
    "AllocateVersion",
    "ClusterError",
    "KubeStarted",
    "KubernetesBackend",
    "api_client_for",
    "run_log_chunks",
    "run_object",
]
