"""The deployer action on this machine: model servers as processes, the router table in KV.

The deploy itself (plan, launch, switch the table, record, retire) is `executors.deploy_flow`,
the same on every backend; here is what it launches: `ranvier serve` processes for the routed
versions, started and health-checked before the table switches. A server that does not come up
stops every process this deploy started and leaves the previous table alone, so a broken model
class never takes traffic away from a working one.

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
import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import structlog
from pydantic import ValidationError

from events.bus import Bus, BusError, kv_key
from events.errors import RanvierError
from events.model import ActionRequest, LifecycleData, format_time, new_id, utcnow
from events.subjects import MODELS_BUCKET, token
from executors.backends.base import Started, lifecycle
from executors.backends.local import (
    RunOutcome,
    TaskSetupError,
    checkout_dir,
    group_members,
    stop_tree,
    task_environment,
    task_source,
)
from executors.deploy_flow import (
    Choice,
    DeployError,
    DeployPlan,
    Urls,
    deploy,
    deploy_key,
    deployer_spec,
    history_of,
    plan_deploy,
    plan_of,
    read_json,
    router_key,
    versions_kept,
    write_router_part,
)
from executors.kv import BusKeyValue
from executors.registry import ModelRegistry
from executors.serving.routing import (
    DeployerTable,
    RoutingError,
)
from sensors.axons import AxonStore, AxonStoreError
from sensors.spec import Axon, Deployer, EnvVar, Task

log = structlog.get_logger(__name__)

SERVERS_DIR: Final = "local-servers"
DEFAULT_START_TIMEOUT: Final = 120.0
DEFAULT_GRACE: Final = 5.0
_POLL: Final = 0.05
_CAS_ATTEMPTS: Final = 20
_LISTENING: Final = re.compile(rb"ranvier: listening on (http://\S+)")
_LOG_HEAD: Final = 65536


def working_dir(axon: Axon, task: Task, axon_dir: Path, workspace: Path) -> Path:
    """Where a deploy task's class file is: the local backend's rule (`task_source`).

    A git artifact is the checkout the trainer already cloned into the workspace.
    """
    try:
        source = task_source(axon, task)
    except TaskSetupError as exc:
        raise DeployError(exc.message, hint=exc.hint) from None
    artifact = source.artifact
    if artifact is None:
        base = axon_dir.resolve()
    elif artifact.local is not None:
        base = (axon_dir / artifact.local.path).resolve()
    else:
        base = checkout_dir(workspace, artifact)
        if not base.is_dir():
            raise DeployError(
                f"git artifact {artifact.name!r} of task {task.name!r} is not checked out",
                hint="run a task from it first (the trainer clones it)",
            )
    cwd = (base / source.subdir).resolve() if source.subdir else base
    if not cwd.is_dir():
        raise DeployError(
            f"working directory {cwd} of task {task.name!r} does not exist",
            hint="fix workingDir (relative to the artifact or the Axon file)",
        )
    return cwd


def _env(items: Iterable[EnvVar] | object, where: str) -> dict[str, str]:
    if not items:
        return {}
    out: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        var = item if isinstance(item, EnvVar) else EnvVar.model_validate(item)
        if var.value_from is not None:
            raise DeployError(
                f"{where}: env {var.name} takes its value from a Secret or ConfigMap",
                hint="give it a value for local deploys",
            )
        out[var.name] = var.value or ""
    return out


# ---------------------------------------------------------------------------------------------
# Processes


def _proc_start(pid: int) -> int | None:
    """The kernel's start time of `pid` (to tell it from a later process with the same pid)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _last_line(path: Path, limit: int = 300) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True)
class ServerRecord:
    """A model server process, as written to disk so that nothing outlives its executor."""

    id: str
    namespace: str
    axon: str
    deployer: str
    task: str
    backend: str
    version: str
    replica: int
    spec: str
    pid: int
    pgid: int
    proc_start: int | None
    boot_id: str | None
    owner_pid: int
    owner_start: int | None
    log_path: str
    model_path: str
    started: str
    url: str | None = None


@dataclass
class _Server:
    record: ServerRecord
    proc: asyncio.subprocess.Process | None


@dataclass(frozen=True)
class _Launch:
    """Everything needed to start the servers of one backend model version."""

    backend: str
    version: str
    spec: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    model_path: Path
    replicas: int
    task: str


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
    deployer: Deployer
    run_id: str
    started: list[_Server] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The deployer


