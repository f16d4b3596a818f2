"""One deploy, whatever runs the model servers: plan, launch, switch the table, record.

A deployer action names trained models; serving them means choosing a version of each (the
best by the trainer's `lossMetric`, or the newest), getting servers for the versions the table
routes to, and only then pointing the router at them. The order is what makes a deploy safe to
get wrong, on every backend:

1. plan (`plan_deploy`): the deployer spec, the version each backend model serves (with the
   history the rolloutSpec's `destinationIndex` counts in), and the table with the servers'
   URLs still pending;
2. launch (`Launcher.launch`, backend-specific): servers for every routed version, up and
   healthy (local processes, or Deployments and Services on Kubernetes); a launch that fails
   leaves the previous table alone;
3. switch (`switch`): the table with the servers' URLs, written in one compare-and-set the
   routers pick up live; then the deployment record `ranvier endpoint` and `get axon` read;
4. retire (`Launcher.retire`): what the new table no longer routes to.

`Deployer` carries out a deployer action with these steps; each backend's deployer supplies
only its `Launcher` (`executors.deployer` on this machine, `executors.cluster` on Kubernetes).

Versions are remembered per backend model in the deployment record (`history`, newest first):
rolloutSpec's `destinationIndex` 0 is the version this deploy selected, 1 the one deployed
before it, and so on. A canary is therefore "deploy again after training": the new version
takes index 0, the previous one index 1, and the weights split traffic between them.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import structlog
from pydantic import ValidationError

from events.bus import Bus, RevisionMismatch, kv_key
from events.errors import RanvierError
from events.model import ActionRequest, format_time, new_id, utcnow
from events.subjects import MODELS_BUCKET
from executors.backends.base import OnStarted, RunOutcome
from executors.kv import BusKeyValue
from executors.registry import ModelRegistry, ModelVersion, select_best, select_latest
from executors.serving.kv_table import ROUTER_URL_KEY
from executors.serving.limits import LimitError, Limits, limits_from
from executors.serving.routing import (
    Backend,
    DeployerTable,
    Endpoint,
    RoutingError,
    RoutingTable,
    build_deployer_table,
    compile_table,
)
from sensors.spec import Axon, BackendModel, Task
from sensors.spec import Deployer as DeployerSpec

log = structlog.get_logger(__name__)

_CAS_ATTEMPTS: Final = 20
ROUTER_WAIT_MARGIN_S: Final = 2.0


class DeployError(RanvierError, RuntimeError):
    """A deployment that cannot be carried out (no trained version, bad task, server down)."""


def deploy_key(namespace: str, axon: str, deployer: str) -> str:
    """KV key of a deployment record: `deploy.<ns>.<axon>.<deployer>`."""
    return kv_key("deploy", namespace, axon, deployer)


def router_key(namespace: str, axon: str) -> str:
    """KV key of an axon's part of the routing table: `router.<ns>.<axon>`."""
    return kv_key("router", namespace, axon)


def fixed_url(router_url: str, axon: str) -> str:
    """The stable URL of an axon's deployers behind the router, ending in `/`."""
    return f"{router_url.rstrip('/')}/{axon}/"


# ---------------------------------------------------------------------------------------------
# Planning (pure)


@dataclass(frozen=True)
class Choice:
    """The version a backend model serves after this deploy, and how to run its servers."""

    model: str
    backend: BackendModel
    deploy_task: Task
    version: ModelVersion
    history: tuple[int, ...]


def versions_kept(deployer: DeployerSpec) -> int:
    """How many versions per backend model the rolloutSpec can route to (at least 1)."""
    indices = [d.destination_index for r in deployer.rollout_spec for d in r.destinations]
    indices += [r.shadow.destination_index for r in deployer.rollout_spec if r.shadow]
    return max(indices, default=0) + 1


def next_history(previous: Sequence[int], chosen: int, keep: int) -> tuple[int, ...]:
    """Deployed versions newest first once `chosen` is deployed (index 0), at most `keep`."""
    return tuple([chosen, *(v for v in previous if v != chosen)][:keep])


