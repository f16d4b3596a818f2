"""The PURE rules engine: (state, event, now) in, decisions and action requests out.

Everything ranvier decides happens here, as plain functions over plain data: no I/O, no clock
reads (`now` is always an argument), no randomness. That is what makes a dry-run replay give the
same answers as the live runtime, and what lets the runtime retry a batch after a crash and get
the same action keys: `sensor_run_id` is a uuid5 of the event id and the sensor, and an action's
idempotency key is derived from it.

Shape (kopf's causes: data in, decisions out):

* `EngineState` holds, per Axon, the compiled spec with its indexes (never persisted; rebuilt
  from the spec) and the mutable state: alert phases and metric values, conditions' values,
  active and recently finished sensor runs, recently seen lifecycle edges, maxRuns windows.
  `dump_axon()` / `load_axon()` turn one Axon's state into canonical JSON and back, because the
  runtime stores one KV key per Axon with compare-and-set.
* `submit()` applies a new spec generation (or a deletion), `step()` applies one event,
  `tick()` applies the passing of time (an Alert's `for` elapsing, `keepFiringFor` or a
  cooldown running out). Each returns a `StepResult`: decision records and action requests in a
  deterministic order (spec order of sensors and triggers).
* These functions MUTATE the `EngineState` in place (for speed); the runtime keeps its own copy
  of the persisted state and rebuilds from KV when a batch fails. Their result depends only on
  (state, arguments): the same state and event always give the same result.

Indexes, built on submit, so an event's cost does not grow with the sensors it
cannot concern: lifecycle triggers by (task, phase); Alert triggers and Metric conditions by query
key and by (sensor, name); Rest and Calendar by sensor; active runs by sensor_run_id.

Decision records: an event yields one record per (sensor, trigger) it could concern, and one per
sensor run it advances, so "why did (not) this fire" always has an answer. An event that concerns
nothing (another Axon, a metric nobody reads) yields none; an event that cannot be read (unknown
type, invalid payload) yields no record but `StepResult.ignored` saying why (a decision needs an
Axon and a sensor, which such an event may not have). `fired` is true exactly when the record
requested actions (a run started, advanced to its next step, or retried an action).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple, TypeVar, cast

from pydantic import BaseModel, ValidationError

from events.errors import RanvierError
from events.model import (
    AXON,
    CALENDAR,
    LIFECYCLE,
    METRIC,
    REST,
    TICK,
    ActionRequest,
    AxonData,
    CalendarData,
    DecisionData,
    Event,
    LifecycleData,
    MetricData,
    PlannedAction,
    RestData,
    TickData,
    canonical_json,
    format_time,
)
from sensors.expr import Condition, ExprError, bare_template, parse_condition
from sensors.spec import (
    ActionKind,
    ActionSpec,
    AlertTrigger,
    Axon,
    CalendarTrigger,
    LifecycleTrigger,
    RestTrigger,
    Sensor,
)

__all__ = [
    "FINISHED_RUNS_LIMIT",
    "SEEN_EDGES_LIMIT",
    "STATE_VERSION",
    "EndedRun",
    "EngineError",
    "EngineState",
    "RunAction",
    "RunView",
    "StepResult",
    "axon_key",
    "next_deadline",
    "sensor_run_id",
    "step",
    "submit",
    "tick",
]

STATE_VERSION: Final = 1
AXON_DELETED: Final = "Axon deleted"
"""Why an Axon's runs ended and its sensors' state went, when it is deleted."""
SEEN_EDGES_LIMIT: Final = 1024
"""Lifecycle edges (task, run, phase) remembered per Axon for edge-triggering; oldest go first."""
FINISHED_RUNS_LIMIT: Final = 512
"""Finished sensor runs remembered per Axon, to say "already finished" rather than "unknown"."""

_RUN_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://ranvier.dev/sensor-run")
_RUN_NAMESPACE_BYTES: Final = _RUN_NAMESPACE.bytes
_EDGE_SEP: Final = "\x1f"  # unit separator: cannot occur in task names, rarely in run ids
_encode: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
"""`canonical_json` without the bytes: dumps are assembled from these pieces."""

AlertPhase = Literal["inactive", "pending", "firing"]
RunPhase = Literal["Running", "Succeeded", "Failed"]
ActionPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class EngineError(RanvierError, ValueError):
    """A spec or a stored state the engine cannot use as it is."""


def axon_key(namespace: str, name: str) -> str:
    """The key one Axon's state is stored under: `namespace/name`."""
    return f"{namespace}/{name}"


