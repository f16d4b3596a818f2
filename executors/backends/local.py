"""The local backend: run a task's `command` as a process tree on this machine.

This is what `ranvier up` uses when there is no cluster, so it has to be as careful with
processes as a container runtime would be:

- argv only, never a shell string, so arguments are never re-parsed;
- each run gets its own session and process group (`executors.backends.processes`), so
  stopping a run (timeout, `cancel`, a deleted Axon, executor shutdown) stops everything it
  started: SIGTERM to the group, a grace period, then SIGKILL, and the run's leader is always
  reaped;
- each live run is recorded in `<state-dir>/local-runs/<run_id>.json` (pid, process group, the
  kernel's start time of the pid, boot id), so that after an executor restart `recover()` can
  tell runs whose process is gone (to be marked Failed) from leftovers it must stop, without
  ever signalling an unrelated process that reused the pid.

The backend knows nothing about the bus: `run()` returns a `RunOutcome` and calls `on_running`
when the process has started, and the runner turns those into lifecycle events. Which task kinds
it can run, and with what argv, environment and sources, is `executors.backends.local_setup`;
git artifacts are cloned by `executors.backends.git`.

Workspace layout, per Axon (`<state-dir>/<namespace>/<axon>/`): `data/` (DATA_PATH, shared by
the Axon's tasks; `data/<Task>/` is DATA_PATH_<Task>), `models/<task>/<version>/` (a trainer
run's MODEL_PATH; versions 1, 2, 3... allocated with an atomic mkdir), `logs/<task>/<run>.log`
(stdout and stderr), `src/<artifact>/<revision>/` (git artifacts, cloned once per revision).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import structlog

from events.model import ActionRequest, LifecycleData, format_time, new_id, utcnow
from events.subjects import token
from executors.backends.base import OutcomePhase, RunOutcome, lifecycle
from executors.backends.git import GIT_TIMEOUT, GitCheckouts
from executors.backends.local_setup import (
    CREDENTIAL_VARIABLES,
    SPARK_SUBMIT,
    TaskSetupError,
    TaskSource,
    checkout_dir,
    env_name,
    env_pairs,
    local_base,
    spark_submit_argv,
    task_argv,
    task_environment,
    task_source,
    unsupported_reason,
    working_dir_in,
)
from executors.backends.processes import (
    RecordFiles,
    SessionRecord,
    boot_id,
    exit_message,
    group_members,
    proc_stat,
    session_ids,
    start_session,
    stop_tree,
)
from executors.hpo import HPO_PARAM, handover
from executors.registry import read_metrics
from sensors.spec import Axon, Task, format_duration

log = structlog.get_logger(__name__)

DEFAULT_GRACE: Final = 5.0
_RUNS_DIR: Final = "local-runs"


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
class RunRecord(SessionRecord):
    """What is written to disk about a live run, so a restarted executor can clean up after it."""

    run_id: str
    namespace: str
    axon: str
    task: str
    kind: str
    started: str
    log_path: str
    action_key: str | None = None
    version: int | None = None
    model_path: str | None = None
    request: dict[str, Any] | None = None

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
        self.python = python
        # Tasks inherit the executor's environment minus its credentials (task_environment);
        # the variables a task needs are set per run.
        self.base_env = task_environment(os.environ if base_env is None else base_env)
        self._live: dict[str, _Live] = {}
        self._records = RecordFiles(self.runs_dir, RunRecord, "task.record_unreadable")
        self.checkouts = GitCheckouts(git, timeout=git_timeout, grace=grace, env=self.base_env)
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
        """Everything to start the run: argv, working directory, environment, model version."""
        namespace, name = axon.metadata.namespace, axon.metadata.name
        ws = self.workspace(name, namespace)
        cwd = await self._working_dir(axon, task, axon_dir, ws)
        # User-given variables are checked before anything (a model version) is allocated.
        user_env = {
            **env_pairs(task.body.env, f"task {task.name!r}"),
            **env_pairs(request.params.get("env"), f"action for {task.name!r}"),
        }
        version: int | None = None
        model_path = ws / "models"
        if request.kind == "trainer":
            version, model_path = self.allocate_version(name, task.name, namespace)
        trial = handover(request)  # a study's trial: its configuration, as Myelin hands it over
        env = self._task_env(axon, task, data=ws / "data", model_path=model_path, run_id=run_id)
        env.update(user_env)
        if trial is not None:
            env.update(trial[1])
        (ws / "data" / task.name).mkdir(parents=True, exist_ok=True)
        model_path.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(name, task.name, run_id, namespace)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return _Plan(
            argv=self._argv(axon, task, trial[0] if trial is not None else []),
            cwd=cwd,
            env=env,
            timeout=task.body.timeout,
            log_path=log_path,
            version=version,
            model_path=model_path if version is not None else None,
        )

    def _argv(self, axon: Axon, task: Task, extra: list[str]) -> list[str]:
        """The run's argv: spark-submit for a spark task, else command, args and `extra`."""
        if task.kind == "spark":
            return spark_submit_argv(axon, task, shutil.which(SPARK_SUBMIT) or SPARK_SUBMIT)
        return task_argv([*task.body.command, *task.body.args, *extra], self.python)

    def _task_env(
        self, axon: Axon, task: Task, *, data: Path, model_path: Path, run_id: str
    ) -> dict[str, str]:
        """What every run gets: the base environment, data and model paths, its identity."""
        env = dict(self.base_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for other in axon.spec.tasks:
            env[env_name(other.name)] = str(data / other.name)
        env.update(
            DATA_PATH=str(data),
            MODEL_PATH=str(model_path),
            TASK_ID=run_id,
            TASK_NAME=task.name,
            AXON_NAME=axon.metadata.name,
            NAMESPACE=axon.metadata.namespace,
        )
        if self.nats_url:
            env["RANVIER_NATS_URL"] = self.nats_url
        if task.train is not None and task.train.loss_metric:
            env["LOSS_METRIC"] = task.train.loss_metric
        return env

    async def _working_dir(self, axon: Axon, task: Task, axon_dir: Path, ws: Path) -> Path:
        """The run's working directory in the task's sources (a git artifact is cloned)."""
        source = task_source(axon, task)
        # Resolving a local path is a metadata-only syscall: not worth a thread hop.
        base = local_base(source, axon_dir)
        if base is None:
            assert source.artifact is not None  # local_base: only a git artifact has no base
            base = await self.checkouts.clone(source.artifact, ws)
        return working_dir_in(base, source, task)

    async def _execute(
        self,
        request: ActionRequest,
        plan: _Plan,
        run_id: str,
        on_running: OnRunning | None,
        bound: Any,
    ) -> RunOutcome:
        """Start the run's process, supervise it to its end, and say how it ended."""
        try:
            proc = await start_session(plan.argv, plan.cwd, plan.env, plan.log_path)
        except FileNotFoundError:
            return _not_started(run_id, plan, f"command not found: {plan.argv[0]}", 127, bound)
        except PermissionError:
            return _not_started(run_id, plan, f"command not executable: {plan.argv[0]}", 126, bound)
        started = utcnow()
        live = _Live(_run_record(request, run_id, plan, proc.pid, started))
        self._live[run_id] = live
        self._records.write(run_id, live.record)
        bound.info("task.started", pid=proc.pid, argv=plan.argv, cwd=str(plan.cwd))
        ending, leftovers = await self._supervise(proc, live, plan, on_running, started)
        outcome = _finished(run_id, plan, proc.returncode, ending, started)
        bound.info(
            "task.finished",
            phase=outcome.phase,
            exit_code=outcome.exit_code,
            reason=outcome.message,
            leftovers_stopped=leftovers,
        )
        return outcome

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        live: _Live,
        plan: _Plan,
        on_running: OnRunning | None,
        started: datetime,
    ) -> tuple[str | None, bool]:
        """Report Running, wait for the end, stop what is left of the tree; the reason it was
        stopped (None: it exited) and whether leftovers had to be stopped."""
        run_id, pgid = live.record.run_id, live.record.pgid
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
            self._records.remove(run_id)
            live.done.set()
        return ending, leftovers

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
        boot = boot_id()
        for path, record in self._records.read():
            if record.run_id in self._live or record.owner_alive(boot):
                continue  # another executor sharing this state dir is still watching it
            killed = _left_running(record, boot)
            if killed:
                await stop_tree(record.pgid, self.grace)
                message = (
                    "executor restarted while the run was in progress; its processes were stopped"
                )
            else:
                message = "process gone after an executor restart (its exit status is unknown)"
            log.info("task.recovered", run_id=record.run_id, pid=record.pid, killed=killed)
            lost.append(LostRun(record, message, killed))
            path.unlink(missing_ok=True)
        return lost


