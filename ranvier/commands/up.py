"""`ranvier run`, `up` and `down`: run roles, or a whole pipeline in one process.

`ranvier up` is the quickstart's one command: embedded NATS in the state dir, every role in one
process, the Axon submitted, progress on screen, and (with `--until`) an exit code scripts can
trust. `-d` runs the same command in the background, in its own session, with its output in
`<state-dir>/up.log`, and returns when it is up (or its goal reached); `ranvier down` stops it
through its pid file. Its embedded nats-server is supervised (`events.server.Supervisor`):
after a crash it is started again on its port and store and the roles reconnect; when it keeps
crashing, `up` stops with that reason, recorded as `stopped` in `up.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

import structlog
import typer

from events.aio import checkpoint
from events.bus import OUTAGE_ERRORS, Bus
from events.errors import RanvierError
from events.server import EmbeddedServer, Supervisor
from events.telemetry import Telemetry
from executors.backends.local import group_members, stop_tree
from ranvier.app import (
    BACKENDS,
    ROLES,
    AppError,
    Goal,
    GoalCheck,
    RoleOptions,
    available_roles,
    axon_status,
    build_roles,
    bus_idle,
    check_goal,
    roles_ready,
    run_roles,
    stop_on_signals,
    unknown_backend,
)
from ranvier.commands.common import (
    Connection,
    Replicas,
    StateDir,
    run_command,
    with_connection,
)
from ranvier.commands.status import Progress
from ranvier.health import Heartbeat, add_role_checks
from ranvier.settings import (
    Credentials,
    Settings,
    remove_url_file,
    secure_state_dir,
    server_credentials,
    write_url_file,
)
from sensors.axons import AxonStore, StoredAxon
from sensors.leases import DEFAULT_TTL
from sensors.loader import load_axon
from sensors.spec import Axon

log = structlog.get_logger(__name__)

PID_FILE: Final = "up.pid"
STATUS_FILE: Final = "up.json"
LOG_FILE: Final = "up.log"
POLL: Final = 0.5
DOWN_TIMEOUT: Final = 30.0
SERVER_ROLE: Final = "nats-server"

Backend = Annotated[
    str,
    typer.Option(
        "--backend", envvar="RANVIER_BACKEND", help="Where tasks run: local or kubernetes."
    ),
]


class GoalOption(enum.StrEnum):
    """`--until` goals."""

    succeeded = "succeeded"
    deployed = "deployed"
    idle = "idle"


# ---------------------------------------------------------------------------------------------
# State-dir files of a running `ranvier up`


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def running_pid(state_dir: Path) -> int | None:
    """The pid of the `ranvier up` recorded in `state_dir`, if it is still running."""
    found = _read_json(state_dir / PID_FILE)
    pid = found.get("pid") if found else None
    return pid if isinstance(pid, int) and pid != os.getpid() and _alive(pid) else None


# ---------------------------------------------------------------------------------------------
# ranvier up


@dataclass
class _UpRun:
    """What one `ranvier up` process does, and what it has reported so far."""

    file: Path
    axon: Axon
    settings: Settings
    backend: str
    goal: Goal | None
    limit: float | None
    detached: bool
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def status_path(self) -> Path:
        return self.settings.state_dir / STATUS_FILE

    def report(self, **changes: Any) -> None:
        """Update `<state-dir>/up.json` (what `up -d` waits on)."""
        self.status.update(changes)
        _write_json(self.status_path, self.status)


async def _up(plan: _UpRun) -> int:
    """Run `up`; whatever stops it is recorded as `stopped` in up.json, and an unexpected error
    becomes one line (the CLI's), never a traceback in up.log."""
    stopped = "cancelled"
    try:
        code = await _up_roles(plan)
        stopped = plan.status.get("stopped") or f"exit code {code}"
        return code
    except RanvierError as exc:
        stopped = exc.message
        raise
    except Exception as exc:
        stopped = f"ranvier up failed: {exc!r}"
        log.error("up.failed", error=repr(exc))
        raise AppError(stopped) from None
    finally:
        plan.report(state="stopped", stopped=stopped)


async def _up_roles(plan: _UpRun) -> int:
    settings = plan.settings
    server: EmbeddedServer | None = None
    url, _ = settings.resolve_url()
    credentials: Credentials | None = None
    if not settings.nats_url:
        credentials = server_credentials(settings.state_dir, settings.given_credentials)
        server = EmbeddedServer(store_dir=settings.store_dir, **credentials.server_kwargs())
        url = await asyncio.to_thread(server.start)
        write_url_file(settings.url_file, url)
    plan.report(pid=os.getpid(), state="starting", url=url)
    try:
        options = settings.connect_options()
        task_url = settings.task_url()
        if server is not None and credentials is not None:
            options = options.model_copy(update={"servers": [url], **credentials.client_update()})
            task_url = credentials.in_url(url)
        async with Bus.connect(options, limits=settings.stream_limits()) as bus:
            # One engine, under one name: after a crash, the next `up` takes its partitions
            # back at once instead of waiting for the leases to expire.
            role_options = RoleOptions(
                settings.state_dir,
                backend=plan.backend,
                nats_url=url,
                task_nats_url=task_url,
                replica_id="up",
            )
            roles = build_roles(bus, available_roles(), role_options)
            from ranvier.api.role import ApiRole  # only `up` and `run` need the API's imports

            if isinstance(api := roles.get("api"), ApiRole):
                api.on_listening = lambda url: _console_ready(plan, url)
            if server is not None:  # restarted on its port and store after a crash
                roles[SERVER_ROLE] = Supervisor(server)
            stop = asyncio.Event()
            with stop_on_signals(stop):
                runner = asyncio.create_task(run_roles(roles, stop))
                try:
                    stored = await AxonStore(bus).submit(plan.axon, plan.file)
                    plan.report(state="running", axon=stored.name, namespace=stored.namespace)
                    return await _follow(plan, bus, stored, runner, stop, roles=roles)
                finally:
                    stop.set()
                    with contextlib.suppress(asyncio.CancelledError):
                        await runner
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
            remove_url_file(settings.url_file, url)


async def _follow(
    plan: _UpRun,
    bus: Bus,
    stored: StoredAxon,
    runner: asyncio.Task[None],
    stop: asyncio.Event,
    *,
    roles: dict[str, Any],
) -> int:
    loop = asyncio.get_running_loop()
    goal = plan.goal
    deadline = loop.time() + plan.limit if plan.limit is not None and not plan.detached else None
    reported = False
    with Progress(tty=False if plan.detached else None) as progress:
        while True:
            checkpoint()
            try:
                doc = await axon_status(bus, stored)
                progress.update(doc)
                # after a restart the records say "deployed" before recovery serves it again
                check = (
                    check_goal(goal, doc, await bus_idle(bus))
                    if goal is not None and not reported and roles_ready(roles)
                    else GoalCheck(False)
                )
            except OUTAGE_ERRORS as exc:
                # the server is restarting (or slow): the roles carry on, so do we
                log.warning("up.status_unreadable", error=str(exc) or repr(exc))
                check = GoalCheck(False)
            if not reported and (check.reached or check.failed):
                reported = True
                state = "reached" if check.reached else "failed"
                plan.report(state=state, reason=check.failed or f"--until {goal} reached")
                progress.note(f"failed: {check.failed}" if check.failed else plan.status["reason"])
                if not plan.detached:
                    plan.status["stopped"] = plan.status["reason"]
                    return 0 if check.reached else 1
            if runner.done():
                runner.result()  # a role failed: its error is the command's error
                return 0
            if stop.is_set():
                plan.status["stopped"] = "asked to stop (SIGTERM or Ctrl-C)"
                return 0
            if deadline is not None and loop.time() >= deadline:
                plan.status["stopped"] = f"timed out after {plan.limit:g}s before {goal or 'stop'}"
                progress.note(plan.status["stopped"])
                return 3
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await asyncio.shield(stop.wait())


def _console_ready(plan: _UpRun, url: str) -> None:
    """Tell the user where the console is (and `up -d`, through up.json)."""
    plan.report(console=url)
    typer.echo(f"console: {url}")
    sys.stdout.flush()


def _connection_env(connection: Connection) -> dict[str, str]:
    """The connection flags given, as the `RANVIER_*` variables a detached `up` reads: they may
    hold credentials, which must never be in a process's argv (`ps` shows it to every user)."""
    given = {
        "RANVIER_NATS_URL": connection.nats_url,
        "RANVIER_USER": connection.user,
        "RANVIER_PASSWORD": connection.password,
        "RANVIER_TOKEN": connection.token,
        "RANVIER_CREDS_FILE": connection.creds,
        "RANVIER_NKEY_SEED": connection.nkey,
        "RANVIER_TLS_CA_FILE": connection.tls_ca,
    }
    return {
        name: str(value.resolve() if isinstance(value, Path) else value)
        for name, value in given.items()
        if value is not None
    }


def _detach(
    argv: list[str],
    state_dir: Path,
    goal: Goal | None,
    timeout: float | None,
    env: dict[str, str] | None = None,
) -> int:
    """Start `ranvier up` in the background and wait until it is up (or its goal reached);
    `env` is added to its environment (settings that must stay out of its argv)."""
    status_path = state_dir / STATUS_FILE
    status_path.unlink(missing_ok=True)
    logfile = state_dir / LOG_FILE
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ranvier", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "RANVIER_LOG_LEVEL": os.environ.get("RANVIER_LOG_LEVEL", "info"),
                **(env or {}),
            },
        )
    _write_json(state_dir / PID_FILE, {"pid": proc.pid})
    wanted = ("reached", "failed") if goal else ("running", "reached", "failed")
    deadline = time.monotonic() + timeout if timeout is not None else None
    while True:
        status = _read_json(status_path) or {}
        reported = status.get("pid") == proc.pid and status.get("state") in wanted
        if reported and (status.get("console") or status.get("state") == "failed"):
            break  # the console's URL is printed below
        if proc.poll() is not None:
            tail = logfile.read_text(encoding="utf-8", errors="replace").splitlines()[-3:]
            raise AppError(
                f"ranvier up exited with code {proc.returncode}: {' | '.join(tail)}",
                hint=f"see {logfile}",
            )
        if deadline is not None and time.monotonic() >= deadline:
            raise AppError(
                f"ranvier up (pid {proc.pid}) did not reach {goal or 'running'} within "
                f"{timeout:g}s; it is still running",
                hint="see `ranvier get axon` and stop it with `ranvier down`",
            )
        time.sleep(0.2)
    typer.echo(
        f"ranvier up running in the background (pid {proc.pid}, logs {logfile}); "
        f"stop it with `ranvier down`"
    )
    if status.get("console"):
        typer.echo(f"console: {status['console']}")
    if status.get("state") == "failed":
        typer.echo(f"goal not reached: {status.get('reason')}", err=True)
        return 1
    if goal:
        typer.echo(str(status.get("reason")))
    return 0