def sensor_run_id(event_id: str, sensor: str, trigger: str | None = None) -> str:
    """The run a firing starts: uuid5 of (event id, sensor), so reprocessing gives the same run.

    `trigger` is added only for firings that time causes (an Alert's `for` elapsing on a tick):
    their event is the one that started the pending episode, which two triggers can share.
    """
    name = f"{event_id}\n{sensor}" if trigger is None else f"{event_id}\n{sensor}\n{trigger}"
    # uuid.uuid5, inlined: the UUID object is a tenth of a step's cost and is not needed.
    sha1 = hashlib.sha1(_RUN_NAMESPACE_BYTES + name.encode(), usedforsecurity=False)
    digest = bytearray(sha1.digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class EndedRun(NamedTuple):
    """A sensor run that ended (`StepResult.ended`)."""

    namespace: str
    axon: str
    sensor: str
    run_id: str
    phase: RunPhase
    reason: str


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one submit/step/tick decided: records to publish, actions to request, keys to write."""

    decisions: tuple[DecisionData, ...] = ()
    actions: tuple[ActionRequest, ...] = ()
    touched: tuple[str, ...] = ()
    """Axon keys (`axon_key`) whose state changed: write these back."""
    deleted: tuple[str, ...] = ()
    """Axon keys whose state is gone (the Axon was deleted): delete these."""
    ignored: str | None = None
    """Why the event was ignored as a whole (unknown type, invalid payload, stale generation)."""
    started: tuple[str, ...] = ()
    """Ids of the sensor runs this call started."""
    ended: tuple[EndedRun, ...] = ()
    """The sensor runs this call ended, whichever way (steps done or failed, replaced by a new
    run, their sensor removed or its tasks changed): some end with no decision naming them."""


@dataclass(frozen=True, slots=True)
class RunAction:
    """One action of a sensor run as the engine knows it (`RunView.actions`)."""

    step: int
    index: int
    kind: ActionKind
    task: str
    attempt: int | None
    """The current attempt; None for the actions of an earlier step (they all Succeeded)."""
    phase: ActionPhase


@dataclass(frozen=True, slots=True)
class RunView:
    """A sensor run as the engine knows it (`EngineState.run`): active, or recently finished."""

    id: str
    phase: RunPhase
    reason: str
    """Why the run finished ("" while it runs)."""
    sensor: str | None = None
    """These fields are known while the run is active; a finished run keeps only its outcome."""
    trigger: str | None = None
    started: datetime | None = None
    actions: tuple[RunAction, ...] = ()
    """Every action of steps 0 to the current one, in (step, index) order."""


# ---------------------------------------------------------------------------------------------
# Small pure helpers


def _seconds(now: datetime) -> float:
    """Seconds since the epoch; naive datetimes are taken as UTC."""
    return (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).timestamp()


def _when(seconds: float) -> str:
    return format_time(datetime.fromtimestamp(seconds, UTC))


def _dur(seconds: float) -> str:
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms" if millis < 1000 else f"{seconds:g}s"
    whole = millis // 1000
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _num(value: float) -> str:
    return repr(value)


def _digest(value: Any) -> str:
    return hashlib.blake2b(canonical_json(value), digest_size=12).hexdigest()


_M = TypeVar("_M", bound=BaseModel)


def _build(cls: type[_M], values: dict[str, Any]) -> _M:
    """A model instance from values the engine produced itself, every field given.

    `model_construct` is a third of the cost of a step; this skips its per-field defaults
    bookkeeping and sets exactly what it would set. The tests compare these instances with
    validated ones (`test_engine_models.py`), so a pydantic change that broke it would show.
    """
    obj = _new(cls)  # BaseModel has no __new__ of its own
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(values))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


_new: Final = object.__new__
_set: Final = object.__setattr__


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------
# The compiled spec: what the engine derives once per generation (never persisted)


@dataclass(frozen=True, slots=True)
class _Action:
    """One action of a step, with its request parameters prepared."""

    kind: ActionKind
    task: str
    retry_limit: int
    backoff: float
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Alert:
    """An Alert trigger with its conditions parsed."""

    name: str
    condition: Condition
    resolve: Condition | None
    for_: float
    keep_firing_for: float
    cooldown: float
    keys: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Cond:
    """A Metric condition with its condition parsed."""

    name: str
    condition: Condition
    keys: frozenset[str]
    task: str | None = None
    metric_names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Sensor:
    """A sensor as the engine uses it."""

    name: str
    position: int
    concurrency: str
    max_runs: tuple[int, float] | None
    steps: tuple[tuple[_Action, ...], ...]
    triggers: tuple[str, ...]
    alerts: Mapping[str, _Alert]
    rest: tuple[str, ...]
    calendar: tuple[str, ...]
    conditions: tuple[_Cond, ...]
    trigger_prints: Mapping[str, str]
    condition_prints: Mapping[str, str]
    tasks_print: str
    max_runs_print: str


@dataclass(frozen=True, slots=True)
class _Target:
    """Something a metric value feeds: an Alert trigger or a Metric condition of a sensor."""

    sensor: _Sensor
    name: str
    alert: _Alert | None
    cond: _Cond | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One generation of an Axon's spec and its indexes."""

    name: str
    namespace: str
    key: str
    digest: str
    sensors: Mapping[str, _Sensor]
    order: tuple[_Sensor, ...]
    triggerless: tuple[_Sensor, ...]
    by_lifecycle: Mapping[tuple[str, str], tuple[tuple[_Sensor, str], ...]]
    by_metric: Mapping[str, tuple[_Target, ...]]
    by_target: Mapping[tuple[str, str], tuple[_Target, ...]]
    by_task_metrics: Mapping[str, tuple[_Target, ...]]


def _parse(text: str, where: str) -> Condition:
    try:
        return parse_condition(text)
    except ExprError as exc:
        raise EngineError(f"{where}: {exc}", hint="run `ranvier validate` on the Axon") from None


def _action(spec: ActionSpec) -> _Action:
    params: dict[str, Any] = {}
    if spec.env:
        params["env"] = [_dump(e) for e in spec.env]
    if spec.deployer is not None:
        params["deployer"] = _dump(spec.deployer)
    retry = spec.retry
    return _Action(
        kind=spec.kind,
        task=spec.task_name,
        retry_limit=retry.limit if retry is not None else 0,
        backoff=retry.backoff if retry is not None else 0.0,
        params=params,
    )


def _compile_sensor(sensor: Sensor, position: int) -> _Sensor:
    where = f"sensor {sensor.name!r}"
    alerts: dict[str, _Alert] = {}
    rest: list[str] = []
    calendar: list[str] = []
    for trigger in sensor.triggers:
        if isinstance(trigger, AlertTrigger):
            cond = _parse(trigger.condition, f"{where} trigger {trigger.name!r}")
            resolve = (
                _parse(trigger.resolve, f"{where} trigger {trigger.name!r} resolve")
                if trigger.resolve is not None
                else None
            )
            keys = {q.key for q in cond.queries}
            if resolve is not None:
                keys.update(q.key for q in resolve.queries)
            alerts[trigger.name] = _Alert(
                name=trigger.name,
                condition=cond,
                resolve=resolve,
                for_=trigger.for_,
                keep_firing_for=trigger.keep_firing_for,
                cooldown=trigger.cooldown,
                keys=frozenset(keys),
            )
        elif isinstance(trigger, RestTrigger):
            rest.append(trigger.name)
        elif isinstance(trigger, CalendarTrigger):
            calendar.append(trigger.name)
    conditions = []
    for c in sensor.conditions:
        parsed = _parse(c.condition, f"{where} condition {c.name!r}")
        names = {q.key: bare_template(q) or q.key for q in parsed.queries}
        conditions.append(
            _Cond(c.name, parsed, frozenset(q.key for q in parsed.queries), c.task, names)
        )
    return _Sensor(
        name=sensor.name,
        position=position,
        concurrency=sensor.concurrency,
        max_runs=(sensor.max_runs.count, sensor.max_runs.per) if sensor.max_runs else None,
        steps=tuple(tuple(_action(a) for a in group) for group in sensor.steps),
        triggers=tuple(t.name for t in sensor.triggers),
        alerts=alerts,
        rest=tuple(rest),
        calendar=tuple(calendar),
        conditions=tuple(conditions),
        trigger_prints={t.name: _digest(_dump(t)) for t in sensor.triggers},
        condition_prints={c.name: _digest(_dump(c)) for c in sensor.conditions},
        tasks_print=_digest([_dump(a) for group in sensor.steps for a in group]),
        max_runs_print=_digest(_dump(sensor.max_runs) if sensor.max_runs else None),
    )


def _compile(axon: Axon) -> _Compiled:
    name, namespace = axon.metadata.name, axon.metadata.namespace
    order = tuple(_compile_sensor(s, i) for i, s in enumerate(axon.spec.sensors))
    by_lifecycle: dict[tuple[str, str], list[tuple[_Sensor, str]]] = {}
    by_metric: dict[str, list[_Target]] = {}
    by_target: dict[tuple[str, str], list[_Target]] = {}
    by_task_metrics: dict[str, list[_Target]] = {}
    for compiled, sensor in zip(order, axon.spec.sensors, strict=True):
        for trigger in sensor.triggers:
            if isinstance(trigger, LifecycleTrigger):
                by_lifecycle.setdefault((trigger.task, trigger.condition), []).append(
                    (compiled, trigger.name)
                )
        targets = [_Target(compiled, a.name, a, None) for a in compiled.alerts.values()]
        targets += [_Target(compiled, c.name, None, c) for c in compiled.conditions]
        for target in targets:
            if target.cond is not None and target.cond.task is not None:
                by_task_metrics.setdefault(target.cond.task, []).append(target)
                by_target.setdefault((compiled.name, target.name), []).append(target)
                continue
            keys = target.alert.keys if target.alert else cast(_Cond, target.cond).keys
            for key in sorted(keys):
                by_metric.setdefault(key, []).append(target)
            by_target.setdefault((compiled.name, target.name), []).append(target)
    return _Compiled(
        name=name,
        namespace=namespace,
        key=axon_key(namespace, name),
        digest=_digest(_dump(axon)),
        sensors={s.name: s for s in order},
        order=order,
        triggerless=tuple(s for s in order if not s.triggers),
        by_lifecycle={k: tuple(v) for k, v in by_lifecycle.items()},
        by_metric={k: tuple(v) for k, v in by_metric.items()},
        by_target={k: tuple(v) for k, v in by_target.items()},
        by_task_metrics={k: tuple(v) for k, v in by_task_metrics.items()},
    )


# ---------------------------------------------------------------------------------------------
# Mutable state (JSON-serialisable per Axon)


@dataclass(slots=True)
class _AlertState:
    """Where one Alert trigger is in inactive -> pending -> firing, and the values it read."""

    phase: AlertPhase = "inactive"
    since: float | None = None
    since_event: str | None = None
    clear_since: float | None = None
    clear_event: str | None = None
    held_until: float | None = None
    last_fired: float | None = None
    values: dict[str, float] = field(default_factory=dict)

    def is_default(self) -> bool:
        return self.phase == "inactive" and self.last_fired is None and not self.values

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "values": self.values}
        for name in ("since", "since_event", "clear_since", "clear_event", "held_until"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.last_fired is not None:
            out["last_fired"] = self.last_fired
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _AlertState:
        return cls(
            phase=data["phase"],
            since=data.get("since"),
            since_event=data.get("since_event"),
            clear_since=data.get("clear_since"),
            clear_event=data.get("clear_event"),
            held_until=data.get("held_until"),
            last_fired=data.get("last_fired"),
            values={str(k): float(v) for k, v in data.get("values", {}).items()},
        )


@dataclass(slots=True)
class _ActionState:
    """One action of a run's current step."""

    attempt: int = 1
    phase: ActionPhase = "Pending"


@dataclass(slots=True)
class _RunState:
    """An active sensor run: which step it is at and how its actions are doing."""

    id: str
    sensor: str
    trigger: str | None
    event_id: str
    generation: int
    started: float
    step: int
    actions: list[_ActionState]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sensor": self.sensor,
            "trigger": self.trigger,
            "event_id": self.event_id,
            "generation": self.generation,
            "started": self.started,
            "step": self.step,
            "actions": [[a.attempt, a.phase] for a in self.actions],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _RunState:
        return cls(
            id=data["id"],
            sensor=data["sensor"],
            trigger=data["trigger"],
            event_id=data["event_id"],
            generation=data["generation"],
            started=data["started"],
            step=data["step"],
            actions=[_ActionState(int(a), p) for a, p in data["actions"]],
        )


@dataclass(slots=True)
class _SensorState:
    """One sensor's state: alerts, condition values, active runs, maxRuns window."""

    fired_generation: int | None = None
    alerts: dict[str, _AlertState] = field(default_factory=dict)
    conditions: dict[str, dict[str, float]] = field(default_factory=dict)
    active: dict[str, None] = field(default_factory=dict)  # ordered set of run ids
    starts: list[float] = field(default_factory=list)

    def alert(self, name: str) -> _AlertState:
        st = self.alerts.get(name)
        if st is None:
            st = self.alerts[name] = _AlertState()
        return st

    def to_json(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        if self.fired_generation is not None:
            out["fired_generation"] = self.fired_generation
        alerts = {k: v.to_json() for k, v in self.alerts.items() if not v.is_default()}
        if alerts:
            out["alerts"] = alerts
        conditions = {k: v for k, v in self.conditions.items() if v}
        if conditions:
            out["conditions"] = conditions
        if self.active:
            out["active"] = list(self.active)
        if self.starts:
            out["starts"] = self.starts
        return out or None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _SensorState:
        return cls(
            fired_generation=data.get("fired_generation"),
            alerts={k: _AlertState.from_json(v) for k, v in data.get("alerts", {}).items()},
            conditions={
                k: {str(q): float(x) for q, x in v.items()}
                for k, v in data.get("conditions", {}).items()
            },
            active=dict.fromkeys(str(r) for r in data.get("active", [])),
            starts=[float(t) for t in data.get("starts", [])],
        )


class _Parts:
    """Encoded `"key":{...}` pieces, joined with commas in sorted key order, cached.

    The pieces are kept in buckets by the first two characters of their key (truncation keeps
    order, so the buckets in sorted order, each sorted, are all the keys sorted), and each
    bucket's join is cached: a dump after a few changes re-joins a few buckets, not an Axon's
    thousands of runs (in the latency bench the join of every run was most of a dump).
    """

    __slots__ = ("_buckets", "_joined", "_names")

    def __init__(self) -> None:
        self._buckets: dict[str, dict[str, str]] = {}
        self._joined: dict[str, str] = {}  # bucket -> its pieces joined (absent: stale)
        self._names: list[str] | None = None  # sorted bucket names (None: stale)

    def clear(self) -> None:
        self._buckets.clear()
        self._joined.clear()
        self._names = None

    def set(self, key: str, part: str | None) -> None:
        """Set (or with None, remove) the piece of `key`."""
        name = key[:2]
        bucket = self._buckets.get(name)
        if part is None:
            if bucket is None or bucket.pop(key, None) is None:
                return
            if not bucket:
                del self._buckets[name]
                self._names = None
        else:
            if bucket is None:
                bucket = self._buckets[name] = {}
                self._names = None
            bucket[key] = part
        self._joined.pop(name, None)

    def pieces(self) -> list[str]:
        """Each bucket's pieces joined, in order: joined with commas, all the pieces sorted."""
        if self._names is None:
            self._names = sorted(self._buckets)
        out: list[str] = []
        for name in self._names:
            text = self._joined.get(name)
            if text is None:
                bucket = self._buckets[name]
                text = self._joined[name] = ",".join([bucket[k] for k in sorted(bucket)])
            out.append(text)
        return out


def _commas(pieces: list[str]) -> list[str]:
    """`pieces` with "," between them (their concatenation is `",".join(pieces)`)."""
    out = [","] * (2 * len(pieces) - 1) if pieces else []
    out[::2] = pieces
    return out


@dataclass(slots=True)
class _AxonState:
    """Everything the engine knows about one Axon: its compiled spec and its mutable state."""

    spec: _Compiled
    generation: int
    sensors: dict[str, _SensorState]
    runs: dict[str, _RunState] = field(default_factory=dict)
    finished: list[tuple[str, str, str]] = field(default_factory=list)
    finished_index: dict[str, tuple[str, str]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    seen_index: set[str] = field(default_factory=set)
    # Dump cache: the encoded `"name":{...}` piece of each sensor and run, re-encoded only when
    # marked dirty (every mutation goes through `sensor_state`, `run_changed` or `finish`), so
    # a dump costs what changed, not the size of the Axon. `encoded` False: rebuild them all.
    encoded: bool = False
    sensor_parts: _Parts = field(default_factory=_Parts)
    run_parts: _Parts = field(default_factory=_Parts)
    dirty_sensors: set[str] = field(default_factory=set)
    dirty_runs: set[str] = field(default_factory=set)
    # Sensors whose alerts may wait on time (a superset: `_armed` drops those that do not).
    # None: not known yet, every sensor with an Alert trigger. `_alert` adds to it.
    timed: set[str] | None = None

    def sensor_state(self, name: str) -> _SensorState:
        """The state of a sensor, to read or change (it is re-encoded on the next dump)."""
        self.dirty_sensors.add(name)
        st = self.sensors.get(name)
        if st is None:
            st = self.sensors[name] = _SensorState()
        return st

    def alert_state(self, sensor: str, alert: str) -> _AlertState:
        """The state of an Alert trigger, to read or change (it may then wait on time)."""
        if self.timed is not None:
            self.timed.add(sensor)
        return self.sensor_state(sensor).alert(alert)

    def run_changed(self, run_id: str) -> None:
        """Mark a run (added, changed or removed) for re-encoding on the next dump."""
        self.dirty_runs.add(run_id)

    def finish(self, run: _RunState, phase: RunPhase, why: str) -> None:
        self.runs.pop(run.id, None)
        self.dirty_runs.add(run.id)
        self.dirty_sensors.add(run.sensor)
        st = self.sensors.get(run.sensor)
        if st is not None:
            st.active.pop(run.id, None)
        self.finished.append((run.id, phase, why))
        self.finished_index[run.id] = (phase, why)
        if len(self.finished) > FINISHED_RUNS_LIMIT:
            old = self.finished.pop(0)
            self.finished_index.pop(old[0], None)

    def see(self, edge: str) -> bool:
        """Remember a lifecycle edge; False when it was already seen."""
        if edge in self.seen_index:
            return False
        self.seen.append(edge)
        self.seen_index.add(edge)
        if len(self.seen) > SEEN_EDGES_LIMIT:
            self.seen_index.discard(self.seen.pop(0))
        return True

    def dump_parts(self) -> list[str]:
        """Canonical JSON of `to_json()`, byte for byte once joined, re-encoding only dirty
        parts; in pieces (cached, immutable strings): joining them is left to the caller."""
        if not self.encoded:
            self.sensor_parts.clear()
            self.run_parts.clear()
            self.dirty_sensors.update(self.sensors)
            self.dirty_runs.update(self.runs)
            self.encoded = True
        if self.dirty_sensors:
            for name in self.dirty_sensors:
                st = self.sensors.get(name)
                dumped = st.to_json() if st is not None else None
                part = None if dumped is None else f"{_encode(name)}:{_encode(dumped)}"
                self.sensor_parts.set(name, part)
            self.dirty_sensors.clear()
        if self.dirty_runs:
            for rid in self.dirty_runs:
                run = self.runs.get(rid)
                part = None if run is None else f"{_encode(rid)}:{_encode(run.to_json())}"
                self.run_parts.set(rid, part)
            self.dirty_runs.clear()
        # The keys of `to_json()` in sorted order, as canonical JSON has them.
        return [
            f'{{"axon":{_encode(self.spec.name)},"finished":{_encode(self.finished)},'
            f'"generation":{_encode(self.generation)},"namespace":{_encode(self.spec.namespace)},'
            '"runs":{',
            *_commas(self.run_parts.pieces()),
            f'}},"seen":{_encode(self.seen)},"sensors":{{',
            *_commas(self.sensor_parts.pieces()),
            f'}},"spec":{_encode(self.spec.digest)},"version":{_encode(STATE_VERSION)}}}',
        ]

    def to_json(self) -> dict[str, Any]:
        sensors = {}
        for name, st in self.sensors.items():
            dumped = st.to_json()
            if dumped is not None:
                sensors[name] = dumped
        return {
            "version": STATE_VERSION,
            "axon": self.spec.name,
            "namespace": self.spec.namespace,
            "generation": self.generation,
            "spec": self.spec.digest,
            "sensors": sensors,
            "runs": {k: v.to_json() for k, v in self.runs.items()},
            "finished": [list(f) for f in self.finished],
            "seen": self.seen,
        }


class EngineState:
    """All sensor, trigger and run state of the Axons the engine knows, keyed by `axon_key`."""

    __slots__ = ("_axons",)

    def __init__(self) -> None:
        self._axons: dict[str, _AxonState] = {}

    def keys(self) -> tuple[str, ...]:
        """The Axons known, as sorted `axon_key`s."""
        return tuple(sorted(self._axons))

    def generation(self, namespace: str, name: str) -> int | None:
        """The generation applied for an Axon, or None if the engine does not know it."""
        ax = self._axons.get(axon_key(namespace, name))
        return ax.generation if ax is not None else None

    def dump_axon(self, axon: Axon | str) -> bytes:
        """One Axon's state as canonical JSON (sorted keys, compact): what the runtime stores."""
        key = (
            axon if isinstance(axon, str) else axon_key(axon.metadata.namespace, axon.metadata.name)
        )
        return "".join(self.dump_axon_parts(key)).encode()

    def dump_axon_parts(self, key: str) -> list[str]:
        """`dump_axon(key)` as pieces of text: `"".join(pieces).encode() == dump_axon(key)`.

        The pieces are cached immutable strings, so a caller may join and encode them later or
        in another thread (the runtime compresses an Axon's megabytes of state that way, off
        its event loop) while this state goes on changing.
        """
        ax = self._axons.get(key)
        if ax is None:
            raise EngineError(f"no state for Axon {key!r}", hint="submit it first")
        return ax.dump_parts()

    def run(self, key: str, run_id: str) -> RunView | None:
        """A sensor run of the Axon `key` (`axon_key`): active, recently finished, or None."""
        ax = self._axons.get(key)
        if ax is None:
            return None
        run = ax.runs.get(run_id)
        if run is None:
            done = ax.finished_index.get(run_id)
            if done is None:
                return None
            return RunView(id=run_id, phase=cast(RunPhase, done[0]), reason=done[1])
        actions: list[RunAction] = []
        sensor = ax.spec.sensors.get(run.sensor)
        if sensor is not None:
            for index in range(run.step):
                actions += [
                    RunAction(index, i, a.kind, a.task, None, "Succeeded")
                    for i, a in enumerate(sensor.steps[index])
                ]
            group = sensor.steps[run.step]
            actions += [
                RunAction(run.step, i, a.kind, a.task, st.attempt, st.phase)
                for i, (a, st) in enumerate(zip(group, run.actions, strict=False))
            ]
        return RunView(
            id=run.id,
            phase="Running",
            reason="",
            sensor=run.sensor,
            trigger=run.trigger,
            started=datetime.fromtimestamp(run.started, UTC),
            actions=tuple(actions),
        )

    def load_axon(self, axon: Axon, data: bytes) -> None:
        """Restore one Axon's state from `dump_axon` bytes, with indexes rebuilt from `axon`.

        `axon` must be the spec the state was dumped with (its digest is checked): load the
        generation the state names, then `submit` any newer one so changes are reconciled.
        """
        spec = _compile(axon)
        try:
            raw = json.loads(data)
            if raw.get("version") != STATE_VERSION:
                raise EngineError(
                    f"state of Axon {spec.key!r} has version {raw.get('version')!r}, "
                    f"this engine reads version {STATE_VERSION}"
                )
            if raw["spec"] != spec.digest:
                raise EngineError(
                    f"state of Axon {spec.key!r} (generation {raw['generation']}) was written "
                    "for a different spec",
                    hint="load it with that generation's spec, then submit the new one",
                )
            ax = _AxonState(
                spec=spec,
                generation=int(raw["generation"]),
                sensors={k: _SensorState.from_json(v) for k, v in raw["sensors"].items()},
                runs={k: _RunState.from_json(v) for k, v in raw["runs"].items()},
                finished=[(str(a), str(b), str(c)) for a, b, c in raw["finished"]],
                seen=[str(e) for e in raw["seen"]],
            )
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, EngineError):
                raise
            raise EngineError(f"state of Axon {spec.key!r} is unreadable: {exc}") from None
        ax.finished_index = {f[0]: (f[1], f[2]) for f in ax.finished}
        ax.seen_index = set(ax.seen)
        self._axons[spec.key] = ax


# ---------------------------------------------------------------------------------------------
# One call's output


class _Out:
    """Collects one call's decisions and actions, in the order they were decided."""

    __slots__ = ("actions", "decisions", "ended", "fired", "now", "started", "touched")

    def __init__(self, now: float) -> None:
        self.now = now
        self.decisions: list[DecisionData] = []
        self.actions: list[ActionRequest] = []
        self.touched: dict[str, None] = {}
        self.fired: set[tuple[str, str, str]] = set()
        self.started: list[str] = []
        self.ended: list[EndedRun] = []

    def end(self, ax: _AxonState, run: _RunState, phase: RunPhase, why: str) -> None:
        """End a run (`_AxonState.finish`) and report it in the result."""
        ax.finish(run, phase, why)
        self.ended.append(EndedRun(ax.spec.namespace, ax.spec.name, run.sensor, run.id, phase, why))

    def decide(
        self,
        ax: _AxonState,
        event_id: str,
        sensor: str,
        trigger: str | None,
        *,
        matched: bool,
        fired: bool,
        reason: str,
        run_id: str | None = None,
        planned: Sequence[PlannedAction] = (),
    ) -> None:
        self.touched[ax.spec.key] = None
        self.decisions.append(
            _build(
                DecisionData,
                {
                    "axon": ax.spec.name,
                    "namespace": ax.spec.namespace,
                    "event_id": event_id,
                    "sensor": sensor,
                    "trigger": trigger,
                    "matched": matched,
                    "fired": fired,
                    "reason": reason,
                    "sensor_run_id": run_id,
                    "actions": list(planned),
                },
            )
        )

    def result(self, deleted: Sequence[str] = (), ignored: str | None = None) -> StepResult:
        return StepResult(
            decisions=tuple(self.decisions),
            actions=tuple(self.actions),
            touched=tuple(k for k in self.touched if k not in deleted),
            deleted=tuple(deleted),
            ignored=ignored,
            started=tuple(self.started),
            ended=tuple(self.ended),
        )


def _request(
    out: _Out, ax: _AxonState, run: _RunState, *, index: int, action: _Action, attempt: int
) -> PlannedAction:
    not_before = None
    if attempt > 1 and action.backoff > 0:
        not_before = datetime.fromtimestamp(out.now + action.backoff, UTC)
    out.actions.append(
        _build(
            ActionRequest,
            {
                "axon": ax.spec.name,
                "namespace": ax.spec.namespace,
                "sensor": run.sensor,
                "sensor_run_id": run.id,
                "generation": run.generation,
                "step": run.step,
                "index": index,
                "attempt": attempt,
                "kind": action.kind,
                "task": action.task,
                "params": dict(action.params),
                "not_before": not_before,
            },
        )
    )
    return _build(PlannedAction, {"kind": action.kind, "task": action.task, "step": run.step})


def _start_step(out: _Out, ax: _AxonState, sensor: _Sensor, run: _RunState) -> list[PlannedAction]:
    group = sensor.steps[run.step]
    run.actions = [_ActionState() for _ in group]
    return [_request(out, ax, run, index=i, action=a, attempt=1) for i, a in enumerate(group)]


# ---------------------------------------------------------------------------------------------
# Firing a sensor: conditions (AND), concurrency, maxRuns, then a new run


def _conditions_block(sensor: _Sensor, st: _SensorState) -> str | None:
    for cond in sensor.conditions:
        values = st.conditions.get(cond.name, {})
        verdict = cond.condition.evaluate(values)
        if verdict is True:
            continue
        if verdict is None:
            missing = sorted(k for k in cond.keys if k not in values)
            what = f"no value for {', '.join(missing)}" if missing else "value unknown"
            return f"condition {cond.name!r} is unknown ({what})"
        shown = ", ".join(f"{k}={_num(values[k])}" for k in sorted(cond.keys) if k in values)
        return f"condition {cond.name!r} is false ({cond.condition.text}; {shown})"
    return None


def _fire(
    out: _Out,
    ax: _AxonState,
    sensor: _Sensor,
    *,
    trigger: str | None,
    event_id: str,
    run_id: str,
    why: str,
    decided_by: str | None = None,
) -> None:
    """Try to start a run of `sensor`; record one decision either way (under `decided_by`,
    the event being stepped, when that is not the cause `event_id`)."""
    st = ax.sensor_state(sensor.name)
    fired_key = (ax.spec.key, sensor.name, event_id)
    decision_id = decided_by or event_id
    refused = _not_fired(out, ax, sensor, st, fired_key=fired_key, run_id=run_id)
    if refused is not None:
        out.decide(
            ax,
            decision_id,
            sensor.name,
            trigger,
            matched=True,
            fired=False,
            reason=f"{why}; {refused}",
        )
        return
    replaced = ""
    if st.active and sensor.concurrency == "Replace":
        old = list(st.active)
        for rid in old:
            out.end(ax, ax.runs[rid], "Failed", f"replaced by run {run_id}")
        replaced = f" (replaced run {', '.join(old)})"
    run = _RunState(
        id=run_id,
        sensor=sensor.name,
        trigger=trigger,
        event_id=event_id,
        generation=ax.generation,
        started=out.now,
        step=0,
        actions=[],
    )
    ax.runs[run_id] = run
    ax.run_changed(run_id)
    st.active[run_id] = None
    out.fired.add(fired_key)
    out.started.append(run_id)
    planned = _start_step(out, ax, sensor, run)
    out.decide(
        ax,
        decision_id,
        sensor.name,
        trigger,
        matched=True,
        fired=True,
        reason=f"{why}; fired: run started at step 0{replaced}",
        run_id=run_id,
        planned=planned,
    )


def _not_fired(
    out: _Out,
    ax: _AxonState,
    sensor: _Sensor,
    st: _SensorState,
    *,
    fired_key: tuple[str, str, str],
    run_id: str,
) -> str | None:
    """Why the sensor does not fire now (None: it fires; a start is then counted for
    `maxRuns`)."""
    if fired_key in out.fired:
        return "not fired: the sensor already fired for this event"
    if run_id in ax.runs or run_id in ax.finished_index:
        return f"not fired: run {run_id} was already started for this event"
    blocked = _conditions_block(sensor, st)
    if blocked is not None:
        return f"not fired: {blocked}"
    if st.active and sensor.concurrency == "Forbid":
        first = next(iter(st.active))
        return f"not fired: run {first} is still active (concurrency Forbid)"
    if sensor.max_runs is not None:
        count, per = sensor.max_runs
        st.starts = [t for t in st.starts if t > out.now - per]
        if len(st.starts) >= count:
            return (
                f"not fired: maxRuns {count} per {_dur(per)} reached "
                f"(next allowed at {_when(st.starts[0] + per)})"
            )
        st.starts.append(out.now)
    return None


# ---------------------------------------------------------------------------------------------
# Submit: a new generation, or a deletion


def submit(
    state: EngineState, axon: Axon, generation: int, event: Event, now: datetime
) -> StepResult:
    """Apply `axon` as spec `generation` (or delete it), on the `ranvier.axon` event `event`.

    A new generation keeps the state of sensors, triggers and conditions that did not change
    and resets what did (a run of a sensor whose steps changed is ended), with one decision per
    sensor saying which; sensors without triggers then fire once for the generation. A stale or
    already applied generation changes nothing (`ignored` says why). May raise `EngineError`
    when the spec has a condition that does not parse (the loader refuses such files).
    """
    out = _Out(_seconds(now))
    key = axon_key(axon.metadata.namespace, axon.metadata.name)
    old = state._axons.get(key)
    deleting = event.type == AXON and event.data.get("action") == "deleted"
    if deleting:
        if old is None:
            return out.result(ignored=f"Axon {key!r} is not known; nothing to delete")
        return _delete(state, out, old, event.id)
    if old is not None and generation <= old.generation:
        return out.result(
            ignored=f"generation {generation} of Axon {key!r} is not newer than the "
            f"applied generation {old.generation}"
        )
    spec = _compile(axon)
    ax = _AxonState(spec=spec, generation=generation, sensors={})
    if old is not None:
        ax.runs, ax.finished, ax.finished_index = old.runs, old.finished, old.finished_index
        ax.seen, ax.seen_index = old.seen, old.seen_index
    state._axons[key] = ax
    for sensor in spec.order:
        prior = old.spec.sensors.get(sensor.name) if old is not None else None
        if old is None or prior is None:
            reason = f"generation {generation}: new sensor"
        else:
            reason = f"generation {generation}: " + _reconcile(
                out, ax, old, prior=prior, sensor=sensor, st=old.sensors.get(sensor.name)
            )
        out.decide(ax, event.id, sensor.name, None, matched=True, fired=False, reason=reason)
    if old is not None:
        _drop_removed(out, ax, old, event_id=event.id, generation=generation)
    for sensor in spec.triggerless:
        st = ax.sensor_state(sensor.name)
        if st.fired_generation == generation:
            continue
        st.fired_generation = generation
        _fire(
            out,
            ax,
            sensor,
            trigger=None,
            event_id=event.id,
            run_id=sensor_run_id(event.id, sensor.name),
            why=f"no triggers: runs once per generation (generation {generation} submitted)",
        )
    out.touched[key] = None
    return out.result()


def _drop_removed(
    out: _Out, ax: _AxonState, old: _AxonState, *, event_id: str, generation: int
) -> None:
    """Sensors of the old generation that the new one lacks: their runs end, their state goes."""
    for prior in old.spec.order:
        if prior.name in ax.spec.sensors:
            continue
        for rid in old.sensors.get(prior.name, _SensorState()).active:
            run = old.runs.get(rid)
            if run is not None:
                out.end(ax, run, "Failed", f"sensor removed in generation {generation}")
        out.decide(
            ax,
            event_id,
            prior.name,
            None,
            matched=True,
            fired=False,
            reason=f"generation {generation}: sensor removed, its state dropped",
        )


def _reconcile(
    out: _Out,
    ax: _AxonState,
    old: _AxonState,
    *,
    prior: _Sensor,
    sensor: _Sensor,
    st: _SensorState | None,
) -> str:
    """Carry one sensor's state into a new generation; returns what was kept and reset."""
    st = st if st is not None else _SensorState()
    new = _SensorState(fired_generation=st.fired_generation, active=st.active, starts=st.starts)
    reset: list[str] = []
    for name in sensor.triggers:
        if prior.trigger_prints.get(name) == sensor.trigger_prints[name]:
            if name in st.alerts:
                new.alerts[name] = st.alerts[name]
        elif name in prior.trigger_prints:
            reset.append(f"trigger {name!r} changed")
        else:
            reset.append(f"trigger {name!r} added")
    reset += [f"trigger {n!r} removed" for n in prior.triggers if n not in sensor.trigger_prints]
    for name, print_ in sensor.condition_prints.items():
        if prior.condition_prints.get(name) == print_:
            if name in st.conditions:
                new.conditions[name] = st.conditions[name]
        elif name in prior.condition_prints:
            reset.append(f"condition {name!r} changed")
        else:
            reset.append(f"condition {name!r} added")
    reset += [
        f"condition {n!r} removed"
        for n in prior.condition_prints
        if n not in sensor.condition_prints
    ]
    if prior.max_runs_print != sensor.max_runs_print:
        new.starts = []
        reset.append("maxRuns changed (window reset)")
    if prior.tasks_print != sensor.tasks_print:
        ended = list(new.active)
        for rid in ended:
            run = old.runs.get(rid)
            if run is not None:
                out.end(
                    ax, run, "Failed", f"the sensor's tasks changed in generation {ax.generation}"
                )
        new.active = {}
        reset.append("tasks changed" + (f" (ended run {', '.join(ended)})" if ended else ""))
    if prior.concurrency != sensor.concurrency:
        reset.append(f"concurrency now {sensor.concurrency}")
    ax.sensors[sensor.name] = new
    if not reset:
        return "unchanged, state kept"
    return "changed: " + "; ".join(reset) + "; the rest of its state kept"


# ---------------------------------------------------------------------------------------------
# Step: one event


def event_axon(event: Event) -> str | None:
    """The key (`axon_key`) of the Axon an event is about, None if it names none: the one
    place this is read from an event (the runtime keys its redelivery guard by it)."""
    data = event.data
    axon = data.get("axon")
    namespace = data.get("namespace", "default")
    if isinstance(axon, str) and isinstance(namespace, str):
        return axon_key(namespace, axon)
    return None


def step(state: EngineState, event: Event, now: datetime) -> StepResult:
    """Apply one event; never raises for a bad event (`StepResult.ignored` says why)."""
    out = _Out(_seconds(now))
    if event.type not in _HANDLERS:
        return out.result(ignored=f"event type {event.type!r} is not one the engine reads")
    key = event_axon(event)
    if key is None:
        return out.result(ignored=f"event {event.id} ({event.type}) names no Axon")
    data = event.data
    ax = state._axons.get(key)
    if event.type == AXON:
        return _step_axon(state, out, ax, event)
    if ax is None:
        return out.result()  # an Axon this engine does not know: concerns nothing here
    try:
        payload = _PAYLOADS[event.type].model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(payload)"
        return out.result(ignored=f"event {event.id} ({event.type}): {where}: {err['msg']}")
    _HANDLERS[event.type](out, ax, event.id, payload)
    return out.result()


def _step_axon(state: EngineState, out: _Out, ax: _AxonState | None, event: Event) -> StepResult:
    try:
        payload = AxonData.model_validate(event.data)
    except ValidationError:
        return out.result(ignored=f"event {event.id} (ranvier.axon) has an invalid payload")
    if payload.action == "deleted" and ax is not None:
        return _delete(state, out, ax, event.id)
    return out.result(
        ignored="ranvier.axon events are applied with submit(), which is given the spec"
    )


def _delete(state: EngineState, out: _Out, ax: _AxonState, event_id: str) -> StepResult:
    """The one way an Axon goes: its active runs end (Failed, reported in `ended`), each sensor
    gets a decision saying so, and its state is dropped (`deleted`: the caller removes it)."""
    ended: dict[str, int] = {}
    for run in list(ax.runs.values()):
        out.end(ax, run, "Failed", AXON_DELETED)
        ended[run.sensor] = ended.get(run.sensor, 0) + 1
    for sensor in ax.spec.order:
        out.decide(
            ax,
            event_id,
            sensor.name,
            None,
            matched=True,
            fired=False,
            reason=f"{AXON_DELETED}: state of the sensor dropped "
            f"({ended.get(sensor.name, 0)} active run(s) ended)",
        )
    del state._axons[ax.spec.key]
    return out.result(deleted=(ax.spec.key,))


def _lifecycle(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    data = cast(LifecycleData, payload)
    if data.phase == "Succeeded":
        _task_metrics(out, ax, event_id, data)
    if data.sensor_run_id is not None:
        _advance(out, ax, event_id, data)
    matches = ax.spec.by_lifecycle.get((data.task, data.phase))
    if not matches:
        return
    fresh = ax.see(_EDGE_SEP.join((data.task, data.run_id, data.phase)))
    why = f"task {data.task} run {data.run_id} {data.phase}"
    for sensor, trigger in matches:
        if not fresh:
            out.decide(
                ax,
                event_id,
                sensor.name,
                trigger,
                matched=True,
                fired=False,
                reason=f"{why} was already seen (lifecycle triggers fire once per run and phase)",
            )
            continue
        _fire(
            out,
            ax,
            sensor,
            trigger=trigger,
            event_id=event_id,
            run_id=sensor_run_id(event_id, sensor.name),
            why=why,
        )


def _task_metrics(out: _Out, ax: _AxonState, event_id: str, data: LifecycleData) -> None:
    """Record what a Succeeded run reported for the Metric conditions that name its task.

    The run's lifecycle event carries the metrics its version registered, so a condition with
    `task` always reads the latest Succeeded run's values, recorded before any trigger of this
    same event fires (a Lifecycle trigger on that task sees them).
    """
    targets = ax.spec.by_task_metrics.get(data.task, ())
    if not targets:
        return
    reported = data.outputs.get("metrics")
    metrics = reported if isinstance(reported, dict) else {}
    for target in targets:
        cond = cast(_Cond, target.cond)
        values: dict[str, float] = {}
        shown = []
        for key in sorted(cond.keys):
            name = cond.metric_names.get(key, key)
            value = metrics.get(name)
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                values[key] = float(value)
                shown.append(f"{name}={_num(float(value))}")
                continue
            shown.append(f"{name} not reported")
        ax.sensor_state(target.sensor.name).conditions[target.name] = values
        out.decide(
            ax,
            event_id,
            target.sensor.name,
            None,
            matched=False,
            fired=False,
            reason=f"value for condition {target.name!r} recorded from task {data.task} "
            f"run {data.run_id} ({', '.join(shown)})",
        )


def _advance(out: _Out, ax: _AxonState, event_id: str, data: LifecycleData) -> None:
    """Move a sensor run along on a lifecycle event of one of its actions."""
    rid = cast(str, data.sensor_run_id)
    run = ax.runs.get(rid)
    name = run.sensor if run is not None else data.sensor

    def note(reason: str, *, fired: bool = False, planned: Sequence[PlannedAction] = ()) -> None:
        if name is not None:
            out.decide(
                ax,
                event_id,
                name,
                None,
                matched=run is not None,
                fired=fired,
                reason=reason,
                run_id=rid,
                planned=planned,
            )

    if run is None:
        done = ax.finished_index.get(rid)
        if done is not None:
            return note(f"ignored: run {rid} already finished ({done[0]}: {done[1]})")
        return note(f"ignored: no active run {rid}")
    ax.run_changed(rid)
    sensor = ax.spec.sensors.get(run.sensor)
    if sensor is None:  # pragma: no cover - runs of removed sensors are ended on submit
        return note(f"ignored: sensor {run.sensor!r} is not in the spec")
    if data.step != run.step:
        return note(f"ignored: event for step {data.step}, the run is at step {run.step}")
    if data.index >= len(run.actions):
        return note(f"ignored: step {run.step} has no action {data.index}")
    act = run.actions[data.index]
    spec = sensor.steps[run.step][data.index]
    what = f"step {run.step} action {data.index} ({spec.kind} {spec.task}) attempt {data.attempt}"
    if data.attempt != act.attempt:
        return note(f"ignored: {what} is not the current attempt ({act.attempt})")
    if act.phase in ("Succeeded", "Failed"):
        return note(f"ignored: {what} already {act.phase}")
    act.phase = data.phase
    if data.phase in ("Pending", "Running"):
        return note(f"{what} {data.phase}")
    if data.phase == "Failed":
        if act.attempt <= spec.retry_limit:
            act.attempt += 1
            act.phase = "Pending"
            planned = [_request(out, ax, run, index=data.index, action=spec, attempt=act.attempt)]
            wait = f" after {_dur(spec.backoff)} backoff" if spec.backoff > 0 else ""
            return note(
                f"{what} Failed; retrying: attempt {act.attempt} of {spec.retry_limit + 1}{wait}",
                fired=True,
                planned=planned,
            )
        detail = f": {data.message}" if data.message else ""
        out.end(ax, run, "Failed", f"{what} Failed{detail}")
        return note(f"{what} Failed{detail}; run Failed")
    waiting = sum(1 for a in run.actions if a.phase != "Succeeded")
    if waiting:
        return note(f"{what} Succeeded; waiting for {waiting} more action(s) of step {run.step}")
    if run.step + 1 < len(sensor.steps):
        run.step += 1
        planned = _start_step(out, ax, sensor, run)
        return note(
            f"{what} Succeeded; step {run.step - 1} done, step {run.step} started",
            fired=True,
            planned=planned,
        )
    out.end(ax, run, "Succeeded", f"all {len(sensor.steps)} step(s) succeeded")
    return note(f"{what} Succeeded; run Succeeded")


def _metric(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    data = cast(MetricData, payload)
    value = data.value
    known = value is not None and not data.stale and math.isfinite(value)
    if data.sensor is not None and data.trigger is not None:
        targets = ax.spec.by_target.get((data.sensor, data.trigger), ())
        if not targets:
            out.decide(
                ax,
                event_id,
                data.sensor,
                data.trigger,
                matched=False,
                fired=False,
                reason=f"ignored: sensor {data.sensor!r} has no Alert trigger or Metric "
                f"condition named {data.trigger!r}",
            )
            return
        relevant = [t for t in targets if data.name in _keys(t)]
        if not relevant:
            out.decide(
                ax,
                event_id,
                data.sensor,
                data.trigger,
                matched=False,
                fired=False,
                reason=f"ignored: {data.trigger!r} reads no query {data.name!r}",
            )
            return
    else:
        relevant = list(ax.spec.by_metric.get(data.name, ()))
        if not relevant:
            return
    shown = f"{data.name}={_num(cast(float, value))}" if known else f"{data.name} unknown"
    # Record every value first, so an Alert sees the condition values of the same event.
    for target in relevant:
        st = ax.sensor_state(target.sensor.name)
        values = (
            st.alert(target.name).values
            if target.alert
            else st.conditions.setdefault(target.name, {})
        )
        if known:
            values[data.name] = cast(float, value)
        else:
            values.pop(data.name, None)
    for target in relevant:
        if target.alert is None:
            out.decide(
                ax,
                event_id,
                target.sensor.name,
                None,
                matched=False,
                fired=False,
                reason=f"value for condition {target.name!r} recorded ({shown})",
            )
            continue
        _alert(out, ax, target.sensor, target.alert, event_id=event_id, shown=shown, timed=False)


def _keys(target: _Target) -> frozenset[str]:
    return target.alert.keys if target.alert is not None else cast(_Cond, target.cond).keys


def _alert(
    out: _Out,
    ax: _AxonState,
    sensor: _Sensor,
    alert: _Alert,
    *,
    event_id: str,
    shown: str,
    timed: bool,
    decided_by: str | None = None,
) -> None:
    """Run one Alert trigger's state machine at `out.now`; on ticks, record only transitions
    (under `decided_by`, the tick event, when there is one)."""
    st = ax.alert_state(sensor.name, alert.name)
    step = _AlertStep(out, ax, sensor, alert, st, event_id, shown, timed, decided_by)
    cond = alert.condition.evaluate(st.values)
    if st.phase == "firing":
        _alert_firing(step, cond)
    elif cond is None:
        _alert_unknown(step)
    elif not cond:
        _alert_false(step)
    else:
        _alert_holds(step)


@dataclass(slots=True)
class _AlertStep:
    """One run of an Alert's state machine (`_alert`): what its phases share."""

    out: _Out
    ax: _AxonState
    sensor: _Sensor
    alert: _Alert
    st: _AlertState
    event_id: str
    shown: str
    timed: bool
    decided_by: str | None

    def note(self, reason: str) -> None:
        """Record a decision about the alert (not fired)."""
        self.out.decide(
            self.ax,
            self.decided_by or self.event_id,
            self.sensor.name,
            self.alert.name,
            matched=True,
            fired=False,
            reason=f"{self.shown}: {reason}" if self.shown else reason,
        )

    def quiet(self, reason: Callable[[], str]) -> None:
        """Record it for an event, not on a tick (ticks record transitions only)."""
        if not self.timed:
            self.note(reason())


def _alert_firing(step: _AlertStep, cond: bool | None) -> None:
    """Firing: resolve when the alert stops holding (or its `resolve` condition holds), after
    `keepFiringFor` if set."""
    alert, st, now = step.alert, step.st, step.out.now
    if alert.resolve is not None:
        clear = alert.resolve.evaluate(st.values)
        test, met = f"resolve condition {alert.resolve.text}", "holds"
    else:
        clear = None if cond is None else not cond
        test, met = f"condition {alert.condition.text}", "no longer holds"
    if clear is None:
        return step.quiet(lambda: f"firing; {test} is unknown, no transition")
    if not clear:
        st.clear_since = st.clear_event = None
        return step.quiet(lambda: "firing; the alert still holds")
    if alert.keep_firing_for > 0:
        if st.clear_since is None:
            st.clear_since, st.clear_event = now, step.event_id
        until = st.clear_since + alert.keep_firing_for
        if now < until:
            return step.quiet(
                lambda: (
                    f"firing; resolves at {_when(until)} unless it holds again "
                    f"(keepFiringFor {_dur(alert.keep_firing_for)})"
                )
            )
    st.phase, st.clear_since, st.clear_event = "inactive", None, None
    return step.note(f"{test} {met}: firing -> resolved -> inactive")


def _alert_unknown(step: _AlertStep) -> None:
    """Not firing, no value: no transition (an unknown value never counts as false)."""
    if step.timed:
        return
    alert, st = step.alert, step.st
    missing = sorted(q.key for q in alert.condition.queries if q.key not in st.values)
    what = f"no value for {', '.join(missing)}" if missing else "value unknown"
    step.note(f"condition {alert.condition.text} is unknown ({what}); no transition")


def _alert_false(step: _AlertStep) -> None:
    """Not firing, the condition false: a pending alert goes back to inactive."""
    st, text = step.st, step.alert.condition.text
    if st.phase == "pending":
        st.phase, st.since, st.since_event, st.held_until = "inactive", None, None, None
        return step.note(f"condition {text} is false: pending -> inactive")
    return step.quiet(lambda: f"condition {text} is false; inactive")


def _alert_holds(step: _AlertStep) -> None:
    """Not firing, the condition true: pending until `for` has passed, then fire (unless in
    the cooldown after the last firing)."""
    alert, st, now = step.alert, step.st, step.out.now
    became = ""
    if st.phase == "inactive":
        st.phase, st.since, st.since_event = "pending", now, step.event_id
        became = "inactive -> pending"
    since = cast(float, st.since)
    due = since + alert.for_
    if now < due:
        return step.quiet(
            lambda: (
                f"condition {alert.condition.text} holds: {became or 'pending'}; fires at "
                f"{_when(due)} if it still holds (for {_dur(alert.for_)})"
            )
        )
    if st.last_fired is not None and now < st.last_fired + alert.cooldown:
        until = st.last_fired + alert.cooldown
        first = st.held_until is None
        st.held_until = until
        if step.timed and not first:
            return None
        return step.note(
            f"condition {alert.condition.text} holds, but not fired: cooldown "
            f"{_dur(alert.cooldown)} after the firing at {_when(st.last_fired)} "
            f"(pending until {_when(until)})"
        )
    return _alert_fire(step, since, became)


def _alert_fire(step: _AlertStep, since: float, became: str) -> None:
    """The alert starts firing: the sensor fires (its run id from the event that started the
    pending episode, which a tick passes as `event_id`)."""
    alert, st, now = step.alert, step.st, step.out.now
    cause = step.event_id
    st.phase, st.last_fired = "firing", now
    st.since = st.since_event = st.held_until = None
    edge = "inactive -> firing" if became else "pending -> firing"
    if alert.for_ > 0 and not became:
        edge += f" (held for {_dur(now - since)})"
    run_id = sensor_run_id(cause, step.sensor.name, alert.name if step.timed else None)
    _fire(
        step.out,
        step.ax,
        step.sensor,
        trigger=alert.name,
        event_id=cause,
        run_id=run_id,
        why=f"{step.shown}: {edge}" if step.shown else edge,
        decided_by=step.decided_by,
    )


def _rest(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    data = cast(RestData, payload)
    _named(out, ax, event_id, name=data.sensor, trigger=data.trigger, kind="Rest")


def _calendar(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    data = cast(CalendarData, payload)
    _named(out, ax, event_id, name=data.sensor, trigger=data.trigger, kind="Calendar")


def _named(
    out: _Out, ax: _AxonState, event_id: str, *, name: str, trigger: str | None, kind: str
) -> None:
    """Rest and Calendar events name the sensor (and maybe the trigger) they fire."""
    sensor = ax.spec.sensors.get(name)

    def miss(reason: str) -> None:
        out.decide(ax, event_id, name, trigger, matched=False, fired=False, reason=reason)

    if sensor is None:
        return miss(f"ignored: the Axon has no sensor named {name!r}")
    names = sensor.rest if kind == "Rest" else sensor.calendar
    if trigger is None:
        if not names:
            return miss(f"ignored: sensor {name!r} has no {kind} trigger")
        trigger = names[0]
    elif trigger not in names:
        return miss(f"ignored: sensor {name!r} has no {kind} trigger named {trigger!r}")
    _fire(
        out,
        ax,
        sensor,
        trigger=trigger,
        event_id=event_id,
        run_id=sensor_run_id(event_id, name),
        why=f"{kind} event",
    )
    return None


def _tick_event(out: _Out, ax: _AxonState, event_id: str, payload: Any) -> None:
    """A recorded tick: the Axon's alerts whose deadline is at or before the tick's `due`,
    at that time (whenever the tick is stepped)."""
    out.now = _seconds(cast(TickData, payload).due)
    _tick_axon(out, ax, out.now, event_id)


_Handler = Callable[[_Out, _AxonState, str, Any], None]
_HANDLERS: Final[dict[str, _Handler]] = {
    LIFECYCLE: _lifecycle,
    METRIC: _metric,
    REST: _rest,
    CALENDAR: _calendar,
    TICK: _tick_event,
    AXON: _lifecycle,  # never called: step() routes ranvier.axon events to _step_axon first
}
_PAYLOADS: Final[dict[str, Any]] = {
    LIFECYCLE: LifecycleData,
    METRIC: MetricData,
    REST: RestData,
    CALENDAR: CalendarData,
    TICK: TickData,
}


# ---------------------------------------------------------------------------------------------
# Time


def _deadline(alert: _Alert, st: _AlertState) -> float | None:
    if st.phase == "pending":
        if st.held_until is not None:
            return st.held_until
        return cast(float, st.since) + alert.for_
    if st.phase == "firing" and st.clear_since is not None:
        return st.clear_since + alert.keep_firing_for
    return None


def _armed(state: EngineState) -> Iterable[tuple[_AxonState, _Sensor, _Alert, float]]:
    """Alerts waiting on time, with their deadlines: Axons in key order, sensors in spec order."""
    for key in sorted(state._axons):
        yield from _armed_axon(state._axons[key])


def _armed_axon(ax: _AxonState) -> Iterable[tuple[_AxonState, _Sensor, _Alert, float]]:
    """One Axon's alerts waiting on time, with their deadlines, sensors in spec order.

    Only the sensors in `_AxonState.timed` are looked at (the runtime asks after every batch,
    and an Axon may have thousands of sensors); those found waiting on nothing are dropped.
    """
    if ax.timed is None:
        ax.timed = {s.name for s in ax.spec.order if s.alerts}
    if not ax.timed:
        return
    sensors = ax.spec.sensors
    idle: list[str] = []
    for sensor in sorted((sensors[n] for n in ax.timed if n in sensors), key=_position):
        st = ax.sensors.get(sensor.name)
        waiting = False
        for name, alert in sensor.alerts.items():
            ast = st.alerts.get(name) if st is not None else None
            due = _deadline(alert, ast) if ast is not None else None
            if due is not None:
                waiting = True
                yield ax, sensor, alert, due
        if not waiting:
            idle.append(sensor.name)
    ax.timed.difference_update(idle)
    ax.timed.intersection_update(sensors)


def _position(sensor: _Sensor) -> int:
    return sensor.position


def tick(state: EngineState, now: datetime) -> StepResult:
    """Apply the passing of time: fire alerts whose `for` or cooldown elapsed, resolve those
    whose `keepFiringFor` ran out. Records only what changed.

    A "what if" for dry runs (`sensors test --tick`); the live runtime records each tick as a
    `ranvier.tick` event instead (`due_ticks`), which `step` applies to its Axon."""
    out = _Out(_seconds(now))
    for key in sorted(state._axons):
        _tick_axon(out, state._axons[key], out.now)
    return out.result()


def _tick_axon(out: _Out, ax: _AxonState, until: float, tick_id: str | None = None) -> None:
    """Run the alerts of one Axon due by `until`. Their decisions name the tick event when
    there is one (`explain` of a tick says what it did), else the event that started the
    pending episode; a firing's run id always derives from the latter."""
    for _, sensor, alert, due in list(_armed_axon(ax)):
        if due > until:
            continue
        ast = ax.sensors[sensor.name].alerts[alert.name]
        cause = ast.since_event if ast.phase == "pending" else ast.clear_event
        _alert(
            out,
            ax,
            sensor,
            alert,
            event_id=cause or "tick",
            shown=f"tick at {_when(out.now)}",
            timed=True,
            decided_by=tick_id,
        )


def due_ticks(state: EngineState, now: datetime, after: datetime | None = None) -> list[TickData]:
    """The tick each Axon needs now: its earliest deadline, if at or before `now` (and after
    `after`, for deadlines already ticked that wait for a value). The runtime publishes them
    as `ranvier.tick` events; `step` acts on them when they come back from the stream."""
    limit, floor = _seconds(now), _seconds(after) if after is not None else -math.inf
    out: list[TickData] = []
    for key in sorted(state._axons):
        ax = state._axons[key]
        dues = [due for *_, due in _armed_axon(ax) if floor < due <= limit]
        if dues:
            out.append(
                TickData(
                    axon=ax.spec.name,
                    namespace=ax.spec.namespace,
                    due=datetime.fromtimestamp(min(dues), UTC),
                )
            )
    return out


def next_deadline(state: EngineState, after: datetime | None = None) -> datetime | None:
    """When `tick` could next change something (None: nothing is waiting on time).

    It may lie in the past when a due alert waits for a value that is currently unknown; such
    an alert stays due until an event brings a value, so after a `tick(now)` a caller may pass
    `after=now` to ask only for later deadlines.
    """
    floor = _seconds(after) if after is not None else -math.inf
    dues = [due for *_, due in _armed(state) if due > floor]
    return datetime.fromtimestamp(min(dues), UTC) if dues else None
