"""The deployer action on this machine: model servers as processes, the router table in KV.

The deploy itself (plan, launch, switch the table, record, retire) is `executors.deploy_flow`,
the same on every backend; here is what it launches: `ranvier serve` processes for the routed
versions (`executors.model_servers`), started and health-checked before the table switches.
A server that does not come up stops every process this deploy started and leaves the previous
table alone, so a broken model class never takes traffic away from a working one.

Model servers are process trees in their own session (like the local backend's runs) and each
is recorded in `<state-dir>/local-servers/<id>.json` (pid, kernel start time, boot id, owner),
so `recover()` after a crash, `shutdown()` and `undeploy_axon()` stop all of them and never
signal an unrelated process that reused a pid.

A deployment outlives the executor that made it: `shutdown()` stops the servers and takes their
routes out of the table (nothing routes to a port another process may take), but keeps the
deployment record, which holds the action request and the version history. At start-up,
`recover()` stops servers a crashed executor left behind, then serves every deployment recorded
by this machine's state dir again: the same versions from the history, so the same weights,
new servers, and the table rewritten with their URLs. Only a deleted Axon (or one whose
versions are gone) is forgotten instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from pydantic import ValidationError

from events.bus import Bus, BusError, kv_key
from events.errors import RanvierError
from events.model import ActionRequest, LifecycleData, format_time, new_id, utcnow
from events.subjects import MODELS_BUCKET, token
from executors.backends.base import OnStarted, lifecycle
from executors.backends.local_setup import task_environment
from executors.backends.processes import (
    RecordFiles,
    boot_id,
    group_members,
    proc_start,
    session_ids,
    start_session,
    stop_tree,
)
from executors.deploy_flow import (
    Choice,
    DeployAction,
    Deployer,
    DeployError,
    DeployPlan,
    Urls,
    deploy,
    deploy_key,
    deployer_spec,
    history_of,
    plan_of,
    read_json,
    router_key,
    versions_kept,
    write_router_part,
)
from executors.model_servers import (
    ServerLaunch,
    ServerRecord,
    await_healthy,
    launch_spec,
    serve_argv,
    server_env,
    working_dir,
)
from executors.serving.routing import (
    DeployerTable,
    RoutingError,
)
from sensors.axons import AxonStore, AxonStoreError
from sensors.spec import Axon, Task
from sensors.spec import Deployer as DeployerSpec

log = structlog.get_logger(__name__)

SERVERS_DIR: Final = "local-servers"
DEFAULT_START_TIMEOUT: Final = 120.0
DEFAULT_GRACE: Final = 5.0


@dataclass
@dataclass
class _Server:
    record: ServerRecord
    proc: asyncio.subprocess.Process | None


@dataclass(frozen=True)
class DeployStarted:
    """A deploy is under way: what the runner reports as Running."""

    run_id: str

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The Running lifecycle payload."""
        return lifecycle(request, self.run_id, "Running")


@dataclass
class _Context:
    request: ActionRequest
    axon: Axon
    deployer: DeployerSpec
    run_id: str
    started: list[_Server] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The deployer