@with_connection
def up(
    file: Annotated[Path, typer.Argument(help="The Axon file to run.")],
    *,
    until: Annotated[
        GoalOption | None,
        typer.Option("--until", help="Exit 0 once reached (succeeded, deployed, idle)."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --until: give up after S seconds.")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background (see `ranvier down`).")
    ] = False,
    backend: Backend = "local",
    replicas: Replicas = None,
    detached_child: Annotated[bool, typer.Option("--detached-child", hidden=True)] = False,
    connection: Connection,
) -> None:
    """Run an Axon with everything in one process: NATS, engine, executor, watchers, router."""
    if backend not in BACKENDS:
        raise unknown_backend(backend)
    axon = load_axon(file)
    settings = connection.settings(replicas=replicas)
    root = settings.state_dir.resolve()
    other = running_pid(root)
    if other is not None and other != os.getpid():
        raise AppError(
            f"ranvier up is already running for {root} (pid {other})",
            hint="stop it with `ranvier down`, or use another --state-dir",
        )
    goal: Goal | None = until.value if until is not None else None
    if not settings.nats_url:  # here, so that an older state dir is reported on this terminal
        server_credentials(root, settings.given_credentials)
    secure_state_dir(root)
    if detach:
        argv = ["up", str(file.resolve()), "--state-dir", str(root), "--backend", backend]
        argv += ["--detached-child"] + (["--until", goal] if goal else [])
        if replicas is not None:
            argv += ["--replicas", str(replicas)]
        raise typer.Exit(_detach(argv, root, goal, timeout, _connection_env(connection)))
    _write_json(root / PID_FILE, {"pid": os.getpid()})
    try:
        plan = _UpRun(
            file=file.resolve(),
            axon=axon,
            settings=settings.model_copy(update={"state_dir": root}),
            backend=backend,
            goal=goal,
            limit=timeout,
            detached=detached_child,
        )
        code = run_command(_up(plan))
    finally:
        found = _read_json(root / PID_FILE)
        if found and found.get("pid") == os.getpid():
            (root / PID_FILE).unlink(missing_ok=True)
    raise typer.Exit(code)


