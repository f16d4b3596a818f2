"""The control-plane commands: run roles, `up`/`down` a whole pipeline, and look at Axons.

`ranvier up` is the quickstart's one command: embedded NATS in the state dir, every role in one
process, the Axon submitted, progress on screen, and (with `--until`) an exit code scripts can
trust. `-d` runs the same command in the background, in its own session, with its output in
`<state-dir>/up.log`, and returns when it is up (or its goal reached); `ranvier down` stops it
through its pid file. Its embedded nats-server is supervised (`events.server.Supervisor`):
after a crash it is started again on its port and store and the roles reconnect; when it keeps
crashing, `up` stops with that reason, recorded as `stopped` in `up.json`.

The other commands are thin readers of the KV records the roles write (`get`, `list`, `watch`,
`logs`) or one call into the Axon store (`submit`, `delete`, `trigger`), and take the same
connection flags as every command that connects.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Final

import structlog
import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from events.aio import checkpoint
from events.bus import OUTAGE_ERRORS, Bus
from events.errors import RanvierError
from events.server import EmbeddedServer, Supervisor
from events.telemetry import Telemetry
from executors.backends.local import group_members, stop_tree
from executors.runner import TaskRun
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
    task_runs,
    trigger_rest,
    unknown_backend,
)
from ranvier.commands.common import (
    AllNamespaces,
    Connection,
    Replicas,
    StateDir,
    axon_namespace,
    connect_or_start,
    on_own_server,
    run_command,
    with_connection,
)
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

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="The Axon's namespace.")]
Backend = Annotated[
    str,
    typer.Option(
        "--backend", envvar="RANVIER_BACKEND", help="Where tasks run: local or kubernetes."
    ),
]

list_app = typer.Typer(name="list", help="List submitted resources.", no_args_is_help=True)
get_app = typer.Typer(name="get", help="Show one resource.", no_args_is_help=True)
watch_app = typer.Typer(name="watch", help="Follow a resource live.", no_args_is_help=True)
delete_app = typer.Typer(name="delete", help="Delete a resource.", no_args_is_help=True)


class GoalOption(enum.StrEnum):
    """`--until` goals."""

    succeeded = "succeeded"
    deployed = "deployed"
    idle = "idle"


class GetFormat(enum.StrEnum):
    """Output formats of `get axon`."""

    text = "text"
    json = "json"
    yaml = "yaml"
    wide = "wide"


# ---------------------------------------------------------------------------------------------
# Small pure helpers


def _short(run_id: object) -> str:
    text = str(run_id or "-")
    return text[-8:] if len(text) > 12 else text


def study_progress(study: dict[str, Any]) -> str:
    """`3/8 trials (1 failed), best val_mse=0.0165 (trial 5, v6)`: a study's progress."""
    trials = study.get("trials") or []
    failed = sum(t.get("phase") == "Failed" for t in trials)
    text = f"{study.get('done', 0)}/{study.get('planned', '?')} trials"
    if failed:
        text += f" ({failed} failed)"
    best = study.get("best")
    if best:
        text += (
            f", best {study.get('loss_metric')}={best.get('loss'):g} "
            f"(trial {best.get('number')}, v{best.get('version')})"
        )
    return text


def progress_lines(status: dict[str, Any]) -> dict[str, str]:
    """One line per sensor run and task run, keyed so that a change of state is a new line."""
    lines: dict[str, str] = {}
    for sensor in status["sensors"]:
        for run in sensor["runs"]:
            steps = " ".join(
                f"{s.get('index')}:{s.get('task')}={s.get('phase')}" for s in run["steps"]
            )
            lines[f"s/{run['id']}"] = (
                f"sensor {sensor['name']} run {_short(run['id'])} {run['phase']}"
                + (f" [{steps}]" if steps else "")
                + (f": {run['reason']}" if run.get("reason") and run["phase"] == "Failed" else "")
            )
    for task in status["tasks"]:
        for run in task["runs"]:
            extra = f" version {run['version']}" if run.get("version") is not None else ""
            message = f": {run['message']}" if run.get("message") else ""
            lines[f"t/{run['id']}"] = (
                f"task {task['name']} run {_short(run['id'])} {run['phase']}{extra}{message}"
            )
    for study in status.get("studies", []):
        lines[f"h/{study.get('run_id')}"] = (
            f"study {study.get('task')} {study.get('optimiser')} {study.get('phase')}: "
            + study_progress(study)
        )
    return lines


