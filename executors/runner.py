"""The executor role: take action requests off the bus, run each exactly once, report how it went.

Delivery is at-least-once (a work-queue stream, a durable pull consumer shared by every
executor process), so exactly-once is made here, with one rule: nothing starts before the
request is claimed, and a claim is a KV *create* on `claim.<sha256 of the idempotency key>` in
`ranvier_runs`, which only one claimant can win. A redelivered request (an executor died, an
ack was lost) therefore never starts a second run; it finds the claim and the task-run record
it points to, and either re-reports the final phase that was recorded or, if the run never
finished, reports it Failed with the reason. The request is acked only after its final
lifecycle is published, and kept alive (`in_progress`) while the run lasts.

The runner owns the task-run records (`task.<ns>.<axon>.<task>.<run_id>`), which `ranvier get`
reads, and registers trainer versions in the model registry before reporting Succeeded, so a
deployer step that follows always finds the version. Backoff (`not_before`) is a delayed nak:
the request goes back to the stream and no slot is held while it waits. An Axon deleted event
stops that Axon's live runs. At start-up, runs a previous executor left behind are reported
Failed (`Backend.recover()`) and the deployer serves its recorded deployments again
(`Deployer.recover()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from events import subjects
from events.aio import checkpoint
from events.bus import Bus, Received, RevisionMismatch
from events.errors import RanvierError
from events.model import ActionRequest, EventError, LifecycleData, format_time, new_id, utcnow
from executors.axon_watch import AxonWatch
from executors.backends.base import Backend, Outcome, Started, lifecycle
from executors.deploy_flow import Deployer
from executors.hpo import Study, StudyError, StudyInterrupted, is_study
from executors.kv import BusKeyValue, claim, claim_key
from executors.registry import ModelRegistry, ModelVersion
from executors.task_runs import (
    FINAL,
    Reports,
    RunnerError,
    TaskRun,
    lifecycle_event_id,
    task_run_key,
)
from sensors.axons import AxonStore, AxonStoreError
from sensors.spec import Axon

log = structlog.get_logger(__name__)

DEFAULT_DURABLE: Final = "ranvier-executor"
DEFAULT_CONCURRENCY: Final = 16
DEFAULT_ACK_WAIT: Final = 10.0
NO_DEPLOYER: Final = (
    "no deployer in this executor: deployer actions run where the serving role is "
    "(`ranvier up`, or `ranvier run --role executor` with the deployer available)"
)


@dataclass(frozen=True)
class LoadedAxon:
    """The spec an action was requested under, and the directory its paths are relative to."""

    axon: Axon
    axon_dir: Path
    deleted: bool


async def load_axon(
    store: AxonStore, namespace: str, name: str, generation: int
) -> LoadedAxon | None:
    """An Axon's spec at `generation` (falling back to the latest), and whether it is deleted."""
    try:
        latest = await store.get(namespace, name)
        found = await store.get(namespace, name, generation) or latest
    except AxonStoreError as exc:
        raise RunnerError(str(exc)) from None
    if found is None:
        return None
    deleted = latest.deleted if latest is not None else False
    return LoadedAxon(found.axon, found.axon_dir or Path.cwd(), deleted)


# ---------------------------------------------------------------------------------------------
# The runner


@dataclass
class _Live:
    """A run in progress in this process: the deliveries to keep alive and ack."""

    request: ActionRequest
    record: TaskRun
    deliveries: list[Received]


