"""The composition root: which roles run in a process, and `ranvier up`'s whole-pipeline loop.

Every role (engine, executor, watcher, router, api) is a class built on a connected `Bus` with an
`async run()` that runs until cancelled and cleans up on cancellation. `ranvier run --role X`
runs one (or all) of them against a shared NATS, for clusters; `ranvier up` runs all of them in
one process, on an embedded nats-server unless `--nats-url` is given, submits an Axon and
watches it until a goal (`--until`) is reached. What a user sees while it runs is computed from
the same KV records that `ranvier get axon` prints (`axon_status`), so the two never disagree.

The roles' modules are imported directly; only the kubernetes backend is imported when it is
asked for, since its client library is slow to import and most processes never use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import structlog

from events import subjects
from events.bus import Bus
from events.errors import RanvierError
from events.model import RestData, SensorRunRecord
from events.telemetry import Telemetry
from events.watchers.calendar import Schedule
from events.watchers.calendar_watcher import CalendarWatcher, ScheduledTrigger
from executors.backends.base import Backend
from executors.backends.local import LocalBackend
from executors.deploy_flow import fixed_url
from executors.deployer import LocalDeployer
from executors.kv import BusKeyValue
from executors.registry import ModelRegistry, ModelVersion
from executors.runner import Deployer, ExecutorRunner, RunnerError, TaskRun, task_run_key
from executors.serving.kv_table import ROUTER_URL_KEY, RouterRole
from sensors.axons import AxonStore, StoredAxon
from sensors.leases import DEFAULT_TTL
from sensors.runtime import EngineRuntime
from sensors.runtime import caught_up as engine_caught_up
from sensors.spec import CalendarTrigger, RestTrigger
from sensors.watcher import MetricsWatcher

log = structlog.get_logger(__name__)

ROLES: Final = ("engine", "executor", "watcher", "router", "api")
BACKENDS: Final = ("local", "kubernetes")
Goal = Literal["succeeded", "deployed", "idle"]
ENGINE_DURABLE: Final = "ranvier-engine"
SOURCE: Final = "ranvier/cli"


class AppError(RanvierError, RuntimeError):
    """A role cannot run here (missing module, unknown backend, bad combination of flags)."""


class NotFoundError(AppError, LookupError):
    """The Axon, sensor or run asked for does not exist."""


class NoRestTriggerError(AppError):
    """The sensor exists but cannot be fired over REST (it has no Rest trigger)."""


# ---------------------------------------------------------------------------------------------
# Building roles


def make_backend(name: str, *, state_dir: Path, nats_url: str | None) -> Backend:
    """The backend named by `--backend` / RANVIER_BACKEND: local or kubernetes."""
    if name == "local":
        return LocalBackend(state_dir, nats_url=nats_url)
    if name == "kubernetes":
        from executors.backends.kubernetes import KubernetesBackend  # slow: only when asked

        return KubernetesBackend.from_config()
    raise unknown_backend(name)


def unknown_backend(name: str) -> AppError:
    """The error for a `--backend` that does not exist."""
    return AppError(f"unknown backend {name!r}", hint="choose local or kubernetes")


def make_deployer(bus: Bus, state_dir: Path) -> Deployer:
    """The local deployer (model servers behind the router)."""
    return LocalDeployer(bus, state_dir=state_dir)


def calendar_provider(store: AxonStore) -> Callable[[], Awaitable[list[ScheduledTrigger]]]:
    """The Calendar triggers of every submitted (not deleted) Axon, as plain schedules."""

    async def provide() -> list[ScheduledTrigger]:
        found: list[ScheduledTrigger] = []
        for stored in await store.list():
            for sensor in stored.axon.spec.sensors:
                for trigger in sensor.triggers:
                    if isinstance(trigger, CalendarTrigger):
                        found.append(
                            ScheduledTrigger(
                                namespace=stored.namespace,
                                axon=stored.name,
                                sensor=sensor.name,
                                trigger=trigger.name,
                                schedule=Schedule(
                                    cron=trigger.schedule,
                                    interval=trigger.interval,
                                    timezone=trigger.timezone,
                                ),
                                armed=stored.submitted,
                            )
                        )
        return found

    return provide


@dataclass
class RoleOptions:
    """What the roles of one process are built with."""

    state_dir: Path
    backend: str = "local"
    nats_url: str | None = None
    task_nats_url: str | None = None
    """What local tasks get as `RANVIER_NATS_URL`: `nats_url` with its credentials, if any."""
    concurrency: int = 16
    router_host: str = "127.0.0.1"
    router_port: int = 0
    router_public_url: str | None = None
    """The router's URL for clients (recorded as `router.url`); None: the bound address."""
    prometheus_url: str | None = None
    telemetry: Telemetry | None = None
    kube_api_url: str | None = None
    kube_namespace: str | None = None
    registry: str | None = None
    registry_insecure: bool = False
    kube_poll_interval: float = 2.0
    replica_id: str | None = None
    """The engine's name in the partition leases (None: unique to the process)."""
    lease_ttl: float = DEFAULT_TTL
    api_host: str = "127.0.0.1"
    api_port: int = 0


