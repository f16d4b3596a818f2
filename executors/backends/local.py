"""The local backend: run a task's `command` as a process tree on this machine.

This is what `ranvier up` uses when there is no cluster, so it has to be as careful with
processes as a container runtime would be:

- argv only, never a shell string, so arguments are never re-parsed;
- each run gets its own session and process group, so stopping a run (timeout, `cancel`, a
  deleted Axon, executor shutdown) stops everything it started: SIGTERM to the group, a grace
  period, then SIGKILL, and the run's leader is always reaped;
- each live run is recorded in `<state-dir>/local-runs/<run_id>.json` (pid, process group, the
  kernel's start time of the pid, boot id), so that after an executor restart `recover()` can
  tell runs whose process is gone (to be marked Failed) from leftovers it must stop, without
  ever signalling an unrelated process that reused the pid.

The backend knows nothing about the bus: `run()` returns a `RunOutcome` and calls `on_running`
when the process has started, and the runner turns those into lifecycle events. Which task kinds
it can run is decided up front by `unsupported_reason()`, so an impossible task fails at once
with a message naming the backend that can run it.

Workspace layout, per Axon (`<state-dir>/<namespace>/<axon>/`): `data/` (DATA_PATH, shared by
the Axon's tasks; `data/<Task>/` is DATA_PATH_<Task>), `models/<task>/<version>/` (a trainer
run's MODEL_PATH; versions 1, 2, 3... allocated with an atomic mkdir), `logs/<task>/<run>.log`
(stdout and stderr), `src/<artifact>/<revision>/` (git artifacts, cloned once per revision).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

import structlog

from events.errors import RanvierError
from events.model import ActionRequest, LifecycleData, format_time, new_id, utcnow
from events.subjects import token
from executors.backends.base import lifecycle
from executors.hpo import HPO_PARAM, handover
from executors.registry import read_metrics
from sensors.spec import Artifact, Axon, EnvVar, SparkSpec, Task, format_duration

log = structlog.get_logger(__name__)

OutcomePhase = Literal["Succeeded", "Failed"]
DEFAULT_GRACE: Final = 5.0
GIT_TIMEOUT: Final = 600.0
_POLL: Final = 0.02
_RUNS_DIR: Final = "local-runs"
_CLONE_MARKER: Final = ".ranvier-clone-complete"
_ENV_NAME: Final = re.compile(r"[^A-Za-z0-9_]")
_KUBERNETES: Final = "run it with --backend kubernetes"
CREDENTIAL_VARIABLES: Final = frozenset(
    {"RANVIER_USER", "RANVIER_PASSWORD", "RANVIER_TOKEN", "RANVIER_CREDS_FILE", "RANVIER_NKEY_SEED"}
)
"""ranvier/settings.py's credential settings (the NATS user, password, token, creds, nkey)."""
_SECRET_WORDS: Final = re.compile(r"PASSWORD|TOKEN|SECRET|CREDS|NKEY|SEED|KEY")
_PYTHONS: Final = frozenset({"python", "python3"})


def task_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What tasks inherit of the executor's environment: all of it but ranvier's credentials.

    The credential settings (`CREDENTIAL_VARIABLES`), any other `RANVIER_*` variable whose
    name says it holds a secret (PASSWORD, TOKEN, SECRET, CREDS, NKEY, SEED, KEY) and a
    `RANVIER_NATS_URL` with credentials in it (`nats://TOKEN@host:port`) are dropped; the rest
    (`RANVIER_DEMO_TINY`, `RANVIER_CACHE`, `RANVIER_LOG_LEVEL`, ...) passes through. A task
    gets the bus's URL, with what it needs to connect, from the backend alone.
    """
    return {
        k: v
        for k, v in environ.items()
        if not (
            k in CREDENTIAL_VARIABLES
            or (k.startswith("RANVIER_") and _SECRET_WORDS.search(k.removeprefix("RANVIER_")))
            or (k == "RANVIER_NATS_URL" and "@" in v)
        )
    }


def task_argv(argv: list[str], python: str) -> list[str]:
    """A task's argv, with an argv[0] of exactly `python` or `python3` replaced by `python`."""
    if argv and argv[0] in _PYTHONS:
        return [python, *argv[1:]]
    return argv


