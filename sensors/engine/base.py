"""The engine's vocabulary: results, run views, keys and ids, and small pure helpers."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple, TypeVar

from pydantic import BaseModel

from events.errors import RanvierError
from events.model import (
    ActionRequest,
    DecisionData,
    canonical_json,
    format_time,
)
from sensors.spec import (
    ActionKind,
)

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
