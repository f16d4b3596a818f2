"""The Axon controller: `kubectl apply -f axon.yaml` submits the Axon, `kubectl delete` deletes it.

It lists and watches Axon custom objects of every group it knows (`ranvier.dev` and Myelin's
`myelinproj.io` and `myelin.io`, whichever CRDs are installed), validates each new generation
with the same loader as `ranvier validate`, and submits it to the bus (`AxonStore.submit`, so the
engine and executors see it exactly as if `ranvier submit` had sent it). An invalid object never
reaches the engine: its `.status` gets a `Valid=False` condition whose message names the line,
column and field of the problem, and a Warning Event says the same. Deleting the object deletes
the Axon (the executors then remove what it created).

`.status` is kept current from the bus records: observed generation, phase, the last run of each
sensor, the endpoint URL, and conditions. It is written through the status subresource, only
when it changed. Line and column refer to the object as `kubectl get axon NAME -o yaml` would
show it with only `apiVersion`, `kind`, `metadata.name`/`namespace` and `spec`, in that order
(the API server keeps no file positions), which is also how `ranvier validate` reads it.

Every submit is idempotent (same spec, same generation in the store), so a restarted controller
(or two of them) only re-announces what is already there; the watch is a plain list + watch in a
thread, resumed by listing again when it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import structlog
import yaml

from events.aio import checkpoint
from events.bus import Bus
from sensors.axons import AxonStore, AxonStoreError, StoredAxon
from sensors.loader import SpecError, load_axon_text

log = structlog.get_logger(__name__)

GROUPS: Final = ("ranvier.dev", "myelinproj.io", "myelin.io")
VERSION: Final = "v1alpha1"
PLURAL: Final = "axons"
COMPONENT: Final = "ranvier-axon-controller"
MERGE_PATCH: Final = "application/merge-patch+json"

StatusOf = Callable[[StoredAxon], Awaitable[dict[str, Any]]]
"""What `ranvier get axon NAME -o json` prints for a stored Axon (`ranvier.app.axon_status`)."""


def source_name(group: str, namespace: str, name: str) -> str:
    """The "file" an object's validation errors name: `axons.<group>/<namespace>/<name>`."""
    return f"{PLURAL}.{group}/{namespace}/{name}"


def as_document(obj: Mapping[str, Any]) -> str:
    """The object as the YAML the loader validates (what line and column refer to)."""
    meta = obj.get("metadata") or {}
    doc = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace") or "default"},
        "spec": obj.get("spec"),
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    """A status condition (`lastTransitionTime` is filled when it is written)."""
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
    }


def phase_of(status: Mapping[str, Any]) -> str:
    """The Axon's phase from `get axon -o json`: Running while any run is active, else the
    phase of the newest sensor run (Succeeded or Failed), else Submitted."""
    runs = [r for s in status.get("sensors") or [] for r in s.get("runs") or []]
    tasks = [r for t in status.get("tasks") or [] for r in t.get("runs") or []]
    if any(r.get("phase") not in ("Succeeded", "Failed") for r in [*runs, *tasks]):
        return "Running"
    if not runs:
        return "Submitted"
    newest = max(runs, key=lambda r: str(r.get("started") or ""))
    return str(newest.get("phase") or "Submitted")


def status_from(status: Mapping[str, Any], generation: int) -> dict[str, Any]:
    """The `.status` of a valid Axon object from its `get axon -o json` document."""
    sensors = []
    for sensor in status.get("sensors") or []:
        runs = sensor.get("runs") or []
        last = max(runs, key=lambda r: str(r.get("started") or ""), default=None)
        entry: dict[str, Any] = {"name": sensor.get("name")}
        if last is not None:
            entry["lastRun"] = {
                k: last.get(k) for k in ("id", "phase", "trigger", "started", "finished")
            }
        sensors.append(entry)
    urls = [d.get("url") for d in status.get("deployments") or [] if d.get("url")]
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase_of(status),
        "storedGeneration": status.get("generation"),
        "sensors": sensors,
        "conditions": [
            condition("Valid", True, "Validated", "the spec is valid"),
            condition(
                "Submitted", True, "Submitted", f"generation {status.get('generation')} on the bus"
            ),
        ],
    }
    if urls:
        out["endpoint"] = urls[0]
    return out