class TaskSetupError(RanvierError, RuntimeError):
    """A run could not be started (no such task, bad working directory, git clone failed)."""


@dataclass(frozen=True)
class RunStarted:
    """A run's process is up: what the runner reports as Running."""

    run_id: str
    pid: int
    pgid: int
    started: datetime
    log_path: Path
    version: int | None = None
    model_path: Path | None = None

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The Running lifecycle payload."""
        outputs: dict[str, Any] = {"log": str(self.log_path), "pid": self.pid}
        if self.version is not None:
            outputs.update(version=self.version, model_path=str(self.model_path))
        return lifecycle(request, self.run_id, "Running", outputs=outputs)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: Succeeded or Failed, with a message, exit code and outputs."""

    run_id: str
    phase: OutcomePhase
    message: str = ""
    exit_code: int | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    started: datetime | None = None
    finished: datetime = field(default_factory=utcnow)
    log_path: Path | None = None
    version: int | None = None
    model_path: Path | None = None

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The Succeeded or Failed lifecycle payload."""
        return lifecycle(
            request,
            self.run_id,
            self.phase,
            message=self.message,
            exit_code=self.exit_code,
            outputs=self.outputs,
        )


@dataclass(frozen=True)
class RunRecord:
    """What is written to disk about a live run, so a restarted executor can clean up after it."""

    run_id: str
    namespace: str
    axon: str
    task: str
    kind: str
    pid: int
    pgid: int
    proc_start: int | None
    boot_id: str | None
    started: str
    log_path: str
    action_key: str | None = None
    version: int | None = None
    model_path: str | None = None
    request: dict[str, Any] | None = None
    owner_pid: int | None = None
    owner_start: int | None = None

    def action(self) -> ActionRequest | None:
        """The action request the run was started for (to report its Failed lifecycle)."""
        return None if self.request is None else ActionRequest.model_validate(self.request)


@dataclass(frozen=True)
class LostRun:
    """A run found after a restart: its process is gone or was stopped; report it Failed."""

    record: RunRecord
    message: str
    killed: bool

    def to_lifecycle(self) -> LifecycleData | None:
        """The Failed lifecycle payload, or None if the record predates stored requests."""
        request = self.record.action()
        if request is None or HPO_PARAM in request.params:
            return None  # a study's trial: the study runs it again as a new attempt
        outputs: dict[str, Any] = {"log": self.record.log_path}
        if self.record.version is not None:
            outputs.update(version=self.record.version, model_path=self.record.model_path)
        return lifecycle(
            request, self.record.run_id, "Failed", message=self.message, outputs=outputs
        )


OnRunning = Callable[[RunStarted], Awaitable[None]]


# ---------------------------------------------------------------------------------------------
# What the local backend can run (pure)


SPARK_SUBMIT: Final = "spark-submit"


def spark_submit_argv(axon: Axon, task: Task, spark_submit: str) -> list[str]:
    """The spark-submit command of a spark task in local mode (`--master local[*]`): the same
    application, class, jars, properties and arguments the SparkApplication would get."""
    from executors.backends.k8s_objects import spark_conf

    assert task.spark is not None
    spark = task.spark.spark_spec or SparkSpec()
    jars = list(spark.jars)
    app_file = spark.main_application_file or spark.application_file or (jars.pop() if jars else "")
    argv = [spark_submit, "--master", "local[*]", "--name", f"{axon.metadata.name}-{task.name}"]
    main_class = spark.main_class or spark.class_
    if main_class:
        argv += ["--class", main_class]
    if jars:
        argv += ["--jars", ",".join(jars)]
    for key, value in spark_conf(spark).items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, app_file, *spark.arguments, *spark.args, *task.body.args]


def unsupported_reason(
    axon: Axon, kind: str, task_name: str, *, spark_submit: str | None = None
) -> str | None:
    """Why the local backend cannot run action `kind` on task `task_name`, or None if it can.

    `spark_submit`: the spark-submit found on PATH (spark tasks run with it in local mode).
    """
    if kind == "deployer":
        return f"deployer {task_name!r} is served by the serving executor, not as a local process"
    task = axon.spec.task(task_name)
    if task is None:
        names = ", ".join(t.name for t in axon.spec.tasks)
        return f"no task named {task_name!r} in axon {axon.metadata.name!r} (tasks: {names})"
    if task.kind == "spark":
        spark = task.spark.spark_spec if task.spark is not None else None
        if spark is None or not (
            spark.main_application_file or spark.application_file or spark.jars
        ):
            return f"spark task {task.name!r} names no application (sparkSpec.applicationFile)"
        if spark_submit is None:
            return (
                f"spark task {task.name!r} runs locally with spark-submit, which is not on PATH; "
                f"install Apache Spark (`pip install pyspark` brings spark-submit) or "
                f"{_KUBERNETES}"
            )
        return None
    if task.kind == "tfJob":
        return (
            f"task {task.name!r} is a distributed TFJob, which needs the Kubeflow training "
            f"operator; {_KUBERNETES}"
        )
    if task.kind == "train" and task.train is not None and task.train.tf_job_spec is not None:
        return f"task {task.name!r} is a distributed TFJob training (tfJobSpec); {_KUBERNETES}"
    if task.kind == "deploy":
        return f"task {task.name!r} is a deploy task; run it with a deployer action, not {kind}"
    if not task.body.command:
        what = "an image-only task" if task.body.image or task.body.image_build else "a task"
        return (
            f"task {task.name!r} is {what} without `command`, which the local backend needs; "
            f"add command (and args) or {_KUBERNETES}"
        )
    return None


def env_name(task_name: str) -> str:
    """The DATA_PATH_<Task> variable name for a task (non-identifier characters become `_`)."""
    return f"DATA_PATH_{_ENV_NAME.sub('_', task_name)}"


def _env_pairs(items: object, where: str) -> dict[str, str]:
    """Environment variables from EnvVar models, `{name, value}` dicts, or a plain mapping."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    if not isinstance(items, list):
        raise TaskSetupError(f"{where}: env must be a list of {{name, value}}, got {items!r}")
    out: dict[str, str] = {}
    for item in items:
        try:
            var = item if isinstance(item, EnvVar) else EnvVar.model_validate(item)
        except ValueError as exc:
            raise TaskSetupError(f"{where}: invalid env entry {item!r}: {exc}") from None
        if var.value_from is not None:
            raise TaskSetupError(
                f"{where}: env {var.name} takes its value from a Secret or ConfigMap, which "
                f"only the kubernetes backend resolves",
                hint="give it a value for local runs",
            )
        out[var.name] = var.value or ""
    return out