@dataclass(slots=True)
class ExecutorStats:
    """The executor runner's counters, as `ranvier run --metrics-port` exposes them."""

    handled: int = 0


def _attribute(role: Any, name: str) -> Callable[[], Any]:
    """Read `role.<name>` when Prometheus scrapes (the role keeps counting in plain fields)."""
    return lambda: getattr(role, name, None)


def _executor_stats(runner: ExecutorRunner) -> Callable[[], ExecutorStats]:
    return lambda: ExecutorStats(handled=runner.handled)


class WatcherRole:
    """The watcher role: Calendar ticks, metric values and (on Kubernetes) cluster lifecycle."""

    def __init__(
        self,
        bus: Bus,
        telemetry: Telemetry | None,
        prometheus_url: str | None,
        cluster: Any | None = None,
        controller: Any | None = None,
    ) -> None:
        """`cluster`: a `LifecycleWatcher` for the kubernetes backend (async context manager);
        `controller`: the `AxonController` that submits Axon custom objects."""
        self.calendar = CalendarWatcher(bus, calendar_provider(AxonStore(bus)))
        self.metrics = MetricsWatcher(bus, prometheus_url=prometheus_url, telemetry=telemetry)
        self.cluster = cluster
        self.controller = controller

    async def run(self) -> None:
        """Run the watchers; one failing stops (cancels) the others."""
        async with contextlib.AsyncExitStack() as stack:
            if self.cluster is not None:
                await stack.enter_async_context(self.cluster)
            async with asyncio.TaskGroup() as group:
                group.create_task(self.calendar.run())
                group.create_task(self.metrics.run())
                if self.controller is not None:
                    group.create_task(self.controller.run())


def kubernetes_roles(bus: Bus, options: RoleOptions) -> tuple[Any, Any, Any]:
    """The kubernetes backend, its deployer and an API client, from the role options.

    The cluster is `--kube-api-url` when given, else KUBECONFIG (or ~/.kube/config), else the
    pod's service account. Images are built into and looked up in `--registry`.
    """
    from executors.backends.k8s_objects import RenderSettings
    from executors.backends.kubernetes import KubernetesBackend, api_client_for
    from executors.cluster import KubernetesDeployer, VersionCounter

    api = api_client_for(api_url=options.kube_api_url)
    backend = KubernetesBackend(
        api,
        settings=RenderSettings(registry=options.registry, nats_url=options.nats_url),
        poll_interval=options.kube_poll_interval,
        registry_scheme="http" if options.registry_insecure else "https",
        allocate_version=VersionCounter(bus).allocate,
    )
    return backend, KubernetesDeployer(bus, backend), api


def cluster_watcher(bus: Bus, options: RoleOptions) -> Any:
    """The cluster lifecycle watcher of the watcher role (kubernetes backend only)."""
    from events.watchers.lifecycle import LifecycleWatcher
    from executors.cluster import ClusterReporter

    backend, _, api = kubernetes_roles(bus, options)
    return LifecycleWatcher(
        api,
        ClusterReporter(bus, backend),
        namespace=options.kube_namespace,
        retry_delay=min(1.0, options.kube_poll_interval),
    )


def axon_controller(bus: Bus, options: RoleOptions) -> Any:
    """The Axon controller of the watcher role (kubernetes backend only): Axon custom objects
    are submitted, their status kept current from what `get axon` reads."""
    from executors.backends.kubernetes import api_client_for
    from executors.controller import AxonController

    async def status_of(stored: StoredAxon) -> dict[str, Any]:
        return await axon_status(bus, stored)

    return AxonController(
        api_client_for(api_url=options.kube_api_url),
        bus,
        status_of,
        namespace=options.kube_namespace,
        resync=max(0.1, options.kube_poll_interval),
        retry_delay=min(1.0, options.kube_poll_interval),
    )


