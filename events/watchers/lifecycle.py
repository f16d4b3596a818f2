"""The cluster lifecycle watcher: Jobs and Deployments ranvier created become lifecycle events.

It needs nothing from the executor that created an object: the objects carry their run in
annotations (`ranvier.dev/action` holds the action request, `ranvier.dev/run-id` the run), so
any watcher replica can report any run, including runs started before it (re)started.

Exactly one event per transition, also across a dropped watch or a watcher restart:

- it lists, then watches from the list's `resourceVersion`, keeping the newest one it saw
  (objects and BOOKMARK events); after a dropped connection it resumes from there, and after
  `410 Gone` it lists again;
- a phase is derived from the object's *state*, not from the event type, and compared with the
  last phase reported for that run, so a replayed or repeated event (a relist, a server that
  resends everything) reports nothing new, while a transition that happened while the watch was
  down is still seen in the state it left;
- the phase reported last is written back on the object (annotation `ranvier.dev/reported`)
  after publishing, so a restarted watcher knows what was already said. Publishing comes first:
  a crash in between repeats an event with the same deterministic id (`lifecycle_event_id`),
  which JetStream's duplicate window drops.

A run that went from Pending straight to Succeeded while nobody looked did run: Running is
reported before Succeeded. A Failed run is not assumed to have run.

The module uses the synchronous `kubernetes` client in worker threads; the publisher is an
injected async callable, so the watcher needs no bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import structlog

from events.aio import checkpoint
from events.model import ActionRequest, LifecycleData, Phase

log = structlog.get_logger(__name__)

Publish = Callable[[LifecycleData], Awaitable[None]]
Kind = Literal["Job", "Deployment", "SparkApplication", "TFJob"]

# The operators' kinds: (group, version, plural). Their CRDs may not be installed; a watch of a
# kind the API server does not know is retried rarely (`absent_retry`).
OPERATED: Final[dict[str, tuple[str, str, str]]] = {
    "SparkApplication": ("sparkoperator.k8s.io", "v1beta2", "sparkapplications"),
    "TFJob": ("kubeflow.org", "v1", "tfjobs"),
}

MANAGED_SELECTOR: Final = "app.kubernetes.io/managed-by=ranvier"
A_ACTION: Final = "ranvier.dev/action"
A_RUN: Final = "ranvier.dev/run-id"
A_TASK: Final = "ranvier.dev/task"
A_REPORTED: Final = "ranvier.dev/reported"
L_ROLE: Final = "ranvier.dev/role"
_ORDER: Final[dict[str, int]] = {"Pending": 0, "Running": 1, "Succeeded": 2, "Failed": 2}
_PHASES: Final[dict[str, Phase]] = {
    "Pending": "Pending",
    "Running": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
}
MERGE_PATCH: Final = "application/merge-patch+json"


# ---------------------------------------------------------------------------------------------
# Phases from object state (pure)


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def _true(cond: Mapping[str, Any] | None) -> bool:
    return cond is not None and cond.get("status") == "True"


def _why(cond: Mapping[str, Any]) -> str:
    reason, message = cond.get("reason") or "", cond.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message


def job_phase(obj: Mapping[str, Any]) -> tuple[Phase, str]:
    """The phase of a Job, and why when it failed."""
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    conds = _conditions(status)
    for name in ("Failed", "FailureTarget"):
        if _true(conds.get(name)):
            return "Failed", _why(conds[name]) or "job failed"
    for name in ("Complete", "SuccessCriteriaMet"):
        if _true(conds.get(name)):
            return "Succeeded", ""
    if int(status.get("succeeded") or 0) >= int(spec.get("completions") or 1):
        return "Succeeded", ""
    failed = int(status.get("failed") or 0)
    if failed > int(spec.get("backoffLimit", 6)):
        return "Failed", f"{failed} pod(s) failed"
    ready = status.get("ready")
    if (ready is not None and int(ready) > 0) or (ready is None and int(status.get("active") or 0)):
        return "Running", ""
    return "Pending", ""


_SPARK_STATES: dict[str, Phase] = {
    "COMPLETED": "Succeeded",
    "FAILED": "Failed",
    "SUBMISSION_FAILED": "Failed",
    "RUNNING": "Running",
    "SUCCEEDING": "Running",
    "FAILING": "Running",
}


def spark_phase(obj: Mapping[str, Any]) -> tuple[Phase, str]:
    """The phase of a SparkApplication from the operator's `status.applicationState.state`
    (COMPLETED; FAILED or SUBMISSION_FAILED; RUNNING and its way to an end; else Pending)."""
    state = ((obj.get("status") or {}).get("applicationState") or {}) or {}
    phase = _SPARK_STATES.get(str(state.get("state") or "").upper(), "Pending")
    message = str(state.get("errorMessage") or "") if phase == "Failed" else ""
    return phase, message or ("spark application failed" if phase == "Failed" else "")


def tfjob_phase(obj: Mapping[str, Any]) -> tuple[Phase, str]:
    """The phase of a TFJob from the training operator's conditions (Succeeded, Failed,
    Running; Created or none: Pending)."""
    conds = _conditions(obj.get("status") or {})
    if _true(conds.get("Failed")):
        return "Failed", _why(conds["Failed"]) or "tfjob failed"
    if _true(conds.get("Succeeded")):
        return "Succeeded", ""
    if _true(conds.get("Running")) or _true(conds.get("Restarting")):
        return "Running", ""
    return "Pending", ""


def deployment_phase(obj: Mapping[str, Any]) -> tuple[Phase, str]:
    """The phase of a model server's Deployment: Succeeded once every replica is available."""
    status = obj.get("status") or {}
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    conds = _conditions(status)
    progressing = conds.get("Progressing")
    if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        return "Failed", _why(progressing)
    wanted = int(spec.get("replicas", 1))
    observed = status.get("observedGeneration")
    current = observed is None or "generation" not in meta or observed >= meta["generation"]
    available = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas", available) or 0)
    if current and available >= wanted and updated >= wanted and wanted > 0:
        return "Succeeded", ""
    if current and wanted == 0:
        return "Succeeded", ""
    if int(status.get("readyReplicas") or 0) > 0:
        return "Running", ""
    return "Pending", ""