# ---------------------------------------------------------------------------------------------
# Processes (Linux /proc, with portable fallbacks)


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, pgrp, session, starttime) of `pid` from /proc, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _own_start() -> int | None:
    stat = _proc_stat(os.getpid())
    return stat[3] if stat else None


def _owner_alive(record: RunRecord, boot: str | None) -> bool:
    """True if the executor process that started the run is still running (not this one)."""
    if record.owner_pid is None or record.owner_pid == os.getpid() or record.boot_id != boot:
        return False
    stat = _proc_stat(record.owner_pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[3] == record.owner_start


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group or session `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover  # non-Linux: ask the kernel about the group
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is None:
            continue
        state, pgrp, session, _ = stat
        if pgid in (pgrp, session) and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_tree(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid in group_members(pgid):  # members that moved to another group of the session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def _wait_gone(pgid: int, within: float, proc: asyncio.subprocess.Process | None) -> bool:
    """Wait until the leader is reaped and no member is alive; False if `within` s passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        leader_done = proc is None or proc.returncode is not None
        if leader_done and not group_members(pgid):
            return True
        if loop.time() >= deadline:
            return False
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL):
                    await asyncio.shield(proc.wait())
        else:
            await asyncio.sleep(_POLL)


async def stop_tree(
    pgid: int, grace: float, proc: asyncio.subprocess.Process | None = None
) -> bool:
    """SIGTERM the group, wait `grace`, then SIGKILL; reap the leader. True if any was alive."""
    alive = bool(group_members(pgid)) or (proc is not None and proc.returncode is None)
    if not alive:
        return False
    _signal_tree(pgid, signal.SIGTERM)
    if not await _wait_gone(pgid, grace, proc):
        _signal_tree(pgid, signal.SIGKILL)
        await _wait_gone(pgid, max(grace, 5.0), proc)
    if proc is not None:
        await proc.wait()  # reaped: no zombie left by us
    return True


def _last_line(path: Path, limit: int = 200) -> str:
    """The last non-empty line of a log file (for failure messages), shortened."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _exit_message(code: int, log_path: Path) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        message = f"killed by {name}"
    else:
        message = f"exited with code {code}"
    last = _last_line(log_path)
    return f"{message}: {last}" if last else message


# ---------------------------------------------------------------------------------------------
# The backend


@dataclass
class _Live:
    """A run in progress, as this process knows it."""

    record: RunRecord
    cancel_reason: str | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _Plan:
    """Everything needed to start one run's process."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    timeout: float | None
    log_path: Path
    version: int | None
    model_path: Path | None


class LocalBackend:
    """Runs Axon tasks as local process trees, one session per run."""

    name: Final = "local"

    def __init__(
        self,
        state_dir: Path,
        *,
        nats_url: str | None = None,
        grace: float = DEFAULT_GRACE,
        git: str = "git",
        git_timeout: float = GIT_TIMEOUT,
        base_env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        """`base_env` (default: this process's environment) is what every task inherits.

        `python` is what a command's argv[0] of exactly `python` or `python3` runs: by default
        this interpreter, so tasks see the packages of the executor's virtualenv.
        """
        self.state_dir = Path(state_dir).resolve()
        self.nats_url = nats_url
        self.grace = grace
        self.git = git
        self.git_timeout = git_timeout
        self.python = python
        # Tasks inherit the executor's environment minus its credentials (task_environment);
        # the variables a task needs are set per run.
        self.base_env = task_environment(os.environ if base_env is None else base_env)
        self._live: dict[str, _Live] = {}
        self._clone_locks: dict[Path, asyncio.Lock] = {}
        self._closed = False

    # -- paths --------------------------------------------------------------------------------

    def workspace(self, axon: str, namespace: str = "default") -> Path:
        """`<state-dir>/<namespace>/<axon>/`."""
        return self.state_dir / token(namespace) / token(axon)

    def log_path(self, axon: str, task: str, run_id: str, namespace: str = "default") -> Path:
        """`<workspace>/logs/<task>/<run_id>.log`."""
        return self.workspace(axon, namespace) / "logs" / token(task) / f"{token(run_id)}.log"

    @property
    def runs_dir(self) -> Path:
        """Where live-run records are kept."""
        return self.state_dir / _RUNS_DIR

    def allocate_version(
        self, axon: str, task: str, namespace: str = "default"
    ) -> tuple[int, Path]:
        """A fresh model version directory `models/<task>/<n>/` (mkdir is the atomic claim)."""
        root = self.workspace(axon, namespace) / "models" / token(task)
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
        candidate = max(taken, default=0) + 1
        while True:
            path = root / str(candidate)
            try:
                path.mkdir()
            except FileExistsError:
                candidate += 1
                continue
            return candidate, path

    # -- running ------------------------------------------------------------------------------

    async def run(
        self,
        request: ActionRequest,
        axon: Axon,
        axon_dir: Path,
        *,
        run_id: str | None = None,
        on_running: OnRunning | None = None,
    ) -> RunOutcome:
        """Run one action to its end; `on_running` is awaited once the process has started.

        Never raises for a task's own failure: a missing command, a non-zero exit, a timeout or
        a cancellation all come back as a Failed outcome with a message. If the calling task is
        cancelled, the process tree is stopped before `CancelledError` propagates.
        """
        run_id = run_id or new_id()
        bound = log.bind(run_id=run_id, axon=request.axon, task=request.task, kind=request.kind)
        if self._closed:
            return RunOutcome(run_id, "Failed", "cancelled: executor shut down")
        reason = unsupported_reason(
            axon, request.kind, request.task, spark_submit=shutil.which(SPARK_SUBMIT)
        )
        if reason is not None:
            bound.info("task.unsupported", reason=reason)
            return RunOutcome(run_id, "Failed", reason)
        task = axon.spec.task(request.task)
        assert task is not None  # unsupported_reason checked it
        try:
            plan = await self._plan(request, axon, task, Path(axon_dir), run_id)
        except TaskSetupError as exc:
            bound.info("task.setup_failed", error=str(exc))
            return RunOutcome(run_id, "Failed", str(exc))
        return await self._execute(request, plan, run_id, on_running, bound)

    async def _plan(
        self, request: ActionRequest, axon: Axon, task: Task, axon_dir: Path, run_id: str
    ) -> _Plan:
        namespace, name = axon.metadata.namespace, axon.metadata.name
        ws = self.workspace(name, namespace)
        data = ws / "data"
        source = task_source(axon, task)
        base = await self._base_dir(source, axon_dir, ws)
        body = task.body
        sub = source.subdir
        cwd = (base / sub).resolve() if sub else base
        if not cwd.is_dir():
            raise TaskSetupError(
                f"working directory {cwd} of task {task.name!r} does not exist",
                hint="fix workingDir (relative to the artifact or the Axon file)",
            )
        # User-given variables are checked before anything (a model version) is allocated.
        task_env = _env_pairs(body.env, f"task {task.name!r}")
        action_env = _env_pairs(request.params.get("env"), f"action for {task.name!r}")
        env = dict(self.base_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for other in axon.spec.tasks:
            env[env_name(other.name)] = str(data / other.name)
        version: int | None = None
        model_path = ws / "models"
        if request.kind == "trainer":
            version, model_path = self.allocate_version(name, task.name, namespace)
        env.update(
            DATA_PATH=str(data),
            MODEL_PATH=str(model_path),
            TASK_ID=run_id,
            TASK_NAME=task.name,
            AXON_NAME=name,
            NAMESPACE=namespace,
        )
        if self.nats_url:
            env["RANVIER_NATS_URL"] = self.nats_url
        if task.train is not None and task.train.loss_metric:
            env["LOSS_METRIC"] = task.train.loss_metric
        env.update(task_env)
        env.update(action_env)
        trial = handover(request)  # a study's trial: its configuration, as Myelin hands it over
        extra_argv = trial[0] if trial is not None else []
        if trial is not None:
            env.update(trial[1])
        (data / task.name).mkdir(parents=True, exist_ok=True)
        model_path.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(name, task.name, run_id, namespace)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return _Plan(
            argv=spark_submit_argv(axon, task, shutil.which(SPARK_SUBMIT) or SPARK_SUBMIT)
            if task.kind == "spark"
            else task_argv([*body.command, *body.args, *extra_argv], self.python),
            cwd=cwd,
            env=env,
            timeout=body.timeout,
            log_path=log_path,
            version=version,
            model_path=model_path if version is not None else None,
        )

    async def _base_dir(self, source: TaskSource, axon_dir: Path, ws: Path) -> Path:
        """The directory workingDir is relative to (see `task_source`)."""
        artifact = source.artifact
        # Resolving a local path is a metadata-only syscall: not worth a thread hop.
        if artifact is None:
            return axon_dir.resolve()  # noqa: ASYNC240  # see above
        if artifact.local is not None:
            return (axon_dir / artifact.local.path).resolve()
        return await self._clone(artifact, ws)

    async def _execute(
        self,
        request: ActionRequest,
        plan: _Plan,
        run_id: str,
        on_running: OnRunning | None,
        bound: Any,
    ) -> RunOutcome:
        common: dict[str, Any] = {
            "log_path": plan.log_path,
            "version": plan.version,
            "model_path": plan.model_path,
        }
        try:
            with plan.log_path.open("wb") as logfile:
                proc = await asyncio.create_subprocess_exec(
                    *plan.argv,
                    cwd=plan.cwd,
                    env=plan.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        except FileNotFoundError:
            message = f"command not found: {plan.argv[0]}"
            bound.info("task.failed", reason=message)
            return RunOutcome(run_id, "Failed", message, exit_code=127, **common)
        except PermissionError:
            message = f"command not executable: {plan.argv[0]}"
            bound.info("task.failed", reason=message)
            return RunOutcome(run_id, "Failed", message, exit_code=126, **common)
        started = utcnow()
        pgid = proc.pid  # start_new_session: the leader's pid is the group and session id
        stat = _proc_stat(proc.pid)
        record = RunRecord(
            run_id=run_id,
            namespace=request.namespace,
            axon=request.axon,
            task=request.task,
            kind=request.kind,
            pid=proc.pid,
            pgid=pgid,
            proc_start=stat[3] if stat else None,
            boot_id=_boot_id(),
            started=format_time(started),
            log_path=str(plan.log_path),
            action_key=request.idempotency_key,
            version=plan.version,
            model_path=str(plan.model_path) if plan.model_path else None,
            request=request.model_dump(mode="json"),
            owner_pid=os.getpid(),
            owner_start=_own_start(),
        )
        live = _Live(record)
        self._live[run_id] = live
        self._write_record(record)
        bound.info("task.started", pid=proc.pid, argv=plan.argv, cwd=str(plan.cwd))
        try:
            if on_running is not None:
                await on_running(
                    RunStarted(
                        run_id,
                        proc.pid,
                        pgid,
                        started,
                        plan.log_path,
                        plan.version,
                        plan.model_path,
                    )
                )
            ending = await self._wait(proc, live, plan.timeout)
            leftovers = await stop_tree(pgid, self.grace, proc)
        except BaseException:
            # Our caller was cancelled (or on_running failed): never leave the tree running.
            await asyncio.shield(stop_tree(pgid, self.grace, proc))
            raise
        finally:
            self._live.pop(run_id, None)
            self._remove_record(run_id)
            live.done.set()
        code = proc.returncode
        outputs: dict[str, Any] = {"log": str(plan.log_path)}
        if plan.version is not None and plan.model_path is not None:
            reading = read_metrics(plan.model_path)
            outputs.update(version=plan.version, model_path=str(plan.model_path))
            outputs["metrics"] = reading.metrics
            if reading.error:
                outputs["metrics_error"] = reading.error
        if ending is not None:
            phase: OutcomePhase = "Failed"
            message = ending
        elif code == 0:
            phase, message = "Succeeded", ""
        else:
            phase, message = (
                "Failed",
                _exit_message(code if code is not None else -1, plan.log_path),
            )
        bound.info(
            "task.finished",
            phase=phase,
            exit_code=code,
            reason=message,
            leftovers_stopped=leftovers,
        )
        return RunOutcome(
            run_id, phase, message, exit_code=code, outputs=outputs, started=started, **common
        )

    async def _wait(
        self, proc: asyncio.subprocess.Process, live: _Live, limit: float | None
    ) -> str | None:
        """Wait for exit, a cancel, or the time limit; the reason it was stopped, or None."""
        exited = asyncio.ensure_future(proc.wait())
        cancelled = asyncio.ensure_future(live.cancelled.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, cancelled}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            cancelled.cancel()
            if not exited.done():
                exited.cancel()
        if exited in done:
            return None
        if cancelled in done:
            return live.cancel_reason or "cancelled"
        assert limit is not None  # asyncio.wait only times out when given a timeout
        return f"timed out after {format_duration(limit)}"

    # -- stopping -----------------------------------------------------------------------------

    async def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Stop a live run (its whole process tree); returns once it ended. False if unknown."""
        live = self._live.get(run_id)
        if live is None:
            return False
        if live.cancel_reason is None:
            live.cancel_reason = reason
        live.cancelled.set()
        await live.done.wait()
        return True

    async def cancel_axon(
        self, axon: str, namespace: str = "default", reason: str = "cancelled: axon deleted"
    ) -> list[str]:
        """Stop every live run of an Axon (it was deleted); the run ids stopped."""
        ids = [
            rid
            for rid, live in self._live.items()
            if live.record.axon == axon and live.record.namespace == namespace
        ]
        await asyncio.gather(*(self.cancel(rid, reason) for rid in ids))
        return ids

    async def shutdown(self, reason: str = "cancelled: executor shut down") -> None:
        """Stop every live run and refuse new ones."""
        self._closed = True
        await asyncio.gather(*(self.cancel(rid, reason) for rid in list(self._live)))

    def live_runs(self) -> list[RunRecord]:
        """Runs in progress in this process."""
        return [live.record for live in self._live.values()]

    # -- restart recovery ---------------------------------------------------------------------

    async def recover(self) -> list[LostRun]:
        """Runs recorded by a previous executor: stop leftovers, report each to be marked Failed.

        Call it at start-up, before running anything. Runs of another executor that shares the
        state dir and is still alive are left alone. A record whose pid now belongs to another
        process (pid reuse, or a reboot) is treated as gone and nothing is signalled.
        """
        lost: list[LostRun] = []
        if not self.runs_dir.is_dir():
            return lost
        boot = _boot_id()
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                record = RunRecord(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("task.record_unreadable", path=str(path), error=str(exc))
                path.unlink(missing_ok=True)
                continue
            if record.run_id in self._live or _owner_alive(record, boot):
                continue  # another executor sharing this state dir is still watching it
            stat = _proc_stat(record.pid)
            ours = (
                stat is not None
                and stat[0] not in ("Z", "X")
                and record.boot_id == boot
                and record.proc_start == stat[3]
            )
            if ours or (record.boot_id == boot and group_members(record.pgid) and stat is None):
                await stop_tree(record.pgid, self.grace)
                message = (
                    "executor restarted while the run was in progress; its processes were stopped"
                )
                killed = True
            else:
                message = "process gone after an executor restart (its exit status is unknown)"
                killed = False
            log.info("task.recovered", run_id=record.run_id, pid=record.pid, killed=killed)
            lost.append(LostRun(record, message, killed))
            path.unlink(missing_ok=True)
        return lost

    def _write_record(self, record: RunRecord) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        target = self.runs_dir / f"{token(record.run_id)}.json"
        fd, tmp = tempfile.mkstemp(prefix=".run.", dir=self.runs_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(record), out)
        os.replace(tmp, target)

    def _remove_record(self, run_id: str) -> None:
        (self.runs_dir / f"{token(run_id)}.json").unlink(missing_ok=True)

    # -- git artifacts ------------------------------------------------------------------------

    async def _clone(self, artifact: Artifact, ws: Path) -> Path:
        """The artifact's checkout at its revision, cloned into the workspace once per revision."""
        git = artifact.git
        assert git is not None
        dest = checkout_dir(ws, artifact)
        lock = self._clone_locks.setdefault(dest, asyncio.Lock())
        async with lock:
            if (dest / _CLONE_MARKER).exists():
                return dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{dest.name}.{new_id()}.tmp"
            try:
                await self._git("clone", "--quiet", "--no-checkout", git.repo, str(tmp))
                try:
                    await self._git("-C", str(tmp), "checkout", "--quiet", "--detach", git.revision)
                except TaskSetupError:
                    # A branch other than the default exists only as a remote-tracking ref.
                    await self._git(
                        "-C", str(tmp), "checkout", "--quiet", "--detach", f"origin/{git.revision}"
                    )
                (tmp / _CLONE_MARKER).touch()
                try:
                    tmp.rename(dest)
                except OSError:
                    if not (dest / _CLONE_MARKER).exists():
                        raise
            finally:
                if tmp.exists():
                    await asyncio.to_thread(_rmtree, tmp)
            log.info(
                "artifact.cloned", artifact=artifact.name, revision=git.revision, path=str(dest)
            )
            return dest

    async def _git(self, *args: str) -> None:
        env = {**self.base_env, "GIT_TERMINAL_PROMPT": "0"}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.git,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise TaskSetupError(
                f"command not found: {self.git}", hint="install git to use git artifacts"
            ) from None
        try:
            async with asyncio.timeout(self.git_timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            await stop_tree(proc.pid, self.grace, proc)
            raise TaskSetupError(
                f"git {args[0]} timed out after {format_duration(self.git_timeout)}"
            ) from None
        except BaseException:
            await asyncio.shield(stop_tree(proc.pid, self.grace, proc))
            raise
        if proc.returncode != 0:
            lines = [ln for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()]
            detail = lines[-1] if lines else f"exit code {proc.returncode}"
            shown = " ".join(a for a in args if not a.startswith("--"))
            raise TaskSetupError(f"git {shown} failed: {detail}")


@dataclass(frozen=True, slots=True)
class TaskSource:
    """Where a task runs from on this machine: an artifact (None: the Axon file's directory)."""

    artifact: Artifact | None
    subdir: str | None
    """workingDir, else the imageBuild's buildLocation when `artifact` is the one it names."""


def task_source(axon: Axon, task: Task) -> TaskSource:
    """The one rule, shared by the local backend and the local deployer, for a task's sources.

    Local runs prefer local sources, so an Axon can keep the git artifact its Kubernetes image
    builds use and still run from a checkout on this machine:

    1. the artifact the task's imageBuild names, when it is `local`;
    2. else the Axon's `local` artifact, when it has exactly one;
    3. else the git artifact the imageBuild names (or, without an imageBuild, the Axon's only
       git artifact), cloned into the workspace;
    4. else the Axon file's directory.

    An imageBuild naming a missing artifact, or an S3 one with no local artifact to use instead,
    is a TaskSetupError. `workingDir` is relative to the chosen source; without it, the
    imageBuild's `buildLocation` is used (relative to the artifact's mount `path`) only when
    the chosen artifact is the one the imageBuild names.
    """
    body = task.body
    build = body.image_build
    named: Artifact | None = None
    if build is not None:
        named = axon.spec.artifact(build.artifact)
        if named is None:
            raise TaskSetupError(
                f"task {task.name!r} builds from artifact {build.artifact!r}, which is not "
                f"in spec.artifacts"
            )
    locals_ = [a for a in axon.spec.artifacts if a.local is not None]
    gits = [a for a in axon.spec.artifacts if a.git is not None]
    chosen: Artifact | None
    if named is not None and named.local is not None:
        chosen = named
    elif len(locals_) == 1:
        chosen = locals_[0]
    elif named is not None:
        if named.git is None:
            raise TaskSetupError(
                f"artifact {named.name!r} of task {task.name!r} is in S3, which the local "
                f"backend does not fetch",
                hint=f"add a local artifact, use a git one, or {_KUBERNETES}",
            )
        chosen = named
    elif len(gits) == 1:
        chosen = gits[0]
    else:
        chosen = None
    subdir = body.working_dir
    if subdir is None and build is not None and chosen is named and named is not None:
        subdir = _inside(build.build_location, named.path)
    return TaskSource(chosen, subdir or None)


def _inside(location: str, mount: str | None) -> str:
    """A buildLocation (a path in the build's filesystem) relative to its artifact's mount."""
    loc = PurePosixPath(location)
    if mount and loc.is_relative_to(mount):
        loc = loc.relative_to(mount)
    text = str(loc).lstrip("/")
    return "" if text == "." else text


def checkout_dir(workspace: Path, artifact: Artifact) -> Path:
    """`<workspace>/src/<artifact>/<revision>/`: where a git artifact is cloned."""
    assert artifact.git is not None
    return workspace / "src" / token(artifact.name) / token(artifact.git.revision)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "CREDENTIAL_VARIABLES",
    "LocalBackend",
    "LostRun",
    "RunOutcome",
    "RunRecord",
    "RunStarted",
    "TaskSetupError",
    "TaskSource",
    "checkout_dir",
    "env_name",
    "group_members",
    "lifecycle",
    "spark_submit_argv",
    "stop_tree",
    "task_argv",
    "task_environment",
    "task_source",
    "unsupported_reason",
]