def status_table(status: dict[str, Any], *, wide: bool = False) -> Table:
    """A rich table of an Axon's sensor runs, task runs and model versions."""
    table = Table(title=f"axon {status['namespace']}/{status['name']} g{status['generation']}")
    for column in ("WHAT", "NAME", "RUN", "PHASE", "DETAIL"):
        table.add_column(column)
    for sensor in status["sensors"]:
        if not sensor["runs"]:
            table.add_row("sensor", sensor["name"], "-", "-", "no runs yet")
        for run in sensor["runs"]:
            steps = ", ".join(f"{s.get('task')} {s.get('phase')}" for s in run["steps"])
            detail = steps if run["phase"] != "Failed" else str(run.get("reason") or "")
            table.add_row("sensor", sensor["name"], _short(run["id"]), run["phase"], detail)
    for task in status["tasks"]:
        for run in task["runs"]:
            parts = []
            if run.get("version") is not None:
                parts.append(f"version {run['version']}")
            if run.get("message"):
                parts.append(str(run["message"]))
            if wide and run.get("log_path"):
                parts.append(str(run["log_path"]))
            run_id = str(run["id"]) if wide else _short(run["id"])
            table.add_row("task", task["name"], run_id, run["phase"], "; ".join(parts))
    for model in status["models"]:
        for version in model["versions"]:
            metrics = ", ".join(f"{k}={v:g}" for k, v in sorted(version["metrics"].items()))
            table.add_row(
                "model", model["task"], _short(version["run_id"]), f"v{version['version']}", metrics
            )
    for study in status.get("studies", []):
        table.add_row(
            "study",
            str(study.get("task")),
            _short(study.get("run_id")),
            str(study.get("phase")),
            f"{study.get('optimiser')}: {study_progress(study)}",
        )
        if not wide:
            continue
        for trial in study.get("trials") or []:
            params = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted((trial.get("params") or {}).items())
            )
            loss = trial.get("loss")
            budget = trial.get("budget")
            shown = [f"budget {budget:g}" if isinstance(budget, int | float) else "", params]
            shown.append(f"{study.get('loss_metric')}={loss:g}" if loss is not None else "")
            shown.append(str(trial.get("message") or ""))
            table.add_row(
                "trial",
                f"{study.get('task')} #{trial.get('number')}",
                _short(trial.get("run_id")),
                str(trial.get("phase")),
                "; ".join(p for p in shown if p),
            )
    for deployment in status["deployments"]:
        table.add_row("deploy", str(deployment["deployer"]), "-", "-", str(deployment.get("url")))
    return table


class Progress:
    """Shows an Axon's progress: a live rich table on a terminal, plain lines otherwise."""

    def __init__(self, *, tty: bool | None = None) -> None:
        self.console = Console()
        self.tty = self.console.is_terminal if tty is None else tty
        self._seen: dict[str, str] = {}
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.tty:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, status: dict[str, Any]) -> None:
        """Show the new state (only what changed, in plain mode)."""
        if self._live is not None:
            self._live.update(status_table(status), refresh=True)
            return
        for key, line in progress_lines(status).items():
            if self._seen.get(key) != line:
                self._seen[key] = line
                typer.echo(line)
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """A one-off message (goal reached, timed out...)."""
        if self._live is not None:
            self._live.console.print(text)
        else:
            typer.echo(text)


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


# ---------------------------------------------------------------------------------------------
# submit, list, get, watch, delete, trigger, logs


async def _read_only(settings: Settings, body: Callable[[Bus], Awaitable[None]]) -> None:
    """Connect for reading; with no server recorded, open the state dir's store."""
    _, origin = settings.resolve_url()
    if origin != "default" or not settings.store_dir.is_dir():
        await connect_or_start(settings, body, read_only=True)
        return
    await on_own_server(settings, body)


def _with_namespace(axon: Axon, namespace: str | None) -> Axon:
    if namespace is None or namespace == axon.metadata.namespace:
        return axon
    metadata = axon.metadata.model_copy(update={"namespace": namespace})
    return axon.model_copy(update={"metadata": metadata})


async def _stored(bus: Bus, namespace: str, name: str) -> StoredAxon:
    stored = await AxonStore(bus).get(namespace, name)
    if stored is None:
        raise AppError(f"no Axon {namespace}/{name} was submitted", hint="see `ranvier list axon`")
    return stored