def phase_of(kind: Kind, obj: Mapping[str, Any]) -> tuple[Phase, str]:
    """The phase of a Job, a Deployment, a SparkApplication or a TFJob."""
    if kind == "SparkApplication":
        return spark_phase(obj)
    if kind == "TFJob":
        return tfjob_phase(obj)
    return job_phase(obj) if kind == "Job" else deployment_phase(obj)


def run_event_id(run_id: str, phase: str) -> str:
    """The event id of a run's transition to `phase`: `<run_id>.<phase>`.

    Run ids are unique (the executor's runner draws them), so this is unique per transition,
    and deterministic: whoever reports it (the runner, this watcher, a restarted one) gives it
    the same id, so JetStream stores it once.
    """
    return f"{run_id}.{phase}"


def lifecycle_event_id(data: LifecycleData) -> str:
    """The event id of a lifecycle payload (`run_event_id` of its run and phase)."""
    return run_event_id(data.run_id, data.phase)


@dataclass(frozen=True)
class Observed:
    """What the watcher reads from one object: its run, its phase, what was reported."""

    key: tuple[str, str, str]
    request: ActionRequest
    task: str
    run_id: str
    phase: Phase
    message: str
    reported: Phase | None
    resource_version: str | None
    outputs: dict[str, Any]