def build_roles(bus: Bus, names: Sequence[str], options: RoleOptions) -> dict[str, Any]:
    """The role objects for `names` (each has `async run()`); errors name what is missing."""
    roles: dict[str, Any] = {}
    for name in names:
        if name == "engine":
            roles[name] = engine = EngineRuntime(
                bus, durable=ENGINE_DURABLE, replica=options.replica_id, lease_ttl=options.lease_ttl
            )
            if options.telemetry is not None:
                options.telemetry.add_stats("engine", _attribute(engine, "stats"))
        elif name == "executor":
            deployer: Deployer | None
            if options.backend == "kubernetes":
                backend, deployer, _ = kubernetes_roles(bus, options)
            else:
                backend = make_backend(
                    options.backend,
                    state_dir=options.state_dir,
                    nats_url=options.task_nats_url or options.nats_url,
                )
                deployer = make_deployer(bus, options.state_dir)
            roles[name] = runner = ExecutorRunner(
                bus,
                backend=backend,
                deployer=deployer,
                state_dir=options.state_dir,
                concurrency=options.concurrency,
            )
            if options.telemetry is not None:
                options.telemetry.add_stats("executor", _executor_stats(runner))
        elif name == "watcher":
            on_cluster = options.backend == "kubernetes"
            roles[name] = WatcherRole(
                bus,
                options.telemetry,
                options.prometheus_url,
                cluster_watcher(bus, options) if on_cluster else None,
                axon_controller(bus, options) if on_cluster else None,
            )
        elif name == "router":
            roles[name] = RouterRole(
                bus,
                options.router_host,
                options.router_port,
                public_url=options.router_public_url,
            )
        elif name == "api":
            from ranvier.api.role import ApiRole  # it imports this module

            roles[name] = ApiRole(
                bus, state_dir=options.state_dir, host=options.api_host, port=options.api_port
            )
        else:
            raise AppError(f"unknown role {name!r}", hint=f"choose {', '.join(ROLES)} or all")
    return roles


def available_roles() -> list[str]:
    """Every role (what `--role all` and `ranvier up` run)."""
    return list(ROLES)


def roles_ready(roles: Mapping[str, Any]) -> bool:
    """Whether the roles serve what they recovered: the executor has run its recovery (runs
    left behind reported, deployments served again) and the router listens (its URL recorded).
    Until then, what KV says was deployed may not answer yet."""
    executor, router = roles.get("executor"), roles.get("router")
    if isinstance(executor, ExecutorRunner) and not executor.ready.is_set():
        return False
    return not (isinstance(router, RouterRole) and not router.listening.is_set())