async def _watch(bus: Bus, stored: StoredAxon) -> None:
    with Progress() as progress:
        while True:
            progress.update(await axon_status(bus, stored))
            await asyncio.sleep(POLL)


@with_connection
def submit(
    file: Annotated[Path, typer.Argument(help="The Axon file to submit.")],
    *,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Override metadata.namespace.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Then follow its progress.")] = False,
    connection: Connection,
) -> None:
    """Submit an Axon to a running control plane (a new generation if it changed)."""
    axon = _with_namespace(load_axon(file), namespace)
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            stored = await AxonStore(bus).submit(axon, file)
            typer.echo(
                f"axon {stored.namespace}/{stored.name} submitted (generation {stored.generation})"
            )
            if watch:
                await _watch(bus, stored)

    run_command(go())


@list_app.command("axon")
@with_connection
def list_axon(
    *,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace's Axons.")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Every namespace's (the default).")
    ] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
    connection: Connection,
) -> None:
    """List submitted Axons (of every namespace unless -n names one)."""
    if output not in ("text", "json"):
        raise AppError(f"-o {output}: choose text or json")
    if namespace is not None and all_namespaces:
        raise AppError("-n and -A contradict each other", hint="give one of them")
    settings = connection.settings()

    async def body(bus: Bus) -> None:
        rows = [
            {
                "name": s.name,
                "namespace": s.namespace,
                "generation": s.generation,
                "submitted": s.submitted.isoformat(),
                "source": str(s.source) if s.source else None,
            }
            for s in await AxonStore(bus).list()
            if namespace is None or s.namespace == namespace
        ]
        if output == "json":
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table("NAMESPACE", "NAME", "GENERATION", "SUBMITTED")
        for row in rows:
            table.add_row(
                str(row["namespace"]),
                str(row["name"]),
                str(row["generation"]),
                str(row["submitted"]),
            )
        Console().print(table)

    run_command(_read_only(settings, body))


@get_app.command("axon")
@with_connection
def get_axon(
    name: Annotated[str, typer.Argument(help="The Axon's name.")],
    *,
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    output: Annotated[
        GetFormat, typer.Option("--output", "-o", help="text, json, yaml or wide.")
    ] = GetFormat.text,
    connection: Connection,
) -> None:
    """Show an Axon's sensor runs, steps, task runs, model versions and deployments."""
    settings = connection.settings()

    async def body(bus: Bus) -> None:
        ns = await axon_namespace(bus, name, namespace, all_namespaces)
        doc = await axon_status(bus, await _stored(bus, ns, name))
        if output is GetFormat.json:
            typer.echo(json.dumps(doc, indent=2))
        elif output is GetFormat.yaml:
            typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
        else:
            Console().print(status_table(doc, wide=output is GetFormat.wide))

    run_command(_read_only(settings, body))


@watch_app.command("axon")
@with_connection
def watch_axon(
    name: Annotated[str, typer.Argument(help="The Axon's name.")],
    *,
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    connection: Connection,
) -> None:
    """Follow an Axon's progress live until Ctrl-C."""
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            ns = await axon_namespace(bus, name, namespace, all_namespaces)
            await _watch(bus, await _stored(bus, ns, name))

    run_command(go())


@delete_app.command("axon")
@with_connection
def delete_axon(
    name: Annotated[str, typer.Argument(help="The Axon's name.")],
    *,
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    connection: Connection,
) -> None:
    """Delete an Axon: its sensors stop and its running tasks are stopped."""
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            ns = await axon_namespace(bus, name, namespace, all_namespaces)
            stored = await AxonStore(bus).delete(ns, name)
        typer.echo(f"axon {stored.namespace}/{stored.name} deleted")

    run_command(go())