class LocalDeployer(Deployer):
    """Carries out deployer actions with model-server processes on this machine."""

    def __init__(
        self,
        bus: Bus,
        *,
        state_dir: Path,
        host: str = "127.0.0.1",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        grace: float = DEFAULT_GRACE,
        drain: float = 0.5,
        python: str = sys.executable,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        """`drain`: seconds old servers keep answering after the table switched (in-flight)."""
        super().__init__(bus)
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.start_timeout = start_timeout
        self.grace = grace
        self.drain = drain
        self.python = python
        # Servers inherit the executor's environment minus its credentials (as tasks do);
        # they get what they need per launch.
        self.base_env = task_environment(os.environ if base_env is None else base_env)
        self._servers: dict[str, _Server] = {}
        self._records = RecordFiles(
            self.servers_dir, ServerRecord, "deploy.server_record_unreadable"
        )
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @property
    def servers_dir(self) -> Path:
        """Where live server records are kept."""
        return self.state_dir / SERVERS_DIR

    def workspace(self, axon: str, namespace: str = "default") -> Path:
        """`<state-dir>/<namespace>/<axon>/` (shared with the local backend)."""
        return self.state_dir / token(namespace) / token(axon)

    def live_servers(self) -> list[ServerRecord]:
        """Model servers running now, started by this deployer."""
        return [s.record for s in self._servers.values()]

    # -- deploying ----------------------------------------------------------------------------

    def _deploying(self, namespace: str, axon: str) -> asyncio.Lock:
        """One deploy, restore or undeploy of an Axon at a time."""
        return self._locks.setdefault((namespace, axon), asyncio.Lock())

    async def _begin(
        self, action: DeployAction, axon_dir: Path, on_running: OnStarted | None
    ) -> _Processes:
        """Report the deploy Running; its servers are `ranvier serve` processes."""
        if on_running is not None:
            await on_running(DeployStarted(action.run_id))
        ctx = _Context(action.request, action.axon, action.deployer, action.run_id)
        return _Processes(self, ctx, axon_dir)

    async def _recorded(self, ctx: _Context, history: Mapping[str, list[int]]) -> list[Choice]:
        """The versions a deployment record holds (newest first), to serve them again as they were.

        Nothing is chosen anew: index 0 stays the version deployed last, so rolloutSpec weights
        split traffic as before.
        """
        request, axon, deployer = ctx.request, ctx.axon, ctx.deployer
        keep = versions_kept(deployer)
        choices: list[Choice] = []
        for model in deployer.models:
            for backend in model.backend_models:
                deploy = axon.spec.task(backend.deployer)
                if deploy is None or deploy.deploy is None or not deploy.deploy.model:
                    raise DeployError(
                        f"backend model {backend.name!r}: {backend.deployer!r} is no longer a "
                        f"deploy task with a model"
                    )
                versions = history.get(backend.name) or []
                version = (
                    await self.registry.get(
                        request.axon, backend.trainer, versions[0], namespace=request.namespace
                    )
                    if versions
                    else None
                )
                if version is None:
                    raise DeployError(
                        f"backend model {backend.name!r}: the deployed version of "
                        f"{backend.trainer!r} is no longer in the registry"
                    )
                choices.append(Choice(model.name, backend, deploy, version, tuple(versions[:keep])))
        return choices

    async def _launch(
        self, ctx: _Context, choice: Choice, axon_dir: Path, version: int
    ) -> ServerLaunch:
        """What to start for one version of a backend model (its servers share it)."""
        request = ctx.request
        model_path = await self._model_path(ctx, choice, version)
        task = choice.deploy_task
        assert task.deploy is not None  # checked by _choose
        assert task.deploy.model
        cwd = working_dir(ctx.axon, task, axon_dir, self.workspace(request.axon, request.namespace))
        env = self._server_env(ctx, choice, task, model_path, version)
        argv = serve_argv(
            self.python,
            task.deploy.model,
            model_path=model_path,
            host=self.host,
            cwd=cwd,
            version=version,
        )
        backend = choice.backend.name
        return ServerLaunch(
            backend=backend,
            version=str(version),
            spec=launch_spec(
                request, ctx.deployer.name, backend=backend, argv=argv, cwd=cwd, env=env
            ),
            argv=argv,
            cwd=cwd,
            env=env,
            model_path=model_path,
            replicas=max(1, task.deploy.replicas),
            task=task.name,
        )

    async def _model_path(self, ctx: _Context, choice: Choice, version: int) -> Path:
        """The directory of a registered model version; DeployError if it is gone."""
        request = ctx.request
        record = await self.registry.get(
            request.axon, choice.backend.trainer, version, namespace=request.namespace
        )
        if record is None:
            raise DeployError(
                f"backend model {choice.backend.name!r}: version {version} of "
                f"{choice.backend.trainer!r} is no longer in the registry"
            )
        model_path = Path(record.path)
        if not await asyncio.to_thread(model_path.is_dir):
            raise DeployError(
                f"backend model {choice.backend.name!r}: version {version} directory "
                f"{model_path} does not exist"
            )
        return model_path

    def _server_env(
        self, ctx: _Context, choice: Choice, task: Task, model_path: Path, version: int
    ) -> dict[str, str]:
        """A server's environment: the executor's (no credentials), the task's and deployer's
        variables, and what `ranvier serve` and the model class read."""
        request = ctx.request
        env = dict(self.base_env)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(server_env(task.body.env, f"task {task.name!r}"))
        env.update(server_env(ctx.deployer.env, f"deployer {ctx.deployer.name!r}"))
        env.update(
            MODEL_PATH=str(model_path),
            TASK_NAME=task.name,
            AXON_NAME=request.axon,
            NAMESPACE=request.namespace,
            RANVIER_AXON=request.axon,
            RANVIER_MODEL=choice.backend.name,
            RANVIER_VERSION=str(version),
        )
        return env

    async def _ensure(self, ctx: _Context, launch: ServerLaunch) -> list[str]:
        """URLs of the launch's replicas: running ones are reused, missing ones started."""
        urls: list[str] = []
        for replica in range(launch.replicas):
            running = next(
                (
                    s
                    for s in self._servers.values()
                    if s.record.spec == launch.spec
                    and s.record.replica == replica
                    and s.record.url is not None
                    and (s.proc is None or s.proc.returncode is None)
                ),
                None,
            )
            if running is None:
                running = await self._start(ctx, launch, replica)
            assert running.record.url is not None
            urls.append(running.record.url)
        return urls

    async def _start(self, ctx: _Context, launch: ServerLaunch, replica: int) -> _Server:
        """Start one replica of a launch and return it once healthy (recorded on disk)."""
        request = ctx.request
        server_id = new_id()
        log_path = (
            self.workspace(request.axon, request.namespace)
            / "logs"
            / token(launch.task)
            / f"server-{token(launch.backend)}-v{token(launch.version)}-{server_id}.log"
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc = await start_session(launch.argv, launch.cwd, launch.env, log_path)
        except OSError as exc:
            raise DeployError(f"cannot start model server: {exc}") from None
        record = ServerRecord(
            id=server_id,
            namespace=request.namespace,
            axon=request.axon,
            deployer=ctx.deployer.name,
            task=launch.task,
            backend=launch.backend,
            version=launch.version,
            replica=replica,
            spec=launch.spec,
            **session_ids(proc.pid),
            log_path=str(log_path),
            model_path=str(launch.model_path),
            started=format_time(utcnow()),
        )
        server = _Server(record, proc)
        self._servers[server_id] = server
        ctx.started.append(server)
        self._records.write(server_id, record)
        log.info(
            "deploy.server_started",
            axon=request.axon,
            backend=launch.backend,
            version=launch.version,
            pid=proc.pid,
            log=str(log_path),
        )
        what = f"model server {launch.backend} version {launch.version}"
        url = await await_healthy(proc, log_path, what, self.start_timeout)
        server.record = record = ServerRecord(**{**asdict(record), "url": url})
        self._records.write(server_id, record)
        return server

    # -- KV -----------------------------------------------------------------------------------

    async def _write_part(
        self, namespace: str, axon: str, deployer: str, table: DeployerTable | None
    ) -> None:
        await write_router_part(self.bus, namespace, axon, deployer, table)

    async def _forget(self, namespace: str, axon: str, deployer: str | None) -> None:
        """Remove deployments (one deployer, or all of the axon) from the table and records."""
        if deployer is not None:
            await self._write_part(namespace, axon, deployer, None)
            await self.bus.kv_delete(MODELS_BUCKET, deploy_key(namespace, axon, deployer))
            return
        await self.bus.kv_delete(MODELS_BUCKET, router_key(namespace, axon))
        prefix = f"{kv_key('deploy', namespace, axon)}."
        for key in await self.bus.kv_keys(MODELS_BUCKET, f"{prefix}>"):
            await self.bus.kv_delete(MODELS_BUCKET, key)

    # -- stopping -----------------------------------------------------------------------------

    async def _stop(self, server: _Server, reason: str) -> None:
        record = server.record
        try:
            await stop_tree(record.pgid, self.grace, server.proc)
        finally:
            self._servers.pop(record.id, None)
            self._records.remove(record.id)
        log.info(
            "deploy.server_stopped",
            axon=record.axon,
            backend=record.backend,
            version=record.version,
            pid=record.pid,
            reason=reason,
        )

    async def _stop_all(self, servers: Iterable[_Server], reason: str) -> None:
        await asyncio.gather(*(self._stop(s, reason) for s in list(servers)))

    async def undeploy_axon(self, namespace: str, name: str) -> None:
        """Stop an Axon's model servers and remove its routes and deployment records."""
        async with self._deploying(namespace, name):
            mine = [
                s
                for s in self._servers.values()
                if s.record.namespace == namespace and s.record.axon == name
            ]
            await self._forget(namespace, name, None)
            await self._stop_all(mine, "axon deleted")

    async def shutdown(self) -> None:
        """Stop every model server and unroute it; deployment records stay for `recover()`."""
        self._closed = True
        servers = list(self._servers.values())
        deployments = {(s.record.namespace, s.record.axon, s.record.deployer) for s in servers}
        for namespace, axon, deployer in sorted(deployments):
            try:
                await self._write_part(namespace, axon, deployer, None)
            except (BusError, OSError, TimeoutError, RanvierError) as exc:
                # the bus may already be gone at shutdown; the processes are what must stop
                log.warning("deploy.unroute_failed", axon=axon, deployer=deployer, error=str(exc))
        await self._stop_all(servers, "executor shut down")

    async def recover(self) -> list[ServerRecord]:
        """At start-up: stop the servers a previous executor left, then serve its deployments.

        Returns the servers stopped. Every deployment recorded from this host and state dir
        whose servers no live executor owns is served again (`restore`), or forgotten when
        that is no longer possible (its Axon deleted, its versions gone).
        """
        stopped, busy = await self._stop_leftovers()
        handled = set(busy)  # another executor on this state dir serves those
        for key in sorted(await self.bus.kv_keys(MODELS_BUCKET, "deploy.>")):
            record = await read_json(self.bus, key)
            if record is None or not self._owns(record):
                continue
            where = (str(record["namespace"]), str(record["axon"]), str(record["deployer"]))
            if where not in handled:
                handled.add(where)
                await self.restore(record)
        for namespace, axon, deployer in sorted(
            {(r.namespace, r.axon, r.deployer) for r in stopped} - handled
        ):
            # servers stopped, and no record says how to serve them again: unroute them
            await self._forget(namespace, axon, deployer)
        return stopped

    def _owns(self, record: Mapping[str, Any]) -> bool:
        """A deployment this deployer served: same host and state dir (servers are local)."""
        host, state_dir = record.get("host"), record.get("state_dir")
        return host == socket.gethostname() and state_dir == str(self.state_dir)

    async def restore(self, record: Mapping[str, Any]) -> bool:
        """Serve a recorded deployment again: its versions, new servers, the table rewritten.

        True once it serves; False (logged) when it cannot be, and then it is forgotten
        (routes and record removed) so that nothing points at servers that do not exist.
        """
        ns, name = str(record.get("namespace")), str(record.get("axon"))
        deployer_name = str(record.get("deployer"))
        bound = log.bind(axon=name, namespace=ns, deployer=deployer_name)
        async with self._deploying(ns, name):
            if any(
                (s.record.namespace, s.record.axon, s.record.deployer) == (ns, name, deployer_name)
                for s in self._servers.values()
            ):
                return True  # already served by this deployer
            try:
                request = ActionRequest.model_validate(record.get("request"))
                store = AxonStore(self.bus)
                latest = await store.get(ns, name)
                if latest is None or latest.deleted:
                    raise DeployError(f"axon {ns}/{name} is not submitted any more")
                stored = await store.get(ns, name, request.generation) or latest
                ctx = _Context(
                    request,
                    stored.axon,
                    deployer_spec(request, stored.axon),
                    str(record.get("run_id") or new_id()),
                )
                choices = await self._recorded(ctx, history_of(record))
                plan = plan_of(request, ctx.axon, ctx.deployer, ctx.run_id, choices)
                launcher = _Processes(self, ctx, stored.axon_dir or Path.cwd())
                done = await deploy(self.bus, plan, launcher)
            except (DeployError, RoutingError, AxonStoreError, ValidationError) as exc:
                bound.warning("deploy.not_restored", reason=str(exc))
                await self._forget(ns, name, deployer_name)
                return False
        bound.info("deploy.restored", url=done.url, models=done.record["models"])
        return True

    async def _stop_leftovers(self) -> tuple[list[ServerRecord], set[tuple[str, str, str]]]:
        """Stop servers whose executor is gone; (stopped, deployments a live executor serves)."""
        stopped: list[ServerRecord] = []
        busy: set[tuple[str, str, str]] = set()
        boot = boot_id()
        for path, record in self._records.read():
            if record.id in self._servers or record.owner_alive(boot):
                busy.add((record.namespace, record.axon, record.deployer))
                continue
            if record.boot_id == boot and (
                proc_start(record.pid) == record.proc_start or group_members(record.pgid)
            ):
                await stop_tree(record.pgid, self.grace)
            path.unlink(missing_ok=True)
            stopped.append(record)
            log.info("deploy.server_recovered", axon=record.axon, pid=record.pid)
        return stopped, busy


class _Processes:
    """The deploy flow's launcher on this machine: `ranvier serve` processes per version."""

    def __init__(self, deployer: LocalDeployer, ctx: _Context, axon_dir: Path) -> None:
        self.deployer = deployer
        self.ctx = ctx
        self.axon_dir = axon_dir
        self.launches: dict[tuple[str, str], ServerLaunch] = {}
        self.stopped = 0

    async def launch(self, plan: DeployPlan) -> Urls:
        """Start (or reuse) the servers of every routed version; all healthy, or DeployError."""
        d, needed = self.deployer, plan.needed
        for backend, version in needed:
            choice = plan.choice(backend)
            self.launches[(backend, version)] = await d._launch(
                self.ctx, choice, self.axon_dir, int(version)
            )
        results = await asyncio.gather(
            *(d._ensure(self.ctx, self.launches[key]) for key in needed), return_exceptions=True
        )
        urls: Urls = {}
        for key, found in zip(needed, results, strict=True):
            if isinstance(found, BaseException):
                # an unexpected error (a bug) wins over a DeployError naming a bad model
                raise next(
                    (r for r in results if isinstance(r, BaseException)
                     and not isinstance(r, DeployError)),
                    found,
                )  # fmt: skip
            urls[key] = found
        return urls

    async def rollback(self, plan: DeployPlan) -> None:
        """Stop every server this deploy started (the previous table still routes)."""
        await asyncio.shield(self.deployer._stop_all(self.ctx.started, "rolled back"))

    def record_extras(self, plan: DeployPlan) -> dict[str, Any]:
        """What `recover()` needs to serve it again after a restart, and where it may."""
        return {
            "request": plan.request.model_dump(mode="json"),
            "host": socket.gethostname(),
            "state_dir": str(self.deployer.state_dir),
        }

    def outputs(self) -> dict[str, Any]:
        """How many servers the deploy stopped (versions no longer routed)."""
        return {"stopped": self.stopped}

    async def retire(self, plan: DeployPlan) -> int:
        """Stop this deployer's servers the new table does not route to, after a drain."""
        d, request = self.deployer, plan.request
        keep = {launch.spec for launch in self.launches.values()}
        stale = [
            s
            for s in d._servers.values()
            if s.record.namespace == request.namespace
            and s.record.axon == request.axon
            and s.record.deployer == plan.deployer.name
            and s.record.spec not in keep
        ]
        if stale:
            await asyncio.sleep(d.drain)  # requests routed by the old table finish first
            await d._stop_all(stale, "no longer routed")
        self.stopped = len(stale)
        return self.stopped