async def run_roles(roles: dict[str, Any], stop: asyncio.Event) -> None:
    """Run the roles until `stop` is set or one of them fails; then cancel and await them all."""
    tasks = {
        asyncio.create_task(role.run(), name=f"role-{name}"): name for name, role in roles.items()
    }
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("role.failed", role=tasks[task], error=str(result) or repr(result))
            if isinstance(result, RanvierError):
                raise result
            raise AppError(f"the {tasks[task]} role failed: {result!r}") from result
    del done


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Any:
    """SIGTERM and SIGINT set `stop` (a clean shutdown) while the block runs."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# ---------------------------------------------------------------------------------------------
# What an Axon is doing (the `get axon -o json` contract)


async def _records(bus: Bus, bucket: str, prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for key in await bus.kv_keys(bucket, f"{prefix}.>"):
        got = await bus.kv_get(bucket, key)
        if got is None:
            continue
        try:
            value = json.loads(got[0])
        except ValueError:
            log.warning("status.unreadable", bucket=bucket, key=key)
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


_R = TypeVar("_R")


async def _typed_records(bus: Bus, prefix: str, parse: Callable[[bytes], _R]) -> list[_R]:
    """The run records under `prefix` in `ranvier_runs` (unreadable ones logged and skipped)."""
    out: list[_R] = []
    for key in await bus.kv_keys(subjects.RUNS_BUCKET, f"{prefix}.>"):
        got = await bus.kv_get(subjects.RUNS_BUCKET, key)
        if got is None:
            continue
        try:
            out.append(parse(got[0]))
        except (ValueError, RunnerError) as exc:
            log.warning("status.unreadable", bucket=subjects.RUNS_BUCKET, key=key, error=str(exc))
    return out


async def _sensor_runs(bus: Bus, prefix: str) -> list[SensorRunRecord]:
    return await _typed_records(bus, prefix, SensorRunRecord.from_json)


async def _router_url(bus: Bus) -> str | None:
    found = await bus.kv_get(subjects.MODELS_BUCKET, ROUTER_URL_KEY)
    try:
        url = json.loads(found[0]).get("url") if found is not None else None
    except (ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


def _prefix(kind: str, namespace: str, axon: str) -> str:
    return f"{kind}.{subjects.token(namespace)}.{subjects.token(axon)}"


async def axon_status(bus: Bus, stored: StoredAxon) -> dict[str, Any]:
    """Everything `get axon NAME -o json` prints: sensors' runs, task runs, models, deployments."""
    ns, name = stored.namespace, stored.name
    spec = stored.axon.spec
    sensor_runs = await _sensor_runs(bus, _prefix("sensor", ns, name))
    all_task_runs = await task_runs(bus, ns, name)
    deployments = await _records(bus, subjects.MODELS_BUCKET, _prefix("deploy", ns, name))
    studies = await _records(bus, subjects.RUNS_BUCKET, _prefix("study", ns, name))
    router_url = await _router_url(bus)
    versions = await ModelRegistry(BusKeyValue(bus, subjects.MODELS_BUCKET)).versions(
        name, namespace=ns
    )
    return {
        "name": name,
        "namespace": ns,
        "generation": stored.generation,
        "deleted": stored.deleted,
        "sensors": _sensors_view([s.name for s in spec.sensors], sensor_runs),
        "tasks": _tasks_view({t.name: t.kind for t in spec.tasks}, all_task_runs),
        "models": _models_view(versions),
        "studies": sorted(studies, key=lambda st: str(st.get("task"))),
        "deployments": _deployments_view(deployments, router_url, name),
    }


def _sensors_view(declared: list[str], sensor_runs: list[SensorRunRecord]) -> list[dict[str, Any]]:
    """Each sensor (the spec's, then those only runs name) with its runs, oldest first."""
    names = declared + sorted({r.sensor for r in sensor_runs} - set(declared))
    return [
        {
            "name": sensor,
            "runs": [
                _sensor_run_view(r)
                for r in sorted(
                    (r for r in sensor_runs if r.sensor == sensor), key=lambda r: r.started
                )
            ],
        }
        for sensor in names
    ]


def _sensor_run_view(run: SensorRunRecord) -> dict[str, Any]:
    steps = [
        {"index": s.index, "kind": s.kind, "task": s.task, "phase": s.phase, "run_id": s.run_id}
        for s in run.steps
    ]
    return {
        "id": run.id,
        "phase": run.phase,
        "trigger": run.trigger,
        "started": run.started,
        "finished": run.finished,
        "reason": run.reason,
        "steps": steps,
    }


def _tasks_view(kinds: dict[str, str], runs: list[TaskRun]) -> list[dict[str, Any]]:
    """Each task (the spec's, then those only runs name) with its kind and runs."""
    names = list(kinds) + sorted({r.task for r in runs} - set(kinds))
    tasks = []
    for task in names:
        of_task = [r for r in runs if r.task == task]
        kind = kinds.get(task) or next((r.kind for r in of_task), "deployer")
        tasks.append({"name": task, "kind": kind, "runs": [_task_run_view(r) for r in of_task]})
    return tasks


_TASK_RUN_FIELDS: Final = (
    "id",
    "phase",
    "started",
    "finished",
    "message",
    "version",
    "exit_code",
    "sensor",
    "sensor_run_id",
    "step",
    "attempt",
    "log_path",
)


def _task_run_view(run: TaskRun) -> dict[str, Any]:
    return {field: getattr(run, field) for field in _TASK_RUN_FIELDS}


def _models_view(versions: list[ModelVersion]) -> list[dict[str, Any]]:
    """Model versions grouped by the task that trained them."""
    models: dict[str, list[dict[str, Any]]] = {}
    for v in versions:
        models.setdefault(v.task, []).append(
            {
                "version": v.version,
                "run_id": v.run_id,
                "phase": v.phase,
                "metrics": v.metrics,
                "metrics_error": v.metrics_error,
                "path": v.path,
                "created": v.model_dump(mode="json")["created"],
                # a study trial's version: its hyper-parameters and budget
                **({"params": v.params, "budget": v.budget, "trial": v.trial} if v.params else {}),
            }
        )
    return [{"task": t, "versions": vs} for t, vs in models.items()]