@with_connection
def trigger(
    axon: Annotated[str, typer.Argument(help="The Axon's name.")],
    sensor: Annotated[str, typer.Argument(help="The sensor to fire (it needs a Rest trigger).")],
    *,
    data: Annotated[str, typer.Option("--data", help="JSON object passed as the payload.")] = "{}",
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    connection: Connection,
) -> None:
    """Fire a sensor's Rest trigger."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise AppError(f"--data is not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(payload, dict):
        raise AppError("--data must be a JSON object")
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            ns = await axon_namespace(bus, axon, namespace, all_namespaces)
            event_id = await trigger_rest(bus, ns, axon, sensor, payload)
        typer.echo(f"triggered {axon}/{sensor} (event {event_id})")

    run_command(go())


def _pick_run(runs: list[TaskRun], run_id: str | None, axon: str, task: str) -> TaskRun:
    if not runs:
        raise AppError(f"task {task!r} of Axon {axon} has no runs yet")
    if run_id is None:
        return runs[-1]
    found = [r for r in runs if r.id == run_id or r.id.endswith(run_id)]
    if len(found) != 1:
        ids = ", ".join(r.id for r in runs[-5:])
        raise AppError(f"no single run of {task} matches {run_id!r}", hint=f"recent runs: {ids}")
    return found[0]


def _copy(source: IO[bytes], sink: IO[bytes]) -> int:
    chunk = source.read()
    sink.write(chunk)
    sink.flush()
    return len(chunk)


@with_connection
def logs(
    axon: Annotated[str, typer.Argument(help="The Axon's name.")],
    task: Annotated[str, typer.Argument(help="The task.")],
    *,
    run_id: Annotated[
        str | None, typer.Option("--run", help="Run id (or its end); default the latest.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")] = False,
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    kube_api_url: Annotated[
        str | None,
        typer.Option(
            "--kube-api-url",
            envvar="RANVIER_KUBE_API_URL",
            help="Runs on Kubernetes: the API server (plain HTTP, e.g. kubectl proxy); "
            "default: KUBECONFIG, else the pod's service account.",
        ),
    ] = None,
    connection: Connection,
) -> None:
    """Print a task run's log (stdout and stderr of its process, or its pods' on Kubernetes)."""
    settings = connection.settings()

    async def body(bus: Bus) -> None:
        ns = await axon_namespace(bus, axon, namespace, all_namespaces)
        run = _pick_run(await task_runs(bus, ns, axon, task), run_id, axon, task)
        if not run.log_path and await _cluster_log(run, follow, kube_api_url):
            return
        if not run.log_path:
            raise AppError(f"run {run.id} of {task} has no log ({run.phase}: {run.message})")
        path = Path(run.log_path)
        sink = sys.stdout.buffer
        try:
            source = path.open("rb")  # noqa: ASYNC230  # a local file, read in small pieces
        except OSError as exc:
            raise AppError(f"cannot read {path}: {exc.strerror}") from None
        with source:
            _copy(source, sink)
            while follow and run.phase not in ("Succeeded", "Failed"):
                await asyncio.sleep(POLL)
                _copy(source, sink)
                got = await bus.kv_get("ranvier_runs", run.key)
                run = TaskRun.from_json(got[0]) if got is not None else run
            _copy(source, sink)

    run_command(_read_only(settings, body))


def open_console(
    *,
    state_dir: StateDir = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the console's URL; open no browser.")
    ] = False,
) -> None:
    """Open the console of the `ranvier up` running in the state dir in a browser."""
    from ranvier.api.role import URL_FILE

    root = Settings.from_flags(state_dir=state_dir).state_dir
    try:
        url = (root / URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        raise AppError(
            f"no console is running for {root.resolve()}",
            hint="start one with `ranvier up AXON.yaml -d` or `ranvier run --role api`",
        ) from None
    typer.echo(url)
    if not print_only:
        import webbrowser

        webbrowser.open(url)


async def _cluster_log(run: TaskRun, follow: bool, kube_api_url: str | None) -> bool:
    """Print the pod logs of a run on Kubernetes; False when the run ran elsewhere."""
    from executors.backends.kubernetes import (  # slow: only for runs on a cluster
        api_client_for,
        run_log_chunks,
        run_object,
    )

    found = run_object(run.outputs)
    if found is None:
        return False
    kind, name = found
    api = api_client_for(api_url=kube_api_url)
    shown: str | None = None
    async for pod, chunk in run_log_chunks(api, run.namespace, kind, name, follow=follow):
        if pod != shown:
            typer.echo(f"==> pod {pod} <==", err=True)
            shown = pod
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    return True


def register(app: typer.Typer) -> None:
    """Add the control-plane commands to the root CLI."""
    app.command("open")(open_console)
    app.command("run")(run)
    app.command("up")(up)
    app.command("down")(down)
    app.command("submit")(submit)
    app.command("trigger")(trigger)
    app.command("logs")(logs)
    app.add_typer(list_app, name="list")
    app.add_typer(get_app, name="get")
    app.add_typer(watch_app, name="watch")
    app.add_typer(delete_app, name="delete")


__all__ = ["register"]