def choose_version(
    backend: BackendModel, strategy: str, trainer: Task, versions: Sequence[ModelVersion]
) -> ModelVersion:
    """`best` (by the trainer's lossMetric) or `latest`; `DeployError` when none qualifies."""
    done = select_latest(versions)
    if done is None:
        raise DeployError(
            f"backend model {backend.name!r}: trainer {trainer.name!r} has no Succeeded version",
            hint="run the trainer first (deploy after it Succeeded)",
        )
    train = trainer.train
    if strategy == "latest" or train is None or not train.loss_metric:
        return done
    best = select_best(versions, train.loss_metric, train.loss_metric_selector)
    if best is None:
        raise DeployError(
            f"backend model {backend.name!r}: no version of {trainer.name!r} reported "
            f"lossMetric {train.loss_metric!r}",
            hint="write it to MODEL_PATH/metrics.json, or use modelSelectionStrategy: latest",
        )
    return best


def routed_versions(table: DeployerTable) -> set[tuple[str, str]]:
    """(backend model, version) pairs that take traffic or a shadow copy in `table`."""
    found: set[tuple[str, str]] = set()
    for model in table.models:
        for backend in [*model.backends, *(b for v in model.variants for b in v.backends)]:
            if backend.shadow or backend.weight > 0:
                found.add((backend.name, backend.version))
    return found


def expand_replicas(
    table: DeployerTable,
    urls: Mapping[tuple[str, str], Sequence[str]],
    waits: Mapping[tuple[str, str], float] | None = None,
) -> DeployerTable:
    """The table with each backend's share split evenly over its version's replicas.

    `waits`: how long the router waits for each (backend model, version), when known.
    """

    def expand(backends: Iterable[Backend]) -> list[Backend]:
        out: list[Backend] = []
        for found in backends:
            key = (found.name, found.version)
            backend = (
                found.model_copy(update={"timeout": waits[key]})
                if waits and key in waits
                else found
            )
            replicas = list(urls[key])
            if backend.shadow:
                out.append(backend.model_copy(update={"url": replicas[0]}))
                continue
            share = backend.weight / len(replicas)
            out.extend(backend.model_copy(update={"url": u, "weight": share}) for u in replicas)
        return out

    models = [
        m.model_copy(
            update={
                "backends": expand(m.backends),
                "variants": [
                    v.model_copy(update={"backends": expand(v.backends)}) for v in m.variants
                ],
            }
        )
        for m in table.models
    ]
    return table.model_copy(update={"models": models})


def server_limits(deployer: DeployerSpec, choice: Choice) -> Limits:
    """A backend model's server limits, from its deploy task's and the deployer's `env`.

    The model server reads them from its environment (`RANVIER_MAX_BODY_BYTES`, ...), where
    the deployer's entries override the task's; a value that is not a number is a
    `DeployError` before any server starts.
    """
    items = [*choice.deploy_task.body.env, *deployer.env]
    env = {v.name: v.value or "" for v in items if v.value_from is None}
    try:
        return limits_from(env)
    except LimitError as exc:
        raise DeployError(f"backend model {choice.backend.name!r}: {exc}") from None


def merge_part(
    part: RoutingTable | None, deployer: str, table: DeployerTable | None
) -> RoutingTable:
    """An axon's table part with `deployer` replaced by `table` (or removed when None)."""
    current = part or RoutingTable()
    deployers = [d for d in current.deployers if d.name != deployer]
    if table is not None:
        deployers.append(table)
    return RoutingTable(revision=current.revision + 1, deployers=deployers)


def deployer_spec(request: ActionRequest, axon: Axon) -> DeployerSpec:
    """The deployer spec carried by the action, else the one of that name in the Axon."""
    raw = request.params.get("deployer")
    if raw is not None:
        try:
            return DeployerSpec.model_validate(raw)
        except ValidationError as exc:
            raise DeployError(f"deployer {request.task!r}: invalid spec: {exc}") from None
    for sensor in axon.spec.sensors:
        for step in sensor.tasks:
            for action in step if isinstance(step, list) else [step]:
                if action.deployer is not None and action.deployer.name == request.task:
                    return action.deployer
    raise DeployError(f"no deployer named {request.task!r} in axon {axon.metadata.name!r}")


