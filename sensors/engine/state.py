"""The engine's mutable state, one JSON document per Axon, encoded incrementally (only what
changed is encoded again)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sensors.engine.base import (
    FINISHED_RUNS_LIMIT,
    SEEN_EDGES_LIMIT,
    STATE_VERSION,
    ActionPhase,
    AlertPhase,
    EngineError,
    RunAction,
    RunPhase,
    RunView,
    _encode,
    axon_key,
)
from sensors.engine.compiled import _compile, _Compiled
from sensors.spec import (
    Axon,
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