def observe(kind: Kind, obj: Mapping[str, Any]) -> Observed | None:
    """Read a ranvier run from an object; None for objects that are not runs (builds, anchors)."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    raw = annotations.get(A_ACTION)
    run_id = annotations.get(A_RUN)
    if raw is None or run_id is None or labels.get(L_ROLE) == "build":
        return None
    try:
        request = ActionRequest.model_validate(json.loads(raw))
    except ValueError as exc:
        log.warning("lifecycle.unreadable_action", kind=kind, name=meta.get("name"), error=str(exc))
        return None
    phase, message = phase_of(kind, obj)
    reported = annotations.get(A_REPORTED)
    name = str(meta.get("name"))
    outputs: dict[str, Any] = {kind.lower(): name}
    if "ranvier.dev/model-version" in labels:
        outputs["version"] = labels["ranvier.dev/model-version"]
    return Observed(
        key=(kind, str(meta.get("namespace")), name),
        request=request,
        task=request.task,  # the runner's name for the run (a deployer's, not its deploy task's)
        run_id=str(run_id),
        phase=phase,
        message=message,
        reported=_PHASES.get(str(reported)),
        resource_version=meta.get("resourceVersion"),
        outputs=outputs,
    )


def transitions(seen: Observed, last: Phase | None) -> list[Phase]:
    """The phases to report, in order, for a run last reported in `last` and now in `seen`.

    Nothing when the phase did not move forward; Running is inserted when a run is found
    Succeeded without Running having been reported (it ran while nobody looked).
    """
    if last is not None and _ORDER[seen.phase] <= _ORDER[last]:
        return []
    phases: list[Phase] = []
    if seen.phase == "Succeeded" and (last is None or _ORDER[last] < _ORDER["Running"]):
        phases.append("Running")
    phases.append(seen.phase)
    return phases


def to_lifecycle(seen: Observed, phase: Phase) -> LifecycleData:
    """The lifecycle payload of one transition (same fields as the executor's runner reports)."""
    req = seen.request
    return LifecycleData(
        axon=req.axon,
        namespace=req.namespace,
        task=seen.task,
        run_id=seen.run_id,
        phase=phase,
        sensor=req.sensor,
        sensor_run_id=req.sensor_run_id,
        step=req.step,
        index=req.index,
        attempt=req.attempt,
        action_key=req.idempotency_key,
        message=seen.message if phase == seen.phase else "",
        outputs=seen.outputs,
    )


# ---------------------------------------------------------------------------------------------
# The watcher


class WatchGone(Exception):
    """The server no longer has the resourceVersion we resume from (410): list again."""


class LifecycleWatcher:
    """Watches ranvier's Jobs and Deployments and publishes one event per run transition."""

    def __init__(
        self,
        api_client: Any,
        publish: Publish,
        *,
        namespace: str | None = None,
        label_selector: str = MANAGED_SELECTOR,
        timeout_seconds: int = 300,
        read_timeout: float = 330.0,
        retry_delay: float = 1.0,
        write_back: bool = True,
        absent_retry: float = 30.0,
    ) -> None:
        """`namespace` None watches all namespaces; `write_back` records reported phases;
        `absent_retry`: seconds between looks for an operator kind the cluster does not know."""
        from kubernetes import client

        self._api_client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self.absent_retry = absent_retry
        self.publish = publish
        self.namespace = namespace
        self.label_selector = label_selector
        self.timeout_seconds = timeout_seconds
        self.read_timeout = read_timeout
        self.retry_delay = retry_delay
        self.write_back = write_back
        self._reported: dict[tuple[str, str, str], tuple[str, Phase]] = {}
        self._stopping = threading.Event()
        self._responses: set[Any] = set()
        self._lock = threading.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self.connects = 0

    # -- lifecycle of the watcher itself -----------------------------------------------------

    async def __aenter__(self) -> LifecycleWatcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        """Start watching Jobs and Deployments in the background."""
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(self._loop("Job"), name="lifecycle-watch-jobs"),
            asyncio.create_task(self._loop("Deployment"), name="lifecycle-watch-deployments"),
            asyncio.create_task(self._loop("SparkApplication"), name="lifecycle-watch-spark"),
            asyncio.create_task(self._loop("TFJob"), name="lifecycle-watch-tfjobs"),
        ]

    async def stop(self) -> None:
        """Stop watching; returns when the worker threads have let go of their connections."""
        self._stopping.set()
        with self._lock:
            for resp in list(self._responses):
                with contextlib.suppress(Exception):  # already closed by the thread is fine
                    resp.shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        # transitions being published and written back finish, so none is reported twice
        await asyncio.gather(*list(self._inflight), return_exceptions=True)

    # -- list + watch ------------------------------------------------------------------------

    def _list_fn(self, kind: Kind) -> Callable[..., Any]:
        if kind in OPERATED:
            group, version, plural = OPERATED[kind]
            custom, namespace = self._custom, self.namespace

            def operated(*_: Any, **kwargs: Any) -> Any:  # the namespace is bound here
                if namespace is None:
                    return custom.list_cluster_custom_object(group, version, plural, **kwargs)
                return custom.list_namespaced_custom_object(
                    group, version, namespace, plural, **kwargs
                )

            return operated
        if kind == "Job":
            if self.namespace is None:
                return self._batch.list_job_for_all_namespaces
            return self._batch.list_namespaced_job
        if self.namespace is None:
            return self._apps.list_deployment_for_all_namespaces
        return self._apps.list_namespaced_deployment

    def _args(self) -> tuple[str, ...]:
        return () if self.namespace is None else (self.namespace,)

    async def _loop(self, kind: Kind) -> None:
        version: str | None = None
        bound = log.bind(kind=kind, namespace=self.namespace or "*")
        while not self._stopping.is_set():
            checkpoint()
            try:
                if version is None:
                    version = await self._relist(kind)
                version = await self._watch(kind, version)
            except WatchGone:
                bound.info("lifecycle.watch_expired")
                version = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping.is_set():
                    break
                status = getattr(exc, "status", None)
                if status == 404 and kind in OPERATED:  # the operator is not installed
                    bound.info("lifecycle.kind_absent")
                    await asyncio.sleep(self.absent_retry)
                    continue
                error = f"{status} {getattr(exc, 'reason', '')}" if status else str(exc)
                bound.info("lifecycle.watch_dropped", error=error or type(exc).__name__)
                await asyncio.sleep(self.retry_delay)

    async def _relist(self, kind: Kind) -> str | None:
        fn = self._list_fn(kind)
        resp = await asyncio.to_thread(
            fn, *self._args(), label_selector=self.label_selector, _preload_content=False
        )
        body = json.loads(resp.data)
        for item in body.get("items") or []:
            await self._handle(kind, item)
        version = (body.get("metadata") or {}).get("resourceVersion")
        return version if isinstance(version, str) and version.isdigit() else None

    async def _watch(self, kind: Kind, version: str | None) -> str | None:
        """One watch connection; returns the newest resourceVersion seen when it ends."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        thread = threading.Thread(
            target=self._stream_thread,
            args=(kind, version, loop, queue),
            name=f"lifecycle-watch-{kind}",
            daemon=True,
        )
        thread.start()
        try:
            while True:
                what, item = await queue.get()
                if what == "event":
                    version = await self._event(kind, item, version)
                elif what == "error":
                    raise item
                else:
                    return version
        finally:
            self._stopping_thread(thread)

    def _stopping_thread(self, thread: threading.Thread) -> None:
        if not thread.is_alive():
            return
        with self._lock:
            for resp in list(self._responses):
                with contextlib.suppress(Exception):  # already closed by the thread is fine
                    resp.shutdown()

    def _stream_thread(
        self,
        kind: Kind,
        version: str | None,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[tuple[str, Any]],
    ) -> None:
        def put(what: str, item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, (what, item))

        try:
            for event in self._stream(kind, version):
                put("event", event)
        except Exception as exc:
            put("error", exc)
        else:
            put("end", None)

    def _stream(self, kind: Kind, version: str | None) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "label_selector": self.label_selector,
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self.timeout_seconds,
            "_preload_content": False,
            "_request_timeout": (10.0, self.read_timeout),
        }
        if version is not None:
            kwargs["resource_version"] = version
        resp = self._list_fn(kind)(*self._args(), **kwargs)
        with self._lock:
            self._responses.add(resp)
        self.connects += 1
        try:
            buffer = b""
            for chunk in resp.stream(amt=None, decode_content=True):
                if self._stopping.is_set():
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            with self._lock:
                self._responses.discard(resp)
            resp.release_conn()

    async def _event(self, kind: Kind, event: Mapping[str, Any], version: str | None) -> str | None:
        kind_of = event.get("type")
        obj = event.get("object") or {}
        if kind_of == "ERROR":
            if obj.get("code") == 410:
                raise WatchGone(obj.get("message"))
            raise RuntimeError(f"watch error: {obj.get('reason')}: {obj.get('message')}")
        newest = (obj.get("metadata") or {}).get("resourceVersion")
        if kind_of != "BOOKMARK":
            await self._handle(kind, obj, deleted=kind_of == "DELETED")
        return newest if isinstance(newest, str) and newest else version

    # -- transitions -------------------------------------------------------------------------

    def _matches(self, obj: Mapping[str, Any]) -> bool:
        """Client-side check of the label selector (`k=v` terms), for servers that ignore it."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for term in self.label_selector.split(","):
            key, _, value = term.partition("=")
            if key and labels.get(key.strip()) != value.strip():
                return False
        return True

    async def _handle(self, kind: Kind, obj: Mapping[str, Any], *, deleted: bool = False) -> None:
        if not self._matches(obj):
            return
        seen = observe(kind, obj)
        if seen is None:
            return
        known = self._reported.get(seen.key)
        last = seen.reported  # what an earlier watcher wrote back on the object
        if known is not None and known[0] == seen.run_id:  # else: re-labelled by a new run
            mine = known[1]
            last = mine if last is None or _ORDER[mine] >= _ORDER[last] else last
        phases = transitions(seen, last)
        if deleted and not phases:
            self._reported.pop(seen.key, None)
            return
        # Publishing and writing the phase back belong together: a stop() in between would let
        # a restarted watcher report the same transition again. So they run as their own task,
        # which a cancelled watch loop does not interrupt and stop() waits for.
        applying = asyncio.create_task(self._apply(kind, seen, phases, deleted=deleted))
        self._inflight.add(applying)
        applying.add_done_callback(self._inflight.discard)
        await asyncio.shield(applying)

    async def _apply(
        self, kind: Kind, seen: Observed, phases: Sequence[Phase], *, deleted: bool
    ) -> None:
        for phase in phases:
            data = to_lifecycle(seen, phase)
            await self.publish(data)
            log.info(
                "lifecycle.transition",
                kind=kind,
                name=seen.key[2],
                axon=data.axon,
                task=data.task,
                run_id=data.run_id,
                phase=phase,
            )
            self._reported[seen.key] = (seen.run_id, phase)
        if phases and self.write_back and not deleted:
            await self._write_back(kind, seen, phases[-1])
        if deleted:
            self._reported.pop(seen.key, None)

    async def _write_back(self, kind: Kind, seen: Observed, phase: Phase) -> None:
        _, namespace, name = seen.key
        body = {"metadata": {"annotations": {A_REPORTED: phase}}}
        try:
            if kind in OPERATED:
                group, version, plural = OPERATED[kind]
                await asyncio.to_thread(
                    self._custom.patch_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    body,
                    _preload_content=False,
                    _content_type=MERGE_PATCH,
                )
                return
            patch = (
                self._batch.patch_namespaced_job
                if kind == "Job"
                else self._apps.patch_namespaced_deployment
            )
            await asyncio.to_thread(
                patch, name, namespace, body, _preload_content=False, _content_type=MERGE_PATCH
            )
        except Exception as exc:  # the object may be gone; the in-memory record still holds
            log.info("lifecycle.write_back_failed", kind=kind, name=name, error=str(exc))


__all__ = [
    "LifecycleWatcher",
    "Observed",
    "Publish",
    "deployment_phase",
    "job_phase",
    "lifecycle_event_id",
    "observe",
    "phase_of",
    "run_event_id",
    "spark_phase",
    "tfjob_phase",
    "to_lifecycle",
    "transitions",
]