async def choose_versions(
    registry: ModelRegistry,
    request: ActionRequest,
    axon: Axon,
    deployer: DeployerSpec,
    before: Mapping[str, list[int]],
    *,
    require_model: bool = True,
) -> list[Choice]:
    """The version each backend model serves after this deploy (any backend: local, cluster).

    `before` is the deployment record's history per backend model (newest first);
    `require_model` asks every deploy task for a `model` class (the local deployer runs
    `ranvier serve MODEL`; a cluster image may bring its own command instead).
    """
    keep = versions_kept(deployer)
    choices: list[Choice] = []
    for model in deployer.models:
        for backend in model.backend_models:
            trainer = axon.spec.task(backend.trainer)
            if trainer is None or trainer.kind != "train":
                raise DeployError(
                    f"backend model {backend.name!r}: {backend.trainer!r} is not a train task"
                )
            deploy = axon.spec.task(backend.deployer)
            if deploy is None or deploy.deploy is None:
                raise DeployError(
                    f"backend model {backend.name!r}: {backend.deployer!r} is not a deploy task"
                )
            if require_model and not deploy.deploy.model:
                raise DeployError(
                    f"deploy task {deploy.name!r} has no `model`",
                    hint="set model: to the model class (a file-named Class or module.Class)",
                )
            strategy = (
                backend.model_selection_strategy
                if "model_selection_strategy" in backend.model_fields_set
                else model.model_selection_strategy
            )
            versions = await registry.versions(
                request.axon, trainer.name, namespace=request.namespace
            )
            version = choose_version(backend, strategy, trainer, versions)
            history = next_history(before.get(backend.name, []), version.version, keep)
            choices.append(Choice(model.name, backend, deploy, version, history))
    return choices


def history_of(record: Mapping[str, Any] | None) -> dict[str, list[int]]:
    """A deployment record's versions per backend model, newest first (empty without one)."""
    return {
        h["backend"]: [int(v) for v in h.get("versions", [])]
        for h in (record or {}).get("history", [])
    }


def deployment_record(
    request: ActionRequest,
    deployer: DeployerSpec,
    table: DeployerTable,
    choices: Sequence[Choice],
    *,
    url: str | None,
    run_id: str,
) -> dict[str, Any]:
    """The deployment record (`deploy_key`) `ranvier endpoint` and `get axon` read."""
    return {
        "deployer": deployer.name,
        "namespace": request.namespace,
        "axon": request.axon,
        "url": url,
        "models": [
            {
                "name": m.name,
                "backends": [
                    {
                        "name": b.name,
                        "version": b.version,
                        "url": b.url,
                        "weight": b.weight,
                        "shadow": b.shadow,
                    }
                    for b in [*m.backends, *(b for v in m.variants for b in v.backends)]
                ],
            }
            for m in table.models
        ],
        "history": [
            {"model": c.model, "backend": c.backend.name, "versions": [str(v) for v in c.history]}
            for c in choices
        ],
        "run_id": run_id,
        "updated": format_time(utcnow()),
    }


async def write_router_part(
    bus: Bus, namespace: str, axon: str, deployer: str, table: DeployerTable | None
) -> None:
    """Replace one deployer in the axon's router part (compare-and-set; checked first)."""
    key = router_key(namespace, axon)
    for _ in range(_CAS_ATTEMPTS):
        found = await bus.kv_get(MODELS_BUCKET, key)
        current = None
        if found is not None:
            try:
                current = RoutingTable.model_validate_json(found[0])
            except ValidationError:
                log.warning("deploy.router_part_unreadable", key=key)
        part = merge_part(current, deployer, table)
        compile_table(part)  # a table the router would refuse is never written
        raw = part.model_dump_json(by_alias=True).encode()
        if not part.deployers:
            if found is not None:
                await bus.kv_delete(MODELS_BUCKET, key)
            return
        if found is None:
            if await bus.kv_create(MODELS_BUCKET, key, raw) is not None:
                return
            continue
        try:
            await bus.kv_update(MODELS_BUCKET, key, raw, found[1])
        except RevisionMismatch:
            continue
        return
    raise DeployError(f"could not update {key} after {_CAS_ATTEMPTS} attempts (contention)")


# ---------------------------------------------------------------------------------------------
# The flow


Urls = dict[tuple[str, str], list[str]]
"""The servers' URLs of each routed (backend model, version)."""