def _deployments_view(
    deployments: list[dict[str, Any]], router_url: str | None, axon: str
) -> list[dict[str, Any]]:
    """Deployment records, with the running router's URL (a restarted control plane's router
    has a new port)."""
    return [
        {
            **{k: d.get(k) for k in ("deployer", "url", "models", "updated")},
            **({"url": fixed_url(router_url, axon)} if router_url else {}),
        }
        for d in sorted(deployments, key=lambda d: str(d.get("deployer")))
    ]


async def bus_idle(bus: Bus) -> bool:
    """No action waiting or running, and the engine has handled every event."""
    actions = await bus.stream_info(subjects.ACTIONS_STREAM)
    if actions.state.messages:
        return False
    return await engine_caught_up(bus, ENGINE_DURABLE)


@dataclass(frozen=True)
class GoalCheck:
    """Whether `--until` is reached, failed for good, or still pending (with why)."""

    reached: bool
    failed: str | None = None


def check_goal(goal: Goal, status: dict[str, Any], idle: bool) -> GoalCheck:
    """Pure: decide `--until` from an `axon_status` document and whether the bus is idle."""
    runs = [r for s in status["sensors"] for r in s["runs"]]
    active = [r for r in runs if r.get("phase") not in ("Succeeded", "Failed")]
    tasks_active = [
        r
        for t in status["tasks"]
        for r in t["runs"]
        if r.get("phase") not in ("Succeeded", "Failed")
    ]
    settled = idle and not active and not tasks_active
    if goal == "deployed":
        if any(
            r.get("phase") == "Succeeded"
            for t in status["tasks"]
            if t["kind"] in ("deployer", "deploy")
            for r in t["runs"]
        ):
            return GoalCheck(True)
        if settled and runs:
            return GoalCheck(False, _failure(runs) or "idle, and no deployer step succeeded")
        return GoalCheck(False)
    if goal == "idle":
        return GoalCheck(settled)
    failed = _failure(runs)
    if failed is not None:
        return GoalCheck(False, failed)
    return GoalCheck(settled and bool(runs))


def _failure(runs: list[dict[str, Any]]) -> str | None:
    for run in runs:
        if run.get("phase") == "Failed":
            reason = run.get("reason") or "no reason recorded"
            return f"sensor run {run.get('id')} Failed: {reason}"
    return None


# ---------------------------------------------------------------------------------------------
# Triggers


async def trigger_rest(
    bus: Bus, namespace: str, axon: str, sensor: str, payload: dict[str, Any]
) -> str:
    """Publish a Rest event for `sensor` after checking it exists and has a Rest trigger."""
    stored = await AxonStore(bus).get(namespace, axon)
    if stored is None or stored.deleted:
        raise NotFoundError(
            f"no Axon {namespace}/{axon} is submitted", hint="see `ranvier list axon`"
        )
    found = stored.axon.spec.sensor(sensor)
    if found is None:
        names = ", ".join(s.name for s in stored.axon.spec.sensors) or "none"
        raise NotFoundError(f"Axon {axon} has no sensor {sensor!r} (sensors: {names})")
    rest = [t for t in found.triggers if isinstance(t, RestTrigger)]
    if not rest:
        raise NoRestTriggerError(
            f"sensor {sensor!r} of Axon {axon} has no Rest trigger",
            hint="add `- {name: manual, type: Rest}` to its triggers",
        )
    event = RestData(
        axon=axon, namespace=namespace, sensor=sensor, trigger=rest[0].name, payload=payload
    ).to_event(source=SOURCE)
    await bus.publish(event)
    return event.id


async def task_runs(bus: Bus, namespace: str, axon: str, task: str | None = None) -> list[TaskRun]:
    """A task's runs (every task's, without `task`) as the executors recorded them, oldest
    first; unreadable records are logged and skipped."""
    if task is None:
        prefix = _prefix("task", namespace, axon)
    else:
        prefix = task_run_key(namespace, axon, task, "x")[: -len(".x")]
    runs = await _typed_records(bus, prefix, TaskRun.from_json)
    return sorted(runs, key=lambda r: r.started or "~")
