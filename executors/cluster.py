"""What running on Kubernetes needs around the backend: deploys, version numbers, lifecycle.

The kubernetes backend (`executors.backends.kubernetes`) turns one action into objects; this
module connects those objects to ranvier's records on the bus, so a cluster behaves as the
local executor does for `ranvier get`, `ranvier endpoint` and the sensors:

- `KubernetesDeployer` is the runner's deployer on a cluster: the deploy flow every backend
  shares (`executors.deploy_flow`: versions by `best`/`latest`, rollout history, the table
  switched only once the servers serve, then the record), with a Deployment and Service per
  routed version (`http://<service>.<ns>.svc:<port>`) as what it launches.
- `VersionCounter` numbers trainer runs' model versions (1, 2, 3... per task), as the registry
  and `modelSelectionStrategy` need, with a compare-and-set counter in `ranvier_models`.
- `ClusterReporter` is the cluster lifecycle watcher's publisher. It publishes a transition
  with the runner's event id (`<run>.<phase>`), unless the run's task-run record shows it was
  reported already, and then moves the record forward; a trainer run found Succeeded has its
  version registered (metrics from the pod) before it is reported, as the runner does, so a
  deploy that the report triggers finds it. A deployer run's Succeeded is left to the deployer:
  it means "the router sends traffic there", which only the deployer knows.

So exactly one event per transition reaches the stream: the reporter skips what the record
already holds, and the two reports that can race (the runner polls what the watcher sees) have
the same id, which JetStream's duplicate window drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog

from events.bus import Bus, BusError, RevisionMismatch, kv_key
from events.errors import RanvierError
from events.model import LifecycleData
from events.subjects import MODELS_BUCKET, RUNS_BUCKET
from executors.backends import k8s_objects as k8s
from executors.backends.base import OnStarted
from executors.backends.kubernetes import KubernetesBackend
from executors.deploy_flow import (
    DeployAction,
    Deployer,
    DeployPlan,
    LaunchFailed,
    Urls,
    router_key,
)
from executors.kv import BusKeyValue
from executors.registry import ModelRegistry, ModelVersion
from executors.serving.routing import RoutingTable
from executors.task_runs import TaskRun, lifecycle_event_id, task_run_key

log = structlog.get_logger(__name__)

SOURCE: Final = "ranvier/cluster-watcher"
_ORDER: Final[dict[str, int]] = {"Pending": 0, "Running": 1, "Succeeded": 2, "Failed": 2}
_CAS_ATTEMPTS: Final = 20


class ClusterDeployError(RanvierError, RuntimeError):
    """A cluster record could not be written (contention on a counter)."""


async def _read_json(bus: Bus, bucket: str, key: str) -> dict[str, Any] | None:
    found = await bus.kv_get(bucket, key)
    if found is None:
        return None
    try:
        value = json.loads(found[0])
    except ValueError:
        log.warning("cluster.record_unreadable", bucket=bucket, key=key)
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------------------
# Version numbers


def version_counter_key(namespace: str, axon: str, task: str) -> str:
    """`version-seq.<ns>.<axon>.<task>`: the last model version number given to a task."""
    return kv_key("version-seq", namespace, axon, task)


class VersionCounter:
    """Numbers a train task's model versions 1, 2, 3... (shared by every executor replica)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.registry = ModelRegistry(BusKeyValue(bus, MODELS_BUCKET))

    async def allocate(self, namespace: str, axon: str, task: str) -> int:
        """The next version of `task`: above every version the registry already holds."""
        key = version_counter_key(namespace, axon, task)
        for _ in range(_CAS_ATTEMPTS):
            found = await self.bus.kv_get(MODELS_BUCKET, key)
            if found is None:
                known = await self.registry.versions(axon, task, namespace=namespace)
                first = max((v.version for v in known), default=0) + 1
                if await self.bus.kv_create(MODELS_BUCKET, key, str(first).encode()) is not None:
                    return first
                continue
            following = int(found[0]) + 1
            try:
                await self.bus.kv_update(MODELS_BUCKET, key, str(following).encode(), found[1])
            except RevisionMismatch:
                continue
            return following
        raise ClusterDeployError(f"could not allocate a version of {task!r} (contention)")


# ---------------------------------------------------------------------------------------------
# The deployer


DEFAULT_SCALE_DOWN_AFTER: Final = 120.0