@dataclass(frozen=True)
class DeployPlan:
    """What one deploy serves, before any server exists."""

    request: ActionRequest
    axon: Axon
    deployer: DeployerSpec
    run_id: str
    choices: list[Choice]
    planned: DeployerTable
    """The table with pending URLs: its weights say which versions take traffic."""

    @property
    def needed(self) -> list[tuple[str, str]]:
        """(backend model, version) pairs that need servers, in a stable order."""
        return sorted(routed_versions(self.planned))

    def choice(self, backend: str) -> Choice:
        """The choice of a backend model."""
        return next(c for c in self.choices if c.backend.name == backend)

    def waits(self) -> dict[tuple[str, str], float]:
        """How long the router waits for each routed version.

        Its model's own timeout and a margin: the model's 504 (which says why) comes first,
        and a server that hangs altogether still gets one from the router.
        """
        return {
            (backend, version): server_limits(self.deployer, self.choice(backend)).timeout_s
            + ROUTER_WAIT_MARGIN_S
            for backend, version in self.needed
        }


@dataclass(frozen=True)
class Deployed:
    """A deploy that switched the table."""

    table: DeployerTable
    record: dict[str, Any]
    url: str | None
    summary: str


class Launcher(Protocol):
    """The backend-specific steps of a deploy (local processes, Kubernetes objects)."""

    async def launch(self, plan: DeployPlan) -> Urls:
        """Servers for every version in `plan.needed`, healthy; `DeployError` if not."""
        ...

    async def rollback(self, plan: DeployPlan) -> None:
        """Undo what `launch` started for a deploy that will not switch the table."""
        ...

    def record_extras(self, plan: DeployPlan) -> dict[str, Any]:
        """Backend fields for the deployment record (what a restart needs to serve it)."""
        ...

    async def retire(self, plan: DeployPlan) -> int:
        """Stop what the new table no longer routes to; how many servers were stopped."""
        ...

    def outputs(self) -> dict[str, Any]:
        """Backend outputs of the deploy action, next to its URL and models."""
        ...


async def plan_deploy(
    bus: Bus,
    registry: ModelRegistry,
    request: ActionRequest,
    axon: Axon,
    deployer: DeployerSpec,
    *,
    run_id: str,
    require_model: bool = True,
) -> DeployPlan:
    """Step 1: the versions to serve (chosen anew) and the table to route by."""
    previous = await read_json(bus, deploy_key(request.namespace, request.axon, deployer.name))
    choices = await choose_versions(
        registry, request, axon, deployer, history_of(previous), require_model=require_model
    )
    return plan_of(request, axon, deployer, run_id, choices)


def plan_of(
    request: ActionRequest, axon: Axon, deployer: DeployerSpec, run_id: str, choices: list[Choice]
) -> DeployPlan:
    """The plan for versions already chosen (a restart serves a record's versions again)."""
    pending = {
        c.backend.name: [Endpoint(version=str(v), url=f"http://pending/{v}") for v in c.history]
        for c in choices
    }
    planned = build_deployer_table(request.axon, deployer, pending)
    for choice in choices:
        server_limits(deployer, choice)  # refused here, before anything starts
    return DeployPlan(request, axon, deployer, run_id, choices, planned)


async def deploy(bus: Bus, plan: DeployPlan, launcher: Launcher) -> Deployed:
    """Steps 2 to 4: launch, switch the table and write the record, retire the old servers.

    `DeployError`/`RoutingError` when it cannot be done; the previous table then stays.
    """
    request, deployer = plan.request, plan.deployer
    ns, name = request.namespace, request.axon
    try:
        urls = await launcher.launch(plan)
        table = expand_replicas(plan.planned, urls, plan.waits())
        await write_router_part(bus, ns, name, deployer.name, table)
    except BaseException:
        await launcher.rollback(plan)
        raise
    router = await read_json(bus, ROUTER_URL_KEY)
    router_url = (router or {}).get("url")
    url = fixed_url(router_url, name) if isinstance(router_url, str) and router_url else None
    record = deployment_record(request, deployer, table, plan.choices, url=url, run_id=plan.run_id)
    record.update(launcher.record_extras(plan))
    await bus.kv_put(
        MODELS_BUCKET, deploy_key(ns, name, deployer.name), json.dumps(record).encode()
    )
    await launcher.retire(plan)
    serving = ", ".join(
        f"{b.name} v{b.version} ({b.weight:g}%)"
        for m in table.models
        for b in m.backends
        if not b.shadow
    )
    summary = f"serving {serving}" + (f" at {url}" if url else "")
    return Deployed(table, record, url, summary)