def invalid_status(error: SpecError, generation: int) -> dict[str, Any]:
    """The `.status` of an object that failed validation (nothing was submitted)."""
    return {
        "observedGeneration": generation,
        "phase": "Invalid",
        "conditions": [condition("Valid", False, "ValidationFailed", str(error))],
    }


@dataclass
class _Known:
    """What the controller knows of one object."""

    group: str
    namespace: str
    name: str
    uid: str
    generation: int
    valid: bool
    written: dict[str, Any] = field(default_factory=dict)


class AxonController:
    """Lists and watches Axon objects, submits/deletes them on the bus, writes their status."""

    def __init__(
        self,
        api_client: Any,
        bus: Bus,
        status_of: StatusOf,
        *,
        namespace: str | None = None,
        groups: Sequence[str] = GROUPS,
        resync: float = 2.0,
        retry_delay: float = 1.0,
        absent_retry: float = 30.0,
    ) -> None:
        """`resync`: seconds between status refreshes; `absent_retry`: between looks for a
        group whose CRD is not installed."""
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self.store = AxonStore(bus)
        self.status_of = status_of
        self.namespace = namespace
        self.groups = tuple(groups)
        self.resync = resync
        self.retry_delay = retry_delay
        self.absent_retry = absent_retry
        self.known: dict[tuple[str, str, str], _Known] = {}
        self.watching: set[str] = set()
        """Groups whose CRD is installed and listed (read by the readiness probe)."""
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Follow every group and refresh statuses until cancelled."""
        async with asyncio.TaskGroup() as group:
            for name in self.groups:
                group.create_task(self._follow(name), name=f"axon-controller-{name}")
            group.create_task(self._refresh_forever(), name="axon-controller-status")

    # -- list + watch --------------------------------------------------------------------------

    def _list(self, group: str, **kwargs: Any) -> Any:
        if self.namespace is None:
            return self._custom.list_cluster_custom_object(group, VERSION, PLURAL, **kwargs)
        return self._custom.list_namespaced_custom_object(
            group, VERSION, self.namespace, PLURAL, **kwargs
        )

    async def _follow(self, group: str) -> None:
        bound = log.bind(group=group)
        while True:
            checkpoint()
            try:
                listed = await asyncio.to_thread(self._list, group)
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    bound.info("axon_controller.crd_absent")
                    self.watching.discard(group)
                    await asyncio.sleep(self.absent_retry)
                else:
                    bound.warning("axon_controller.list_failed", error=_reason(exc))
                    await asyncio.sleep(self.retry_delay)
                continue
            self.watching.add(group)
            items = listed.get("items") or []
            present = {_key(group, item) for item in items}
            version = (listed.get("metadata") or {}).get("resourceVersion")
            try:
                for key in [k for k in self.known if k[0] == group and k not in present]:
                    await self._deleted(self.known[key])
                for item in items:
                    await self._seen(group, item)
                await self._watch(group, version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus or the API server away: list again and go on
                bound.info("axon_controller.watch_dropped", error=_reason(exc))
                await asyncio.sleep(self.retry_delay)

    async def _watch(self, group: str, version: str | None) -> None:
        """One watch stream (in a thread); returns when it ends, raises what broke it."""
        from kubernetes import watch

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        watcher: Any = watch.Watch  # untyped library: called through Any
        watcher = watcher()

        def put(what: str, item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, (what, item))

        def stream() -> None:
            kwargs: dict[str, Any] = {"timeout_seconds": 300, "allow_watch_bookmarks": True}
            if version and version.isdigit():
                kwargs["resource_version"] = version
            try:
                if self.namespace is None:
                    events = watcher.stream(
                        self._custom.list_cluster_custom_object, group, VERSION, PLURAL, **kwargs
                    )
                else:
                    events = watcher.stream(
                        self._custom.list_namespaced_custom_object,
                        group,
                        VERSION,
                        self.namespace,
                        PLURAL,
                        **kwargs,
                    )
                for event in events:
                    put("event", event)
            except Exception as exc:
                put("error", exc)
            else:
                put("end", None)

        thread = threading.Thread(target=stream, name=f"axon-watch-{group}", daemon=True)
        thread.start()
        try:
            while True:
                what, item = await queue.get()
                if what == "error":
                    raise item
                if what == "end":
                    return
                kind, obj = item.get("type"), item.get("raw_object") or item.get("object") or {}
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {obj.get('reason')}: {obj.get('message')}")
                if kind == "DELETED":
                    known = self.known.get(_key(group, obj))
                    if known is not None and known.uid == _uid(obj):
                        await self._deleted(known)
                elif kind in ("ADDED", "MODIFIED"):
                    await self._seen(group, obj)
        finally:
            watcher.stop()

    # -- reacting --------------------------------------------------------------------------------

    async def _seen(self, group: str, obj: Mapping[str, Any]) -> None:
        """An object was listed, added or modified: validate and submit a new generation."""
        meta = obj.get("metadata") or {}
        key = _key(group, obj)
        generation = int(meta.get("generation") or 1)
        known = self.known.get(key)
        if known is not None and known.uid == _uid(obj) and known.generation == generation:
            return  # a status write or a relist: nothing new
        async with self._lock:
            await self._submit(group, obj, generation)

    async def _submit(self, group: str, obj: Mapping[str, Any], generation: int) -> None:
        _, ns, name = key = _key(group, obj)
        where = source_name(group, ns, name)
        known = _Known(group, ns, name, _uid(obj), generation, valid=False)
        try:
            axon = load_axon_text(as_document(obj), where)
        except SpecError as exc:
            self.known[key] = known
            log.warning("axon_controller.invalid", object=where, error=str(exc))
            await self._write_status(known, invalid_status(exc, generation))
            await self._event(obj, "Warning", "Invalid", str(exc))
            return
        stored = await self.store.submit(axon)
        known.valid = True
        self.known[key] = known
        log.info("axon_controller.submitted", object=where, generation=stored.generation)
        await self._event(
            obj,
            "Normal",
            "Submitted",
            f"generation {generation} submitted (stored {stored.generation})",
        )
        try:
            await self._refresh(known)
        except Exception as exc:  # submitted all the same: the status loop writes it later
            log.warning("axon_controller.status_failed", axon=known.name, error=_reason(exc))

    async def _deleted(self, known: _Known) -> None:
        self.known.pop((known.group, known.namespace, known.name), None)
        if not known.valid:
            return
        try:
            await self.store.delete(known.namespace, known.name)
        except AxonStoreError as exc:
            log.info("axon_controller.delete_unknown", axon=known.name, error=str(exc))
            return
        log.info("axon_controller.deleted", namespace=known.namespace, axon=known.name)

    # -- status -------------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            for known in list(self.known.values()):
                if known.valid:
                    try:
                        await self._refresh(known)
                    except Exception as exc:  # one object's status must not stop the others'
                        log.warning(
                            "axon_controller.status_failed", axon=known.name, error=_reason(exc)
                        )

    async def _refresh(self, known: _Known) -> None:
        stored = await self.store.get(known.namespace, known.name)
        if stored is None or stored.deleted:
            return
        document = await self.status_of(stored)
        await self._write_status(known, status_from(document, known.generation))

    async def _write_status(self, known: _Known, status: dict[str, Any]) -> None:
        if status == known.written:
            return
        stamped = {
            **status,
            "conditions": [
                {**c, "lastTransitionTime": _now()} for c in status.get("conditions", [])
            ],
        }
        try:
            await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object_status,
                known.group,
                VERSION,
                known.namespace,
                PLURAL,
                known.name,
                {"status": stamped},
                _content_type=MERGE_PATCH,
            )
        except Exception as exc:  # gone meanwhile, or no rights: the next refresh tries again
            log.info("axon_controller.status_not_written", axon=known.name, error=_reason(exc))
            return
        known.written = status

    async def _event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the object (`kubectl describe axon NAME` shows it)."""
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        now = _now()
        body: Any = {  # a plain body: the client sends dicts as they are
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{secrets.token_hex(8)}", "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": ns,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await asyncio.to_thread(
                self._core.create_namespaced_event, ns, body, _preload_content=False
            )
        except Exception as exc:  # an Event is informative: never fail the controller for it
            log.info("axon_controller.event_not_written", reason=reason, error=_reason(exc))


def _key(group: str, obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return group, str(meta.get("namespace") or "default"), str(meta.get("name"))


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _reason(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return f"{status} {getattr(exc, 'reason', '')}".strip() if status else (str(exc) or repr(exc))


__all__ = [
    "GROUPS",
    "AxonController",
    "StatusOf",
    "as_document",
    "invalid_status",
    "phase_of",
    "source_name",
    "status_from",
]