class LocalDeployer:
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
        self.bus = bus
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.start_timeout = start_timeout
        self.grace = grace
        self.drain = drain
        self.python = python
        # Servers inherit the executor's environment minus its credentials (as tasks do);
        # they get what they need per launch.
        self.base_env = task_environment(os.environ if base_env is None else base_env)
        self.registry = ModelRegistry(BusKeyValue(bus, MODELS_BUCKET))
        self._servers: dict[str, _Server] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._closed = False

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

    async def deploy(
        self,
        request: ActionRequest,
        axon: Axon,
        axon_dir: Path,
        on_running: Callable[[Started], Awaitable[None]] | None = None,
        *,
        run_id: str | None = None,
    ) -> RunOutcome:
        """Deploy one deployer action; never raises for a deployment that cannot be done."""
        run_id = run_id or new_id()
        bound = log.bind(run_id=run_id, axon=request.axon, deployer=request.task)
        if self._closed:
            return RunOutcome(run_id, "Failed", "cancelled: executor shut down")
        started_at = utcnow()
        lock = self._locks.setdefault((request.namespace, request.axon), asyncio.Lock())
        async with lock:
            try:
                deployer = deployer_spec(request, axon)
                ctx = _Context(request, axon, deployer, run_id)
                if on_running is not None:
                    await on_running(DeployStarted(run_id))
                plan = await plan_deploy(
                    self.bus, self.registry, request, axon, deployer, run_id=run_id
                )
                outputs = await self._serve(ctx, plan, Path(axon_dir))
            except (DeployError, RoutingError) as exc:
                bound.info("deploy.failed", reason=str(exc))
                return RunOutcome(run_id, "Failed", str(exc), started=started_at)
        bound.info("deploy.succeeded", url=outputs.get("url"))
        return RunOutcome(
            run_id,
            "Succeeded",
            outputs["summary"],
            outputs={k: v for k, v in outputs.items() if k != "summary"},
            started=started_at,
        )

    async def _serve(self, ctx: _Context, plan: DeployPlan, axon_dir: Path) -> dict[str, Any]:
        """The deploy flow with this machine's model servers."""
        launcher = _Processes(self, ctx, axon_dir)
        done = await deploy(self.bus, plan, launcher)
        return {
            "summary": done.summary,
            "url": done.url,
            "models": done.record["models"],
            "stopped": launcher.stopped,
        }

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

    async def _launch(self, ctx: _Context, choice: Choice, axon_dir: Path, version: int) -> _Launch:
        request, axon = ctx.request, ctx.axon
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
        task = choice.deploy_task
        assert task.deploy is not None  # checked by _choose
        assert task.deploy.model
        cwd = working_dir(axon, task, axon_dir, self.workspace(request.axon, request.namespace))
        env = dict(self.base_env)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(_env(task.body.env, f"task {task.name!r}"))
        env.update(_env(ctx.deployer.env, f"deployer {ctx.deployer.name!r}"))
        env.update(
            MODEL_PATH=str(model_path),
            TASK_NAME=task.name,
            AXON_NAME=request.axon,
            NAMESPACE=request.namespace,
            RANVIER_AXON=request.axon,
            RANVIER_MODEL=choice.backend.name,
            RANVIER_VERSION=str(version),
        )
        argv = [
            self.python,
            "-m",
            "ranvier",
            "serve",
            task.deploy.model,
            "--model-path",
            str(model_path),
            "--port",
            "0",
            "--host",
            self.host,
            "--workdir",
            str(cwd),
            "--model-version",
            str(version),
        ]
        spec = hashlib.sha256(
            json.dumps(
                [
                    request.namespace,
                    request.axon,
                    ctx.deployer.name,
                    choice.backend.name,
                    argv,
                    str(cwd),
                    sorted(env.items()),
                ]
            ).encode()
        ).hexdigest()[:16]
        return _Launch(
            backend=choice.backend.name,
            version=str(version),
            spec=spec,
            argv=argv,
            cwd=cwd,
            env=env,
            model_path=model_path,
            replicas=max(1, task.deploy.replicas),
            task=task.name,
        )

    async def _ensure(self, ctx: _Context, launch: _Launch) -> list[str]:
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

    async def _start(self, ctx: _Context, launch: _Launch, replica: int) -> _Server:
        request = ctx.request
        server_id = new_id()
        log_path = (
            self.workspace(request.axon, request.namespace)
            / "logs"
            / token(launch.task)
            / f"server-{token(launch.backend)}-v{token(launch.version)}-{server_id}.log"
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as logfile:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *launch.argv,
                    cwd=launch.cwd,
                    env=launch.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
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
            pid=proc.pid,
            pgid=proc.pid,
            proc_start=_proc_start(proc.pid),
            boot_id=_boot_id(),
            owner_pid=os.getpid(),
            owner_start=_proc_start(os.getpid()),
            log_path=str(log_path),
            model_path=str(launch.model_path),
            started=format_time(utcnow()),
        )
        server = _Server(record, proc)
        self._servers[server_id] = server
        ctx.started.append(server)
        self._write_record(record)
        log.info(
            "deploy.server_started",
            axon=request.axon,
            backend=launch.backend,
            version=launch.version,
            pid=proc.pid,
            log=str(log_path),
        )
        url = await self._await_healthy(proc, log_path, launch)
        server.record = record = ServerRecord(**{**asdict(record), "url": url})
        self._write_record(record)
        return server

    async def _await_healthy(
        self, proc: asyncio.subprocess.Process, log_path: Path, launch: _Launch
    ) -> str:
        what = f"model server {launch.backend} version {launch.version}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        url: str | None = None
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if proc.returncode is not None:
                    last = _last_line(log_path)
                    raise DeployError(
                        f"{what} did not start: exited with code {proc.returncode}"
                        + (f": {last}" if last else "")
                    )
                if url is None:
                    url = _listening_url(log_path)
                if url is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{url}/health")).status_code == 200:
                            return url
                if loop.time() >= deadline:
                    last = _last_line(log_path)
                    raise DeployError(
                        f"{what} not healthy after {self.start_timeout:g}s"
                        + (f": {last}" if last else ""),
                        hint="see its log " + str(log_path),
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_POLL):
                        await asyncio.shield(proc.wait())

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
            (self.servers_dir / f"{token(record.id)}.json").unlink(missing_ok=True)
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
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
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
        lock = self._locks.setdefault((ns, name), asyncio.Lock())
        async with lock:
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
                outputs = await self._serve(ctx, plan, stored.axon_dir or Path.cwd())
            except (DeployError, RoutingError, AxonStoreError, ValidationError) as exc:
                bound.warning("deploy.not_restored", reason=str(exc))
                await self._forget(ns, name, deployer_name)
                return False
        bound.info("deploy.restored", url=outputs.get("url"), models=outputs.get("models"))
        return True

    async def _stop_leftovers(self) -> tuple[list[ServerRecord], set[tuple[str, str, str]]]:
        """Stop servers whose executor is gone; (stopped, deployments a live executor serves)."""
        stopped: list[ServerRecord] = []
        busy: set[tuple[str, str, str]] = set()
        if not self.servers_dir.is_dir():
            return stopped, busy
        boot = _boot_id()
        for path in sorted(self.servers_dir.glob("*.json")):
            try:
                record = ServerRecord(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("deploy.server_record_unreadable", path=str(path), error=str(exc))
                path.unlink(missing_ok=True)
                continue
            if record.id in self._servers or _owner_alive(record, boot):
                busy.add((record.namespace, record.axon, record.deployer))
                continue
            if record.boot_id == boot and (
                _proc_start(record.pid) == record.proc_start or group_members(record.pgid)
            ):
                await stop_tree(record.pgid, self.grace)
            path.unlink(missing_ok=True)
            stopped.append(record)
            log.info("deploy.server_recovered", axon=record.axon, pid=record.pid)
        return stopped, busy

    def _write_record(self, record: ServerRecord) -> None:
        self.servers_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".server.", dir=self.servers_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(record), out)
        os.replace(tmp, self.servers_dir / f"{token(record.id)}.json")


class _Processes:
    """The deploy flow's launcher on this machine: `ranvier serve` processes per version."""

    def __init__(self, deployer: LocalDeployer, ctx: _Context, axon_dir: Path) -> None:
        self.deployer = deployer
        self.ctx = ctx
        self.axon_dir = axon_dir
        self.launches: dict[tuple[str, str], _Launch] = {}
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


def _owner_alive(record: ServerRecord, boot: str | None) -> bool:
    """True if another, still running executor started the server (it is not ours to stop)."""
    if record.owner_pid == os.getpid() or record.boot_id != boot:
        return False
    start = _proc_start(record.owner_pid)
    return start is not None and start == record.owner_start


def _listening_url(log_path: Path) -> str | None:
    try:
        with log_path.open("rb") as f:
            head = f.read(_LOG_HEAD)
    except OSError:
        return None
    match = _LISTENING.search(head)
    return match.group(1).decode() if match else None


__all__ = [
    "DeployStarted",
    "LocalDeployer",
    "ServerRecord",
    "working_dir",
]