@dataclass(frozen=True)
class DeployAction:
    """One deployer action about to be deployed."""

    request: ActionRequest
    axon: Axon
    deployer: DeployerSpec
    run_id: str


class LaunchFailed(Exception):
    """The backend's run of a launch did not succeed: its outcome is the deploy action's."""

    def __init__(self, outcome: RunOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class Deployer(ABC):
    """Runs deployer actions through the deploy flow; a backend supplies the launcher.

    The runner drives it: `deploy` per deployer action, `undeploy_axon` when an Axon is
    deleted, `shutdown` and `recover` with the executor.
    """

    require_model: ClassVar[bool] = True
    """Whether a deploy task must name a model class (the local `ranvier serve` needs one)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.registry = ModelRegistry(BusKeyValue(bus, MODELS_BUCKET))
        self._closed = False

    async def deploy(
        self,
        request: ActionRequest,
        axon: Axon,
        axon_dir: Path,
        on_running: OnStarted | None = None,
        *,
        run_id: str | None = None,
    ) -> RunOutcome:
        """Deploy as run `run_id`: Succeeded once it serves; never raises for a deployment
        that cannot be done (the previous table then stays)."""
        run_id = run_id or new_id()
        if self._closed:
            return RunOutcome(run_id, "Failed", "cancelled: executor shut down")
        started = utcnow()
        bound = log.bind(run_id=run_id, axon=request.axon, deployer=request.task)
        async with self._deploying(request.namespace, request.axon):
            try:
                action = DeployAction(request, axon, deployer_spec(request, axon), run_id)
                launcher = await self._begin(action, Path(axon_dir), on_running)
                plan = await plan_deploy(
                    self.bus,
                    self.registry,
                    request,
                    axon,
                    action.deployer,
                    run_id=run_id,
                    require_model=self.require_model,
                )
                done = await deploy(self.bus, plan, launcher)
            except LaunchFailed as failed:
                return failed.outcome
            except (DeployError, RoutingError) as exc:
                bound.info("deploy.failed", reason=str(exc))
                return RunOutcome(run_id, "Failed", str(exc), started=started)
        bound.info("deploy.succeeded", url=done.url)
        outputs = {"url": done.url, "models": done.record["models"], **launcher.outputs()}
        return RunOutcome(run_id, "Succeeded", done.summary, outputs=outputs, started=started)

    def _deploying(self, namespace: str, axon: str) -> AbstractAsyncContextManager[object]:
        """Held while an Axon's action deploys (nothing by default)."""
        return contextlib.nullcontext()

    @abstractmethod
    async def _begin(
        self, action: DeployAction, axon_dir: Path, on_running: OnStarted | None
    ) -> Launcher:
        """Start a deploy: the launcher of its servers."""

    @abstractmethod
    async def undeploy_axon(self, namespace: str, name: str) -> None:
        """Stop everything deployed for an Axon (it was deleted)."""

    @abstractmethod
    async def shutdown(self) -> None:
        """At executor shutdown: stop (or let go of) what this deployer runs."""

    @abstractmethod
    async def recover(self) -> Sequence[object]:
        """At start-up: stop what a crashed executor left and serve its deployments again."""


async def read_json(bus: Bus, key: str) -> dict[str, Any] | None:
    """A JSON record of the models bucket (None when absent or unreadable)."""
    found = await bus.kv_get(MODELS_BUCKET, key)
    if found is None:
        return None
    try:
        value = json.loads(found[0])
    except ValueError:
        log.warning("deploy.record_unreadable", key=key)
        return None
    return value if isinstance(value, dict) else None


__all__ = [
    "Choice",
    "DeployAction",
    "DeployError",
    "DeployPlan",
    "Deployed",
    "Deployer",
    "LaunchFailed",
    "Launcher",
    "Urls",
    "choose_version",
    "choose_versions",
    "deploy",
    "deploy_key",
    "deployer_spec",
    "deployment_record",
    "expand_replicas",
    "fixed_url",
    "history_of",
    "merge_part",
    "next_history",
    "plan_deploy",
    "plan_of",
    "read_json",
    "routed_versions",
    "router_key",
    "versions_kept",
    "write_router_part",
]