def down(
    *,
    state_dir: StateDir = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait before killing it.")
    ] = DOWN_TIMEOUT,
) -> None:
    """Stop the `ranvier up` running in the background (SIGTERM, then SIGKILL after --timeout)."""
    root = Settings.from_flags(state_dir=state_dir).state_dir.resolve()
    pid = running_pid(root)
    if pid is None:
        (root / PID_FILE).unlink(missing_ok=True)
        raise AppError(f"no ranvier up is running for {root}", hint="start one with `ranvier up`")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = _alive(pid)
    leftovers = group_members(pid)
    if killed or leftovers:
        asyncio.run(stop_tree(pid, 2.0))
    (root / PID_FILE).unlink(missing_ok=True)
    how = "killed after the timeout" if killed else "stopped"
    typer.echo(f"ranvier up (pid {pid}) {how}")


# ---------------------------------------------------------------------------------------------
# run --role


def checked_public_url(url: str) -> str:
    """`--public-url` as given, once it is an absolute http(s) URL (else a clear error)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AppError(
            f"--public-url {url!r} is not an http(s) URL",
            hint="give the URL clients reach the router at, e.g. "
            "http://ranvier-router.ranvier-system.svc",
        )
    return url.rstrip("/")


@with_connection
def run(
    *,
    role: Annotated[
        list[str],
        typer.Option("--role", help="engine, executor, watcher, router, api or all."),
    ],
    backend: Backend = "local",
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Executor: actions run at once.")
    ] = 16,
    replicas: Replicas = None,
    connection: Connection,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            envvar="RANVIER_METRICS_PORT",
            help="Serve the roles' own /metrics, and the /healthz and /readyz probes, on this "
            "port.",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host", envvar="RANVIER_METRICS_HOST", help="Address /metrics listens on."
        ),
    ] = "127.0.0.1",
    host: Annotated[
        str,
        typer.Option(
            "--host", envvar="RANVIER_ROUTER_HOST", help="Router: the address it listens on."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            envvar="RANVIER_ROUTER_PORT",
            min=0,
            max=65535,
            help="Router: the port it listens on (0: a free one).",
        ),
    ] = 0,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            envvar="RANVIER_ROUTER_PUBLIC_URL",
            help="Router: the URL clients reach it at (e.g. its Service's DNS name), recorded "
            "for `ranvier endpoint`; default: the address it listens on.",
        ),
    ] = None,
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            "--prometheus-url",
            envvar="RANVIER_PROMETHEUS_URL",
            help="Watcher: Prometheus for Axons with metrics source prometheus and no url.",
        ),
    ] = None,
    kube_api_url: Annotated[
        str | None,
        typer.Option(
            "--kube-api-url",
            envvar="RANVIER_KUBE_API_URL",
            help="Kubernetes API URL (plain HTTP, e.g. kubectl proxy); default: KUBECONFIG, "
            "else the pod's service account.",
        ),
    ] = None,
    kube_namespace: Annotated[
        str | None,
        typer.Option(
            "--kube-namespace",
            envvar="RANVIER_KUBE_NAMESPACE",
            help="Watcher (kubernetes backend): watch one namespace (default: all).",
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry",
            envvar="RANVIER_REGISTRY",
            help="Executor (kubernetes backend): registry[/prefix] for imageBuild images.",
        ),
    ] = None,
    registry_insecure: Annotated[
        bool,
        typer.Option(
            "--registry-insecure",
            envvar="RANVIER_REGISTRY_INSECURE",
            help="Look images up in the registry over plain HTTP.",
        ),
    ] = False,
    replica_id: Annotated[
        str | None,
        typer.Option(
            "--replica-id",
            envvar="RANVIER_REPLICA_ID",
            help="Engine: this replica's name in the partition leases (default: host, pid "
            "and a random suffix). One process at a time per name; a restart under the same "
            "name takes its partitions back at once.",
        ),
    ] = None,
    lease_ttl: Annotated[
        float,
        typer.Option(
            "--lease-ttl",
            envvar="RANVIER_LEASE_TTL",
            min=1.0,
            help="Engine: seconds a dead replica's partitions stay held before others take them.",
        ),
    ] = DEFAULT_TTL,
    api_host: Annotated[
        str,
        typer.Option(
            "--api-host",
            envvar="RANVIER_API_HOST",
            help="API: address to listen on; off loopback it needs RANVIER_API_TOKEN.",
        ),
    ] = "127.0.0.1",
    api_port: Annotated[
        int,
        typer.Option("--api-port", envvar="RANVIER_API_PORT", min=0, max=65535, help="API: port."),
    ] = 8470,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            envvar="RANVIER_PARTITIONS",
            min=1,
            max=1024,
            help="Partitions of the events stream when it is created (default 16); an "
            "existing stream with another count is an error.",
        ),
    ] = None,
) -> None:
    """Run control-plane roles against a NATS server until SIGTERM or Ctrl-C.

    Any number of processes may run each role: engines share the events stream's partitions
    by lease, executors claim each action once, routers read one table.

    With `--backend kubernetes`, the executor runs tasks as Jobs and deploys as Deployments,
    and the watcher role also watches those objects and reports their lifecycle.
    """
    names: list[str] = []
    for item in role:
        for raw in item.split(","):
            name = raw.strip()
            if name == "all":
                names += [r for r in available_roles() if r not in names]
            elif name not in ROLES:
                raise AppError(f"unknown role {name!r}", hint=f"choose {', '.join(ROLES)} or all")
            elif name not in names:
                names.append(name)
    settings = connection.settings(replicas=replicas)
    if public_url is not None:
        public_url = checked_public_url(public_url)

    async def go() -> None:
        url, _ = settings.resolve_url()
        telemetry = Telemetry() if metrics_port is not None else None
        options = RoleOptions(
            settings.state_dir.resolve(),
            backend=backend,
            nats_url=url,
            task_nats_url=settings.task_url(),
            concurrency=concurrency,
            prometheus_url=prometheus_url,
            telemetry=telemetry,
            kube_api_url=kube_api_url,
            kube_namespace=kube_namespace,
            registry=registry,
            registry_insecure=registry_insecure,
            replica_id=replica_id,
            lease_ttl=lease_ttl,
            api_host=api_host,
            api_port=api_port,
            router_host=host,
            router_port=port,
            router_public_url=public_url,
        )
        connect = settings.connect_options(name=f"ranvier-{'-'.join(names)}")
        limits = settings.stream_limits().model_copy(update={"partitions": partitions})
        async with Bus.connect(connect, limits=limits) as bus:
            roles = build_roles(bus, names, options)
            served = None
            if telemetry is not None and metrics_port is not None:
                heartbeat = Heartbeat()
                add_role_checks(telemetry, bus, roles, heartbeat)
                served = telemetry.serve(metrics_port, metrics_host)
                roles = {**roles, "heartbeat": heartbeat}
            stop = asyncio.Event()
            try:
                with stop_on_signals(stop):
                    log.info("roles.started", roles=names, url=url)
                    await run_roles(roles, stop)
            finally:
                if served is not None:
                    served.close()

    run_command(go())