class ExecutorRunner:
    """Consumes RANVIER_ACTIONS, claims each request once, runs it, reports its lifecycle."""

    def __init__(
        self,
        bus: Bus,
        *,
        backend: Backend,
        deployer: Deployer | None = None,
        state_dir: Path,
        durable: str = DEFAULT_DURABLE,
        concurrency: int = DEFAULT_CONCURRENCY,
        ack_wait: float = DEFAULT_ACK_WAIT,
        fetch_wait: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise RunnerError(f"concurrency must be at least 1, got {concurrency}")
        self.bus = bus
        self.backend = backend
        self.deployer = deployer
        self.state_dir = Path(state_dir)
        self.durable = durable
        self.concurrency = concurrency
        self.ack_wait = ack_wait
        self.fetch_wait = fetch_wait
        self.axons = AxonStore(bus)
        self.registry = ModelRegistry(BusKeyValue(bus, subjects.MODELS_BUCKET))
        self.executor_id = f"{socket.gethostname()}/{os.getpid()}/{new_id()}"
        self._live: dict[str, _Live] = {}  # by action key
        self._tasks: set[asyncio.Task[None]] = set()
        self.axon_watch = AxonWatch(bus, self._axon_deleted)
        self.reports = Reports(bus)
        self._ready = asyncio.Event()
        self.handled = 0

    @property
    def ready(self) -> asyncio.Event:
        """Set once recovery is done and the runner is consuming."""
        return self._ready

    def live_keys(self) -> list[str]:
        """Idempotency keys of the actions running in this process."""
        return list(self._live)

    # -- role -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Recover, then consume until cancelled; on cancellation, stop runs and report them."""
        await self.recover()
        watcher = asyncio.create_task(self.axon_watch.run(), name="executor-axon-watch")
        consumer = await self.bus.consumer(
            subjects.ACTIONS_STREAM,
            self.durable,
            ack_wait=self.ack_wait,
            max_ack_pending=max(1000, self.concurrency * 4),
        )
        log.info("executor.started", executor=self.executor_id, concurrency=self.concurrency)
        self._ready.set()
        try:
            while True:
                checkpoint()
                free = self.concurrency - len(self._tasks)
                if free <= 0:
                    await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for received in await consumer.fetch(free, wait=self.fetch_wait):
                    self._spawn(self._handle(received))
        finally:
            watcher.cancel()
            await asyncio.shield(self._stop(consumer))

    async def _stop(self, consumer: Any) -> None:
        await consumer.close()
        reason = "cancelled: executor shut down"
        await self.backend.shutdown(reason)
        if self.deployer is not None:
            await self.deployer.shutdown()
        if self._tasks:  # their runs were stopped: let them report Failed and ack
            _, pending = await asyncio.wait(self._tasks, timeout=self.ack_wait)
            for task in pending:
                task.cancel()
        log.info("executor.stopped", executor=self.executor_id, handled=self.handled)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recover(self) -> int:
        """Report Failed every run a previous executor left behind; how many were reported.

        The deployer recovers too: model servers a crashed executor left are stopped and the
        recorded deployments served again, before any new action is taken.
        """
        count = 0
        for lost in await self.backend.recover():
            data = lost.to_lifecycle()
            if data is None:
                continue
            key = task_run_key(data.namespace, data.axon, data.task, data.run_id)
            found = await self.bus.kv_get(subjects.RUNS_BUCKET, key)
            if found is not None:
                record = TaskRun.from_json(found[0])
                if record.phase in FINAL:
                    continue
                record.apply(data)
                await self.reports.save(record)
            await self.reports.publish(data)
            count += 1
            log.info("executor.recovered", run_id=data.run_id, task=data.task, reason=data.message)
        if self.deployer is not None:
            await self.deployer.recover()
        return count

    # -- one request ----------------------------------------------------------------------------

    async def _handle(self, received: Received) -> None:
        try:
            await self._handle_request(received)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bus outage or a bug: leave it to redelivery, keep going
            log.exception("executor.handle_failed", error=repr(exc), subject=received.subject)
            with contextlib.suppress(Exception):
                await received.nak(delay=1.0)

    async def _handle_request(self, received: Received) -> None:
        request = self._request(received)
        if request is None:
            await received.term()
            return
        key = request.idempotency_key
        live = self._live.get(key)
        if live is not None:  # redelivered while we still run it: ack that delivery too
            live.deliveries.append(received)
            return
        if request.not_before is not None:
            wait = (request.not_before - utcnow()).total_seconds()
            if wait > 0:
                await received.nak(delay=wait)
                return
        run_id = await claim(self.bus, key, self.executor_id)
        if run_id is None:
            await self._already_claimed(request, received)
            return
        self.handled += 1
        record = TaskRun.new(request, run_id, self.executor_id)
        live = _Live(request, record, [received])
        self._live[key] = live
        await self._run_claimed(live)

    async def _run_claimed(self, live: _Live) -> None:
        """Run a claimed request to its end, report it, ack every delivery of it."""
        request, record = live.request, live.record
        keepalive = asyncio.create_task(self._keepalive(live))
        try:
            await self.reports.report(record, record.lifecycle())
            try:
                outcome = await self._execute(live)
            except StudyInterrupted:  # shutting down: the next executor resumes the study
                log.info("executor.study_interrupted", action_key=request.idempotency_key)
                for delivery in live.deliveries:
                    with contextlib.suppress(Exception):
                        await delivery.nak()
                return
            data = outcome.to_lifecycle(request).model_copy(update={"run_id": record.id})
            if request.kind == "trainer" and not data.outputs.get("study"):
                await self._register_version(request, record.id, data)
            await self.reports.report(record, data)
        finally:
            keepalive.cancel()
            self._live.pop(request.idempotency_key, None)
        for delivery in live.deliveries:
            await delivery.ack()

    def _request(self, received: Received) -> ActionRequest | None:
        event = received.event
        if event is None:
            log.warning("executor.bad_message", subject=received.subject, error=str(received.error))
            return None
        try:
            payload = event.payload()
        except EventError as exc:
            log.warning("executor.bad_request", event_id=event.id, error=str(exc))
            return None
        if not isinstance(payload, ActionRequest):
            log.warning("executor.not_an_action", event_id=event.id, type=event.type)
            return None
        return payload

    async def _already_claimed(self, request: ActionRequest, received: Received) -> None:
        """A request someone claimed before: re-report its final phase, or that it was lost."""
        key = request.idempotency_key
        found = await self.bus.kv_get(subjects.RUNS_BUCKET, claim_key(key))
        run_id = json.loads(found[0]).get("run_id") if found is not None else None
        record: TaskRun | None = None
        if run_id:
            raw = await self.bus.kv_get(
                subjects.RUNS_BUCKET,
                task_run_key(request.namespace, request.axon, request.task, run_id),
            )
            record = TaskRun.from_json(raw[0]) if raw is not None else None
        if record is None:
            record = TaskRun.new(request, run_id or new_id(), self.executor_id)
        if (
            record.phase not in FINAL
            and found is not None
            and await self._resume_study(request, received, record, found[1])
        ):
            return
        if record.phase not in FINAL and run_id and await self._adopt(request, received, record):
            return
        if record.phase not in FINAL:
            message = (
                f"lost: the executor that claimed it ({record.executor or 'unknown'}) stopped "
                f"before the run finished"
            )
            data = record.lifecycle().model_copy(
                update={"phase": "Failed", "message": message, "exit_code": None}
            )
            record.apply(data)
            await self.reports.save(record)
        log.info("executor.duplicate", action_key=key, run_id=record.id, phase=record.phase)
        await self.reports.publish(record.lifecycle())
        await received.ack()

    async def _still_submitted(self, request: ActionRequest) -> LoadedAxon | None:
        """The Axon (at the request's generation) while it is still submitted, else None."""
        try:
            loaded = await load_axon(
                self.axons, request.namespace, request.axon, request.generation
            )
        except RunnerError:
            return None
        return None if loaded is None or loaded.deleted else loaded

    async def _resume_study(
        self, request: ActionRequest, received: Received, record: TaskRun, claim_revision: int
    ) -> bool:
        """Take over a study whose executor stopped mid-way (its state is on the bus): True if
        this executor now runs it. Any other unfinished run is lost, as the caller reports."""
        if request.kind != "trainer":
            return False
        loaded = await self._still_submitted(request)
        if loaded is None or not is_study(loaded.axon, request):
            return False
        claim = {
            "run_id": record.id,
            "action_key": request.idempotency_key,
            "executor": self.executor_id,
            "claimed": format_time(utcnow()),
        }
        try:
            await self.bus.kv_update(
                subjects.RUNS_BUCKET,
                claim_key(request.idempotency_key),
                json.dumps(claim).encode("utf-8"),
                claim_revision,
            )
        except RevisionMismatch:  # another executor resumed it first
            await received.ack()
            return True
        log.info("executor.study_resumed", action_key=request.idempotency_key, run_id=record.id)
        self.handled += 1
        record.executor = self.executor_id
        live = _Live(request, record, [received])
        self._live[request.idempotency_key] = live
        await self._run_claimed(live)
        return True

    async def _adopt(self, request: ActionRequest, received: Received, record: TaskRun) -> bool:
        """Take over a run whose executor stopped while the backend still runs it (a Job on
        the cluster): wait for its end here, report it and ack. False when the backend cannot
        adopt it (the local backend's processes died with their executor)."""
        adopt = getattr(self.backend, "adopt", None)
        if adopt is None:
            return False
        loaded = await self._still_submitted(request)
        if loaded is None:
            return False
        key = request.idempotency_key
        live = _Live(request, record, [received])
        self._live[key] = live
        keepalive = asyncio.create_task(self._keepalive(live))
        try:
            outcome = await adopt(request, loaded.axon, record.id)
            if outcome is None:
                return False
            log.info("executor.adopted", action_key=key, run_id=record.id)
            data = outcome.to_lifecycle(request).model_copy(update={"run_id": record.id})
            if request.kind == "trainer":
                await self._register_version(request, record.id, data)
            await self.reports.report(record, data)
        except RanvierError as exc:
            log.info("executor.adopt_failed", action_key=key, error=str(exc))
            return False
        finally:
            keepalive.cancel()
            self._live.pop(key, None)
        for delivery in live.deliveries:
            await delivery.ack()
        return True

    async def _execute(self, live: _Live) -> Outcome:
        request, record = live.request, live.record
        bound = log.bind(action_key=record.action_key, run_id=record.id)

        async def on_running(started: Started) -> None:
            data = started.to_lifecycle(request).model_copy(update={"run_id": record.id})
            await self.reports.report(record, data)
            if self.axon_watch.is_deleted(request.namespace, request.axon):
                asyncio.get_running_loop().create_task(
                    self.backend.cancel(started.run_id, "cancelled: axon deleted")
                )

        try:
            loaded = await load_axon(
                self.axons, request.namespace, request.axon, request.generation
            )
        except RunnerError as exc:
            return _failed(record.id, str(exc))
        if loaded is None:
            return _failed(
                record.id,
                f"axon {request.namespace}/{request.axon} is not submitted",
            )
        if loaded.deleted or self.axon_watch.is_deleted(request.namespace, request.axon):
            return _failed(record.id, "cancelled: axon deleted")
        try:
            if is_study(loaded.axon, request):
                study = Study(
                    self.bus,
                    backend=self.backend,
                    registry=self.registry,
                    request=request,
                    axon=loaded.axon,
                    axon_dir=loaded.axon_dir,
                    run_id=record.id,
                    executor=self.executor_id,
                )
                return await study.run(on_running)
            if request.kind == "deployer":
                if self.deployer is None:
                    return _failed(record.id, NO_DEPLOYER)
                return await self.deployer.deploy(
                    request, loaded.axon, loaded.axon_dir, on_running=on_running, run_id=record.id
                )
            return await self.backend.run(
                request, loaded.axon, loaded.axon_dir, run_id=record.id, on_running=on_running
            )
        except (RanvierError, StudyError) as exc:
            bound.info("executor.run_error", error=str(exc))
            return _failed(record.id, str(exc))

    async def _register_version(
        self, request: ActionRequest, run_id: str, data: LifecycleData
    ) -> None:
        version = data.outputs.get("version")
        if not isinstance(version, int):
            return
        metrics = data.outputs.get("metrics")
        error = data.outputs.get("metrics_error")
        await self.registry.put(
            ModelVersion(
                namespace=request.namespace,
                axon=request.axon,
                task=request.task,
                version=version,
                run_id=run_id,
                path=str(data.outputs.get("model_path", "")),
                phase="Succeeded" if data.phase == "Succeeded" else "Failed",
                metrics=metrics if isinstance(metrics, dict) else {},
                metrics_error=error if isinstance(error, str) else None,
            )
        )

    async def _keepalive(self, live: _Live) -> None:
        while True:
            checkpoint()
            await asyncio.sleep(self.ack_wait / 3)
            for delivery in list(live.deliveries):
                with contextlib.suppress(Exception):
                    await delivery.in_progress()

    # -- reporting ------------------------------------------------------------------------------

    # -- deleted Axons --------------------------------------------------------------------------

    async def _axon_deleted(self, namespace: str, axon: str) -> None:
        """Stop a deleted Axon's live runs and take down what it deployed."""
        stopped = await self.backend.cancel_axon(axon, namespace, "cancelled: axon deleted")
        if self.deployer is not None:
            await self.deployer.undeploy_axon(namespace, axon)
        log.info("executor.axon_deleted", axon=axon, stopped=stopped)


@dataclass(frozen=True)
class _Failure:
    """An action that failed before (or instead of) reaching a backend."""

    run_id: str
    message: str
    phase: Literal["Succeeded", "Failed"] = "Failed"
    finished: datetime = field(default_factory=utcnow)

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The Failed lifecycle payload."""
        return lifecycle(request, self.run_id, "Failed", message=self.message)


def _failed(run_id: str, message: str) -> Outcome:
    return _Failure(run_id, message)


__all__ = [
    "DEFAULT_DURABLE",
    "Deployer",
    "ExecutorRunner",
    "LoadedAxon",
    "RunnerError",
    "TaskRun",
    "claim_key",
    "lifecycle_event_id",
    "load_axon",
    "task_run_key",
]