def _left_running(record: RunRecord, boot: str | None) -> bool:
    """True if the recorded run's processes still run: its leader (the same process, not a
    reused pid), or members of its group after the leader is gone."""
    if record.boot_id != boot:
        return False
    stat = proc_stat(record.pid)
    if stat is None:
        return bool(group_members(record.pgid))
    return stat[0] not in ("Z", "X") and record.proc_start == stat[3]


def _run_record(
    request: ActionRequest, run_id: str, plan: _Plan, pid: int, started: datetime
) -> RunRecord:
    """The on-disk record of a run whose leader `pid` has just started."""
    return RunRecord(
        run_id=run_id,
        namespace=request.namespace,
        axon=request.axon,
        task=request.task,
        kind=request.kind,
        **session_ids(pid),
        started=format_time(started),
        log_path=str(plan.log_path),
        action_key=request.idempotency_key,
        version=plan.version,
        model_path=str(plan.model_path) if plan.model_path else None,
        request=request.model_dump(mode="json"),
    )


def _outcome_fields(plan: _Plan) -> dict[str, Any]:
    return {"log_path": plan.log_path, "version": plan.version, "model_path": plan.model_path}


def _not_started(run_id: str, plan: _Plan, message: str, code: int, bound: Any) -> RunOutcome:
    """The outcome of a run whose command could not be started (127: missing, 126: denied)."""
    bound.info("task.failed", reason=message)
    return RunOutcome(run_id, "Failed", message, exit_code=code, **_outcome_fields(plan))


def _finished(
    run_id: str, plan: _Plan, code: int | None, ending: str | None, started: datetime
) -> RunOutcome:
    """The outcome of a run that ended: `ending` is why it was stopped (None: it exited)."""
    outputs: dict[str, Any] = {"log": str(plan.log_path)}
    if plan.version is not None and plan.model_path is not None:
        reading = read_metrics(plan.model_path)
        outputs.update(version=plan.version, model_path=str(plan.model_path))
        outputs["metrics"] = reading.metrics
        if reading.error:
            outputs["metrics_error"] = reading.error
    phase: OutcomePhase = "Failed"
    if ending is not None:
        message = ending
    elif code == 0:
        phase, message = "Succeeded", ""
    else:
        message = exit_message(code if code is not None else -1, plan.log_path)
    return RunOutcome(
        run_id,
        phase,
        message,
        exit_code=code,
        outputs=outputs,
        started=started,
        **_outcome_fields(plan),
    )


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
