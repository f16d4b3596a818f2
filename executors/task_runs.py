"""Task-run records and their lifecycle reports: what `ranvier get` reads of a run.

A task run's record lives at `task.<ns>.<axon>.<task>.<run_id>` in `ranvier_runs`; every phase
is recorded there before its lifecycle event is published, so a redelivered request can
re-report what is recorded. Lifecycle events have one id per (run, phase): a re-report is a
duplicate the stream drops.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from events import subjects
from events.bus import OUTAGE_ERRORS, Bus, kv_key
from events.errors import RanvierError
from events.model import ActionRequest, LifecycleData, Phase, format_time, utcnow
from events.watchers.lifecycle import run_event_id

log = structlog.get_logger(__name__)

SOURCE: Final = "ranvier/executor"
FINAL: Final = ("Succeeded", "Failed")
SAVE_RETRY_FOR: Final = 30.0
RETRY_DELAY: Final = 0.5


class RunnerError(RanvierError, RuntimeError):
    """The executor could not run an action (its Axon is missing, a record is corrupt)."""


def task_run_key(namespace: str, axon: str, task: str, run_id: str) -> str:
    """`task.<ns>.<axon>.<task>.<run_id>`: a task run's record in `ranvier_runs`."""
    return kv_key("task", namespace, axon, task, run_id)


def lifecycle_event_id(run_id: str, phase: str) -> str:
    """A deterministic event id per (run, phase): a re-report is a duplicate the stream drops.

    The cluster lifecycle watcher gives its events the same ids (`run_event_id`).
    """
    return run_event_id(run_id, phase)


@dataclass
class TaskRun:
    """A task run's record as `ranvier get` reads it (key: `task_run_key`)."""

    id: str
    task: str
    kind: str
    axon: str
    namespace: str
    phase: Phase
    sensor: str
    sensor_run_id: str
    step: int
    index: int
    attempt: int
    action_key: str
    started: str | None = None
    finished: str | None = None
    message: str = ""
    exit_code: int | None = None
    version: int | None = None
    log_path: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    executor: str = ""

    @classmethod
    def new(cls, request: ActionRequest, run_id: str, executor: str) -> TaskRun:
        """The Pending record of a freshly claimed request."""
        return cls(
            id=run_id,
            task=request.task,
            kind=request.kind,
            axon=request.axon,
            namespace=request.namespace,
            phase="Pending",
            sensor=request.sensor,
            sensor_run_id=request.sensor_run_id,
            step=request.step,
            index=request.index,
            attempt=request.attempt,
            action_key=request.idempotency_key,
            executor=executor,
        )

    @property
    def key(self) -> str:
        """Its key in `ranvier_runs`."""
        return task_run_key(self.namespace, self.axon, self.task, self.id)

    def apply(self, data: LifecycleData) -> None:
        """Take the phase, message, exit code and outputs of a lifecycle payload."""
        now = format_time(utcnow())
        self.phase = data.phase
        if data.phase == "Running" and self.started is None:
            self.started = now
        if data.phase in FINAL:
            self.finished = now
            self.started = self.started or now
            self.message = data.message
            self.exit_code = data.exit_code
        self.outputs = {**self.outputs, **data.outputs}
        version = self.outputs.get("version")
        self.version = version if isinstance(version, int) else self.version
        logfile = self.outputs.get("log")
        self.log_path = logfile if isinstance(logfile, str) else self.log_path

    def lifecycle(self) -> LifecycleData:
        """The lifecycle payload of the record's current phase (to report it again)."""
        return LifecycleData(
            axon=self.axon,
            namespace=self.namespace,
            task=self.task,
            run_id=self.id,
            phase=self.phase,
            sensor=self.sensor,
            sensor_run_id=self.sensor_run_id,
            step=self.step,
            index=self.index,
            attempt=self.attempt,
            action_key=self.action_key,
            message=self.message,
            exit_code=self.exit_code,
            outputs=self.outputs,
        )

    def to_json(self) -> bytes:
        """The stored form."""
        return json.dumps(self.__dict__, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> TaskRun:
        """Parse a stored record; `RunnerError` if it is not one."""
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise RunnerError(f"corrupt task-run record: {exc}") from None


class Reports:
    """Records a run's phases in `ranvier_runs` and publishes them as lifecycle events."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def report(self, record: TaskRun, data: LifecycleData) -> None:
        """Record the phase, then publish it (a redelivery re-publishes what is recorded)."""
        record.apply(data)
        await self.save(record)
        await self.publish(data)

    async def save(self, record: TaskRun) -> None:
        """Write the run's record, again after an outage (a put is idempotent): a run that
        finished while the server restarted must not be reported lost on redelivery."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SAVE_RETRY_FOR
        while True:
            try:
                await self.bus.kv_put(subjects.RUNS_BUCKET, record.key, record.to_json())
                return
            except OUTAGE_ERRORS as exc:
                if loop.time() >= deadline:
                    raise
                log.warning("executor.save_retried", run_id=record.id, error=str(exc) or repr(exc))
                await asyncio.sleep(RETRY_DELAY)

    async def publish(self, data: LifecycleData) -> None:
        event = data.to_event(source=SOURCE, id=lifecycle_event_id(data.run_id, data.phase))
        await self.bus.publish(event)
        log.info(
            "executor.lifecycle",
            axon=data.axon,
            task=data.task,
            run_id=data.run_id,
            phase=data.phase,
            message=data.message or None,
        )


__all__ = [
    "FINAL",
    "Reports",
    "RunnerError",
    "TaskRun",
    "lifecycle_event_id",
    "task_run_key",
]
