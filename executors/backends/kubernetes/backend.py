"""The kubernetes backend: an Axon's actions as Jobs, Deployments and Services in its namespace.

How a run goes: the objects are created (`executors.backends.k8s_objects` renders them),
`on_running` is awaited once the run's Job or Deployment exists, and the run's own object is
polled until the Job finished or every model server is available.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx
import structlog

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
from executors.backends.kubernetes import deletion
from executors.backends.kubernetes.api import ClusterApi, ClusterError, api_client_for
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
    """A run in progress here: what it created, and whether it is being cancelled."""

    request: ActionRequest
    namespace: str
    jobs: list[str] = field(default_factory=list)
    operated: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of the SparkApplications and TFJobs the run created."""
    cancel_reason: str | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def track(self, kind: str, name: str) -> None:
        """Remember a Job, SparkApplication or TFJob of the run (to delete on cancel)."""
        if kind == "Job":
            self.jobs.append(name)
        else:
            self.operated.append((kind, name))


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
        self.api_client = api_client
        self.settings = settings or k8s.RenderSettings()
        self.poll_interval = poll_interval
        self.check_image_exists = check_image_exists
        self.registry_scheme = registry_scheme
        self.allocate_version = allocate_version
        self.api = ClusterApi(api_client)
        self._live: dict[str, _Live] = {}
        self._closed = False

    @classmethod
    def from_config(
        cls, *, kubeconfig: str | None = None, context: str | None = None, **kwargs: Any
    ) -> KubernetesBackend:
        """A backend for the cluster of a kubeconfig (or in-cluster config inside a pod)."""
        return cls(api_client_for(kubeconfig=kubeconfig, context=context), **kwargs)

    # -- ownership, store, images ------------------------------------------------------------

    async def owner(self, axon: Axon) -> k8s.Owner:
        """The Axon custom object if it exists, else the per-Axon ConfigMap anchor."""
        ns, name = axon.metadata.namespace, axon.metadata.name
        try:
            found = await self.api.call(
                self.api.custom.get_namespaced_custom_object,
                k8s.GROUP,
                k8s.VERSION,
                ns,
                k8s.PLURAL,
                name,
            )
        except Exception as exc:
            if self.api.status(exc) not in (404, 403):
                raise self.api.error(exc, f"reading Axon {ns}/{name}") from None
        else:
            uid = (found.get("metadata") or {}).get("uid")
            if uid:
                return k8s.Owner(f"{k8s.GROUP}/{k8s.VERSION}", k8s.KIND, name, uid)
        anchor = await self.api.create(k8s.anchor_config_map(axon))
        uid = (anchor.get("metadata") or {}).get("uid")
        if not uid:
            raise ClusterError(
                f"the API server returned ConfigMap {ns}/{k8s.anchor_name(name)} without a uid",
                hint="the objects of this Axon cannot be owned; is this a real API server?",
            )
        return k8s.Owner("v1", "ConfigMap", k8s.anchor_name(name), uid)

    async def _owner_and_store(self, axon: Axon) -> k8s.Owner:
        """The Axon's owner, and its store's claim created (when it declares one)."""
        owner = await self.owner(axon)
        claim = k8s.store_claim(axon, owner)
        if claim is not None:
            await self.api.create(claim)
        return owner

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
        await self.api.create(job)
        live.jobs.append(name)
        phase, message = await self._wait(axon.metadata.namespace, "Job", name, live)
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
        return _outcome(run_id, phase, message, outputs, started)

    async def _job(
        self,
        request: ActionRequest,
        axon: Axon,
        run_id: str,
        live: _Live,
        on_running: OnRunning | None,
    ) -> tuple[Phase, str, dict[str, Any]]:
        """Run a container, train, spark or tfJob task: image, then its object, then its end."""
        task = k8s.check_runnable(axon, request.kind, request.task)
        owner = await self._owner_and_store(axon)
        image = await self.ensure_image(axon, task, owner, live)
        version = await self._model_version(request, axon, task, run_id)
        run = k8s.Run(request, run_id, model_version=None if version is None else str(version))
        job = k8s.task_object(axon, task, run, image, settings=self.settings, owner=owner)
        name, kind = job["metadata"]["name"], job["kind"]
        if live.cancelled.is_set():
            return "Failed", live.cancel_reason or "cancelled", {}
        if kind == "Job":
            await self.api.create(job)
        else:
            await self.api.create_operated(job)
        live.track(kind, name)
        if live.cancel_reason is not None:  # cancelled while the Job was being created
            await self._delete_jobs(live)
            return "Failed", live.cancel_reason, {}
        if on_running is not None:
            await on_running(KubeStarted(run_id, kind, (name,), axon.metadata.namespace, image))
        phase, message = await self._wait(axon.metadata.namespace, kind, name, live)
        outputs = _run_outputs(task, run, kind, name, image=image, version=version)
        if task.kind == "train" and phase == "Succeeded":
            outputs.update(await self.job_metrics(axon.metadata.namespace, name))
        return phase, message, outputs

    async def _model_version(
        self, request: ActionRequest, axon: Axon, task: Task, run_id: str
    ) -> Any:
        """The model version a run writes: the action's, else a train run's next number (or its
        run id without a registry to number it); None for runs that make no model."""
        version = request.params.get("version")
        if task.kind == "train" and version is None:
            version = (
                run_id
                if self.allocate_version is None
                else await self.allocate_version(
                    axon.metadata.namespace, axon.metadata.name, task.name
                )
            )
        return version

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
        kind = k8s.run_kind(task)
        found = await self.api.read_run_object(kind, ns, name)
        if found is None:
            return None
        started = utcnow()
        live = _Live(request, ns)
        live.track(kind, name)
        self._live[run_id] = live
        log.info("k8s.adopted", kind=kind, name=name, run_id=run_id, task=task.name)
        try:
            phase, message = await self._wait(ns, kind, name, live)
        finally:
            self._live.pop(run_id, None)
        meta = found.get("metadata") or {}
        version = (meta.get("labels") or {}).get(k8s.L_MODEL_VERSION)
        run = k8s.Run(request, run_id, model_version=None if version is None else str(version))
        if version is not None and str(version).isdigit():
            version = int(version)
        image = (meta.get("annotations") or {}).get(k8s.A_IMAGE)
        outputs = _run_outputs(task, run, kind, name, image=image, version=version)
        if task.kind == "train" and kind == "Job" and phase == "Succeeded":
            outputs.update(await self.job_metrics(ns, name))
        return _outcome(run_id, phase, message, outputs, started)

    async def job_metrics(self, namespace: str, job: str) -> dict[str, Any]:
        """A finished trainer Job's metrics, from its pod's termination message.

        `ranvier.sdk.report_metrics` writes them there as well as to `MODEL_PATH/metrics.json`
        (which only the pods see). `{"metrics": {...}}`, plus `metrics_error` when the message
        is not a metrics object; nothing when no pod left a message.
        """
        try:
            pods = await self.api.call(
                self.api.core.list_namespaced_pod, namespace, label_selector=f"job-name={job}"
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
        """Serve the versions a deploy action names, each as a Deployment and Service, until
        every server is available."""
        deployer, wanted = _deploy_plan(request)
        owner = await self._owner_and_store(axon)
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
                    await self.api.create(service)
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
            await self.api.call(self.api.apps.create_namespaced_deployment, ns, deployment)
            log.info("k8s.created", kind="Deployment", namespace=ns, name=name)
            return
        except Exception as exc:
            if self.api.status(exc) != 409:
                raise self.api.error(exc, f"creating Deployment {ns}/{name}") from None
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
            await self.api.call(
                self.api.apps.patch_namespaced_deployment,
                name,
                ns,
                patch,
                _content_type=MERGE_PATCH,
            )
        except Exception as exc:
            raise self.api.error(exc, f"updating Deployment {ns}/{name}") from None

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
                obj = await self.api.call(read, name, namespace)
            except Exception as exc:
                if self.api.status(exc) == 404:
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

    async def _wait(self, namespace: str, kind: str, name: str, live: _Live) -> tuple[Phase, str]:
        """Poll a run's Job, SparkApplication or TFJob until it ends or the run is cancelled."""
        phase_of = {"Job": job_phase, k8s.SPARK_KIND: spark_phase}.get(kind, tfjob_phase)
        return await self._poll(self.api.reader(kind), namespace, name, live, phase_of)

    async def _wait_deployment(self, namespace: str, name: str, live: _Live) -> tuple[Phase, str]:
        return await self._poll(
            self.api.apps.read_namespaced_deployment_status, namespace, name, live, deployment_phase
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
            await self.api.delete_run_object(kind, live.namespace, name)
        for name in list(live.jobs):
            if "-build-" in name:
                continue  # a build is shared by concurrent runs of the same image
            await self.api.delete_run_object("Job", live.namespace, name)

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
        """Delete an Axon's model servers that no route uses (see `deletion`); their names."""
        return await deletion.delete_unrouted_servers(
            self.api, namespace, axon, routed, older_than=older_than
        )

    async def delete_axon(self, namespace: str, axon: str) -> list[str]:
        """Delete what an Axon created (`deletion.delete_axon`); the `Kind/name`s deleted."""
        return await deletion.delete_axon(self.api, namespace, axon)


def _deploy_plan(request: ActionRequest) -> tuple[Deployer, dict[str, list[str]]]:
    """The deployer spec a deploy action carries, and the versions to serve per backend model
    (`latest` when the action names none)."""
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
    return deployer, wanted


def _run_outputs(
    task: Task, run: k8s.Run, kind: str, name: str, *, image: str | None, version: Any
) -> dict[str, Any]:
    """What a finished run reports: its object, its image, and the model version it wrote with
    that version's path."""
    outputs: dict[str, Any] = {kind.lower(): name}
    if image:
        outputs["image"] = image
    if version is not None:
        outputs.update(version=version, model_path=k8s.model_path(task, run))
    return outputs


def _outcome(
    run_id: str, phase: Phase, message: str, outputs: dict[str, Any], started: datetime
) -> RunOutcome:
    """The outcome of a run that got as far as its object's end (or a cancel)."""
    return RunOutcome(
        run_id,
        "Succeeded" if phase == "Succeeded" else "Failed",
        message,
        outputs=outputs,
        started=started,
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]