class KubernetesDeployer(Deployer):
    """The runner's deployer on a cluster: Deployments + Services, then the router's table.

    After a deploy, model servers that no route needs any more (a version rolled out of the
    rolloutSpec) are deleted once `scale_down_after` seconds have passed, so requests already
    sent to them finish; the routes are read again at that moment, so a newer deploy that
    routes to a server again keeps it.
    """

    require_model = False

    def __init__(
        self,
        bus: Bus,
        backend: KubernetesBackend,
        *,
        scale_down_after: float = DEFAULT_SCALE_DOWN_AFTER,
    ) -> None:
        super().__init__(bus)
        self.backend = backend
        self.scale_down_after = scale_down_after
        self._collecting: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def routed_servers(self, namespace: str, axon: str) -> set[str]:
        """The server (Service) names the Axon's router part sends traffic to now."""
        found = await self.bus.kv_get(MODELS_BUCKET, router_key(namespace, axon))
        if found is None:
            return set()
        table = RoutingTable.model_validate_json(found[0])
        hosts = {
            urllib.parse.urlsplit(b.url).hostname or ""
            for d in table.deployers
            for m in d.models
            for b in m.backends
        }
        return {h.split(".", 1)[0] for h in hosts if h}

    async def collect_unrouted(self, namespace: str, axon: str) -> list[str]:
        """Delete the Axon's servers no route needs (older than the grace period)."""
        routed = await self.routed_servers(namespace, axon)
        return await self.backend.delete_unrouted_servers(
            namespace, axon, routed, older_than=self.scale_down_after
        )

    def _collect_later(self, namespace: str, axon: str) -> None:
        key = (namespace, axon)
        previous = self._collecting.get(key)
        if previous is not None:
            previous.cancel()  # the newest deploy's grace period counts

        async def later() -> None:
            await asyncio.sleep(self.scale_down_after)
            try:
                await self.collect_unrouted(namespace, axon)
            except (RanvierError, BusError) as exc:
                log.warning("deploy.collect_failed", axon=axon, error=str(exc))

        task = asyncio.create_task(later(), name=f"collect-{namespace}-{axon}")
        self._collecting[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._collecting.get(key) is done:
                del self._collecting[key]

        task.add_done_callback(forget)

    async def _begin(
        self, action: DeployAction, axon_dir: Path, on_running: OnStarted | None
    ) -> _Objects:
        """The deploy's servers are the backend's objects (its run reports Running)."""
        request = action.request
        return _Objects(
            self.backend,
            axon_dir,
            on_running,
            retire=lambda: self._collect_later(request.namespace, request.axon),
        )

    async def undeploy_axon(self, namespace: str, name: str) -> None:
        """Take a deleted Axon out of the router, drop its deployment records and delete what
        it created on the cluster (Jobs, Deployments, Services, its anchor)."""
        await self.bus.kv_delete(MODELS_BUCKET, router_key(namespace, name))
        prefix = kv_key("deploy", namespace, name)
        for key in await self.bus.kv_keys(MODELS_BUCKET, f"{prefix}.>"):
            await self.bus.kv_delete(MODELS_BUCKET, key)
        await self.backend.delete_axon(namespace, name)

    async def shutdown(self) -> None:
        """Model servers are the cluster's Deployments and keep serving; pending collections
        are dropped (the next deploy of each Axon schedules its own)."""
        for task in list(self._collecting.values()):
            task.cancel()

    async def recover(self) -> list[object]:
        """Nothing to restart: Deployments, Services and the router table outlive the executor."""
        return []


class _Objects:
    """The deploy flow's launcher on a cluster: a Deployment and Service per routed version
    (the backend's deploy run), whose Service URLs the table routes to."""

    def __init__(
        self,
        backend: KubernetesBackend,
        axon_dir: Path,
        on_running: OnStarted | None,
        *,
        retire: Callable[[], None],
    ) -> None:
        self.backend = backend
        self.axon_dir = axon_dir
        self.on_running = on_running
        self.servers: list[dict[str, Any]] = []
        self._retire = retire

    async def launch(self, plan: DeployPlan) -> Urls:
        """Apply the objects of every routed version and wait until they serve."""
        needed = set(plan.needed)
        versions = {
            c.backend.name: [str(v) for v in c.history if (c.backend.name, str(v)) in needed]
            for c in plan.choices
        }
        params = {
            **plan.request.params,
            "deployer": plan.deployer.model_dump(mode="json", by_alias=True),
            "versions": versions,
        }
        outcome = await self.backend.run(
            plan.request.model_copy(update={"params": params}),
            plan.axon,
            self.axon_dir,
            run_id=plan.run_id,
            on_running=self.on_running,
        )
        if outcome.phase != "Succeeded":
            raise LaunchFailed(outcome)
        self.servers = list(outcome.outputs.get("servers") or [])
        urls: Urls = {}
        for server in self.servers:
            urls.setdefault((server["backend"], server["version"]), []).append(server["url"])
        return urls

    async def rollback(self, plan: DeployPlan) -> None:
        """Nothing to undo: objects of versions not routed yet take no traffic."""

    def record_extras(self, plan: DeployPlan) -> dict[str, Any]:
        """Nothing beyond the common record: the objects outlive the executor."""
        return {}

    def outputs(self) -> dict[str, Any]:
        """The servers (Deployments and Services) the deploy serves with."""
        return {"servers": self.servers}

    async def retire(self, plan: DeployPlan) -> int:
        """Servers no longer routed are deleted after the deployer's grace period (requests
        already sent to them finish): scheduled here, none stopped at once."""
        self._retire()
        return 0


# ---------------------------------------------------------------------------------------------
# Lifecycle from the cluster


class ClusterReporter:
    """The cluster lifecycle watcher's publisher: each transition once, records kept current."""

    def __init__(self, bus: Bus, backend: KubernetesBackend | None = None) -> None:
        """`backend` reads a trainer's metrics from its pod (without it: no metrics)."""
        self.bus = bus
        self.backend = backend
        self.registry = ModelRegistry(BusKeyValue(bus, MODELS_BUCKET))
        self.published = 0
        self.skipped = 0

    async def __call__(self, data: LifecycleData) -> None:
        """Publish `data` unless its run's record shows it was reported already."""
        key = task_run_key(data.namespace, data.axon, data.task, data.run_id)
        found = await self.bus.kv_get(RUNS_BUCKET, key)
        record = TaskRun.from_json(found[0]) if found is not None else None
        bound = log.bind(axon=data.axon, task=data.task, run_id=data.run_id, phase=data.phase)
        if record is not None and _ORDER[record.phase] >= _ORDER[data.phase]:
            self.skipped += 1
            bound.debug("cluster.already_reported", recorded=record.phase)
            return
        if data.phase == "Succeeded" and "deployment" in data.outputs:
            self.skipped += 1  # the deployer reports it once the router sends traffic there
            return
        if data.phase == "Succeeded" and "job" in data.outputs:
            data = await self._register(data, record)
        event = data.to_event(source=SOURCE, id=lifecycle_event_id(data.run_id, data.phase))
        await self.bus.publish(event)
        self.published += 1
        bound.info("cluster.lifecycle")
        if record is not None and found is not None:
            record.apply(data)
            # RevisionMismatch: the runner wrote it meanwhile, and its record is the newer one
            with contextlib.suppress(RevisionMismatch):
                await self.bus.kv_update(RUNS_BUCKET, key, record.to_json(), found[1])

    async def _register(self, data: LifecycleData, record: TaskRun | None) -> LifecycleData:
        """A trainer run's version in the registry before its Succeeded (as the runner does)."""
        raw = data.outputs.get("version")
        if record is not None and record.kind != "trainer":
            return data
        if not (isinstance(raw, str) and raw.isdigit()) or int(raw) < 1:
            return data
        version = int(raw)
        outputs: dict[str, Any] = {**data.outputs, "version": version}
        if self.backend is not None:
            outputs.update(await self.backend.job_metrics(data.namespace, str(data.outputs["job"])))
        outputs["model_path"] = f"{k8s.MODELS_PATH}/{data.task}/{version}"
        metrics = outputs.get("metrics")
        error = outputs.get("metrics_error")
        await self.registry.put(
            ModelVersion(
                namespace=data.namespace,
                axon=data.axon,
                task=data.task,
                version=version,
                run_id=data.run_id,
                path=outputs["model_path"],
                phase="Succeeded",
                metrics=metrics if isinstance(metrics, dict) else {},
                metrics_error=error if isinstance(error, str) else None,
            )
        )
        return data.model_copy(update={"outputs": outputs})


__all__ = [
    "ClusterDeployError",
    "ClusterReporter",
    "KubernetesDeployer",
    "VersionCounter",
    "version_counter_key",
]
