"""What flows on the bus: the CloudEvents 1.0 envelope and the typed payloads inside it.

Every message on ranvier's streams is one `Event` serialised as CloudEvents 1.0 JSON
(structured mode). The envelope is generic (`data` is a plain mapping) so that the bus, export,
import and replay never need to know every payload; code that acts on an event asks for its
typed payload with `Event.payload()`, which validates it.

An event's `id` is a ULID (unique, and sortable by creation time) and doubles as the JetStream
`Nats-Msg-Id`, so publishing the same event twice within the duplicate window stores it once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from ulid import ULID

from events import subjects
from events.errors import RanvierError

# Event types (the CloudEvents `type` attribute).
LIFECYCLE: Final = "ranvier.lifecycle"
METRIC: Final = "ranvier.metric"
REST: Final = "ranvier.rest"
CALENDAR: Final = "ranvier.calendar"
AXON: Final = "ranvier.axon"
TICK: Final = "ranvier.tick"
ACTION: Final = "ranvier.action"
DECISION: Final = "ranvier.decision"

# nats-server's default max_payload; the bus replaces it with the connected server's value.
DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
ActionKind = Literal["resourceExecutor", "trainer", "deployer"]


class EventError(RanvierError, ValueError):
    """An event that cannot be encoded, decoded or published as it is."""


def _as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a `Z`, the one textual form ranvier writes."""
    return _as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


UtcDatetime = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(format_time, return_type=str, when_used="json"),
]


def new_id() -> str:
    """A fresh event id: a ULID, unique and ordered by creation time."""
    return str(ULID())


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """A CloudEvents 1.0 envelope carrying one ranvier payload (or any JSON object).

    Events from other CloudEvents producers are read as the specification allows: the optional
    attributes (`subject`, `dataschema`, `datacontenttype` with media type parameters, `time`)
    and extension attributes (`traceparent`, ...). Extensions are kept as given and written back
    out, so an exported event carries them unchanged. An event without `time` takes the moment
    the stream stored it (see `from_json`), which every replay of the stream sees alike.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"] = Field("1.0", description="CloudEvents spec version.")
    id: str = Field(min_length=1, max_length=128, description="Unique id; also the Nats-Msg-Id.")
    source: str = Field(min_length=1, description="Who emitted it, as a URI reference.")
    type: str = Field(min_length=1, description="Event type, e.g. `ranvier.lifecycle`.")
    subject: str | None = Field(None, description="What it is about, e.g. the task name.")
    time: UtcDatetime = Field(description="When it happened (UTC).")
    datacontenttype: str = Field(
        "application/json",
        description="A JSON media type (`application/json`, parameters allowed, or `+json`).",
    )
    dataschema: str | None = Field(None, min_length=1, description="URI of the data's schema.")
    data: dict[str, Any] = Field(default_factory=dict, description="The payload.")
    replayof: str | None = Field(
        None, description="Extension attribute: the id of the event this one re-publishes."
    )

    @field_validator("datacontenttype")
    @classmethod
    def _json_media_type(cls, value: str) -> str:
        if not is_json_media_type(value):
            raise ValueError(
                f"{value!r} is not a JSON media type; ranvier reads JSON data "
                "(application/json, optionally with parameters, or a +json type)"
            )
        return value

    @model_validator(mode="after")
    def _extensions_are_attributes(self) -> Event:
        if self.model_extra:
            for name, value in self.model_extra.items():
                check_extension(name, value)
        return self

    @property
    def extensions(self) -> dict[str, str | int | bool]:
        """The extension attributes this event carries, beyond the ones ranvier declares."""
        return dict(self.model_extra or {})

    def to_json(self) -> bytes:
        """Serialise as compact CloudEvents JSON (absent optional attributes are omitted)."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    @classmethod
    def from_json(
        cls, raw: bytes | str, *, stored_at: datetime | Callable[[], datetime] | None = None
    ) -> Event:
        """Parse CloudEvents JSON; any problem is an `EventError` saying what is wrong.

        `stored_at` is the stream's timestamp of the message (or a function giving it, called
        only when needed: reading a message's metadata costs the engine), which stands in for a
        missing `time`.
        """
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            if stored_at is None or not _only_time_missing(exc):
                raise EventError(f"not a ranvier event: {_first_error(exc)}") from None
        try:
            when = stored_at() if callable(stored_at) else stored_at
            return cls.model_validate({**json.loads(raw), "time": when})
        except ValidationError as exc:
            raise EventError(f"not a ranvier event: {_first_error(exc)}") from None

    def encode(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
        """The bytes to publish; refuses events larger than the server accepts."""
        raw = self.to_json()
        if len(raw) > max_payload:
            raise EventError(
                f"event {self.id} ({self.type}) is {len(raw)} bytes, over the server's "
                f"max payload of {max_payload} bytes",
                hint="send large data as an artifact and put its path in the event",
            )
        return raw

    def payload(self) -> Payload:
        """The typed payload for this event's type; `EventError` if unknown or invalid."""
        model = PAYLOAD_TYPES.get(self.type)
        if model is None:
            raise EventError(f"event {self.id} has unknown type {self.type!r}")
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise EventError(f"event {self.id} ({self.type}): {_first_error(exc)}") from None

    @property
    def nats_subject(self) -> str:
        """The subject this event is published on, derived from its type and payload."""
        return self.payload().nats_subject()


def _only_time_missing(exc: ValidationError) -> bool:
    return [(e["type"], e["loc"]) for e in exc.errors()] == [("missing", ("time",))]


# CloudEvents 1.0: attribute names are lower-case letters and digits; data is not an attribute.
_EXTENSION_NAME: Final = re.compile(r"[a-z0-9]{1,64}")
_JSON_ESSENCE: Final = re.compile(r"(application|text)/([a-z0-9.+-]+\+)?json", re.IGNORECASE)


def is_json_media_type(value: str) -> bool:
    """Whether a `datacontenttype` names JSON (`application/json; charset=utf-8`, `+json`...)."""
    return bool(_JSON_ESSENCE.fullmatch(value.split(";", 1)[0].strip()))


def check_extension(name: str, value: Any) -> None:
    """Refuse what CloudEvents does not allow as an extension attribute (ValueError says why)."""
    if name == "data_base64":
        raise ValueError("data_base64: binary data is not read; send the data as a JSON object")
    if not _EXTENSION_NAME.fullmatch(name):
        raise ValueError(
            f"{name}: not a CloudEvents attribute name (lower-case letters and digits only)"
        )
    if value is None or not isinstance(value, str | int | bool):
        raise ValueError(f"{name}: an extension attribute is a string, integer or boolean")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "(document)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


class Payload(BaseModel):
    """Base of the typed payloads; each knows its event type and subject."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    event_type: ClassVar[str]

    axon: str = Field(min_length=1, description="The Axon (metadata.name) it belongs to.")
    namespace: str = Field("default", description="The Axon's namespace.")

    def nats_subject(self) -> str:
        """The subject events with this payload are published on."""
        raise NotImplementedError

    def event_subject_attr(self) -> str | None:
        """The CloudEvents `subject` attribute for this payload."""
        return None

    def to_event(
        self,
        *,
        source: str,
        id: str | None = None,
        time: datetime | None = None,
    ) -> Event:
        """Wrap this payload in an envelope (fresh id and current time unless given)."""
        return Event(
            id=id or new_id(),
            source=source,
            type=self.event_type,
            subject=self.event_subject_attr(),
            time=time or utcnow(),
            data=self.model_dump(mode="json", exclude_none=True),
        )


class LifecycleData(Payload):
    """A task run changed phase (Pending, Running, Succeeded, Failed)."""

    event_type: ClassVar[str] = LIFECYCLE

    task: str = Field(min_length=1, description="The task (spec.tasks[].name).")
    run_id: str = Field(min_length=1, description="The task run; one per action attempt.")
    phase: Phase = Field(description="The phase the run entered.")
    sensor: str | None = Field(None, description="The sensor whose action started the run.")
    sensor_run_id: str | None = Field(None, description="The sensor run the action belongs to.")
    step: int | None = Field(None, ge=0, description="Index of the step in the sensor's tasks.")
    index: int = Field(0, ge=0, description="Position of the action within a parallel step.")
    attempt: int = Field(1, ge=1, description="Attempt number of the action (retries count up).")
    action_key: str | None = Field(None, description="Idempotency key of the action request.")
    message: str = Field("", description="Human-readable reason, e.g. why it failed.")
    exit_code: int | None = Field(None, description="Process exit code, when there was one.")
    outputs: dict[str, Any] = Field(default_factory=dict, description="Outputs: version, url...")

    def nats_subject(self) -> str:
        return subjects.event_subject(self.axon, "lifecycle", self.task)

    def event_subject_attr(self) -> str | None:
        return self.task


class MetricData(Payload):
    """A metric value, raw or the value of a sensor condition's query."""

    event_type: ClassVar[str] = METRIC

    name: str = Field(min_length=1, description="Metric name, or the condition query's key.")
    labels: dict[str, str] = Field(default_factory=dict, description="Series labels.")
    value: float | None = Field(
        None, description="The value; null or absent when it is unknown (stale)."
    )
    sample_time: UtcDatetime | None = Field(None, description="When the value was sampled.")
    source: str = Field("user", description="scrape, prometheus, or user.")
    sensor: str | None = Field(None, description="The sensor whose condition this answers.")
    trigger: str | None = Field(
        None, description="The Alert trigger or Metric condition name it answers."
    )
    stale: bool = Field(False, description="True when the source could not be read.")

    def nats_subject(self) -> str:
        return subjects.event_subject(self.axon, "metric", self.name)

    def event_subject_attr(self) -> str | None:
        return self.name


class RestData(Payload):
    """A Rest trigger was called (over HTTP or `ranvier trigger`)."""

    event_type: ClassVar[str] = REST

    sensor: str = Field(min_length=1, description="The sensor to fire.")
    trigger: str | None = Field(None, description="The Rest trigger's name, if it has one.")
    payload: dict[str, Any] = Field(default_factory=dict, description="The caller's JSON body.")

    def nats_subject(self) -> str:
        return subjects.event_subject(self.axon, "rest", self.sensor)

    def event_subject_attr(self) -> str | None:
        return self.sensor


class CalendarData(Payload):
    """A Calendar trigger's scheduled time came."""

    event_type: ClassVar[str] = CALENDAR

    sensor: str = Field(min_length=1, description="The sensor to fire.")
    trigger: str = Field(min_length=1, description="The Calendar trigger's name.")
    scheduled_time: UtcDatetime = Field(description="The tick this event stands for.")

    def nats_subject(self) -> str:
        return subjects.event_subject(self.axon, "calendar", self.sensor)

    def event_subject_attr(self) -> str | None:
        return self.sensor


class AxonData(Payload):
    """An Axon was submitted (a new spec generation) or deleted."""

    event_type: ClassVar[str] = AXON

    generation: int = Field(ge=1, description="Spec generation; bumps on every changed submit.")
    action: Literal["submitted", "deleted"] = Field(description="What happened to the Axon.")

    def nats_subject(self) -> str:
        return subjects.event_subject(self.axon, "axon")

    def event_subject_attr(self) -> str | None:
        return self.axon


def action_key(
    axon: str, sensor: str, sensor_run_id: str, *, step: int, index: int, attempt: int
) -> str:
    """The idempotency key of an action: `axon/sensor/sensor_run_id/step[.index]/attempt`.

    The index appears only for the second and later actions of a parallel step, so a plain step
    has the documented key `axon/sensor/sensor_run_id/step/attempt` (docs/architecture.md).
    """
    where = f"{step}" if index == 0 else f"{step}.{index}"
    return f"{axon}/{sensor}/{sensor_run_id}/{where}/{attempt}"


class ActionRequest(Payload):
    """The engine asks an executor to run one action of a sensor run."""

    event_type: ClassVar[str] = ACTION

    sensor: str = Field(min_length=1, description="The sensor that fired.")
    sensor_run_id: str = Field(min_length=1, description="The sensor run (uuid5 of event+sensor).")
    generation: int = Field(1, ge=1, description="Spec generation the run was started under.")
    step: int = Field(ge=0, description="Index of the step in the sensor's tasks.")
    index: int = Field(0, ge=0, description="Position of the action within a parallel step.")
    attempt: int = Field(1, ge=1, description="Attempt number (retries count up).")
    kind: ActionKind = Field(description="resourceExecutor, trainer or deployer.")
    task: str = Field(min_length=1, description="The task to run (a deployer's name for deployer).")
    params: dict[str, Any] = Field(default_factory=dict, description="env, deployer spec, etc.")
    not_before: UtcDatetime | None = Field(None, description="Retry backoff: start no earlier.")

    @property
    def idempotency_key(self) -> str:
        """The key the executor claims and the Nats-Msg-Id it is published with."""
        return action_key(
            self.axon,
            self.sensor,
            self.sensor_run_id,
            step=self.step,
            index=self.index,
            attempt=self.attempt,
        )

    def nats_subject(self) -> str:
        return subjects.action_subject(self.axon, self.kind)

    def event_subject_attr(self) -> str | None:
        return self.task

    def to_event(
        self,
        *,
        source: str,
        id: str | None = None,
        time: datetime | None = None,
    ) -> Event:
        """Action events take their idempotency key as id, so a re-publish is a duplicate."""
        return super().to_event(source=source, id=id or self.idempotency_key, time=time)


class PlannedAction(BaseModel):
    """An action a decision started, as `sensors test` prints it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ActionKind = Field(description="resourceExecutor, trainer or deployer.")
    task: str = Field(description="Task (or deployer) name.")
    step: int = Field(ge=0, description="Index of the step in the sensor's tasks.")


class DecisionData(Payload):
    """Why an event did or did not fire a sensor: the answer to "why did (not) this run"."""

    event_type: ClassVar[str] = DECISION

    event_id: str = Field(min_length=1, description="The event that was considered.")
    sensor: str = Field(min_length=1, description="The sensor it could concern.")
    trigger: str | None = Field(None, description="The trigger that matched, if any.")
    matched: bool = Field(description="The event matched a trigger of the sensor.")
    fired: bool = Field(description="The sensor fired (a run started or advanced).")
    reason: str = Field(description="Why, in words a user can act on.")
    sensor_run_id: str | None = Field(None, description="The sensor run concerned.")
    actions: list[PlannedAction] = Field(default_factory=list, description="Actions requested.")

    def nats_subject(self) -> str:
        return subjects.decision_subject(self.axon, self.sensor)

    def event_subject_attr(self) -> str | None:
        return self.sensor


class TickData(Payload):
    """Time passed an Axon's deadline: an Alert's `for`, `keepFiringFor` or cooldown ran out.

    The engine publishes one when the wall clock passes a deadline and acts on it only when it
    comes back from the stream, in order with every other event, so a dry run over a recording
    takes the same decisions at the same points as the live engine did.
    """

    event_type: ClassVar[str] = TICK

    due: UtcDatetime = Field(description="The deadline this tick stands for (the event's time).")

    def nats_subject(self) -> str:
        return subjects.event_subject(self.axon, "tick")

    def event_subject_attr(self) -> str | None:
        return self.axon


PAYLOAD_TYPES: Final[dict[str, type[Payload]]] = {
    LIFECYCLE: LifecycleData,
    METRIC: MetricData,
    REST: RestData,
    CALENDAR: CalendarData,
    AXON: AxonData,
    TICK: TickData,
    ACTION: ActionRequest,
    DECISION: DecisionData,
}


def canonical_json(value: Any) -> bytes:
    """Deterministic compact JSON (sorted keys) for hashing and byte-identical output."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------------------------------------
# Sensor-run records (`ranvier_runs`, key `sensor.<ns>.<axon>.<sensor>.<run>`)


@dataclass(slots=True)
class RunStepRecord:
    """One action of a sensor run's step as its record shows it; `run_id` is the executor's
    task run, once it reported on the action."""

    index: int
    """The step (0, 1, ...)."""
    action: int
    """The action's place in a parallel step (0 for a plain step)."""
    attempt: int | None
    kind: str
    task: str
    phase: str = "Pending"
    run_id: str | None = None
    key: str | None = None
    """The action's idempotency key."""

    def to_dict(self) -> dict[str, Any]:
        """The stored layout."""
        return {
            "index": self.index,
            "action": self.action,
            "attempt": self.attempt,
            "kind": self.kind,
            "task": self.task,
            "phase": self.phase,
            "run_id": self.run_id,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStepRecord:
        """From the stored layout (`ValueError`/`KeyError`/`TypeError` when it is not one)."""
        attempt = data.get("attempt")
        return cls(
            index=int(data["index"]),
            action=int(data.get("action", 0)),
            attempt=None if attempt is None else int(attempt),
            kind=str(data["kind"]),
            task=str(data["task"]),
            phase=str(data.get("phase", "Pending")),
            run_id=_opt_str(data.get("run_id")),
            key=_opt_str(data.get("key")),
        )


@dataclass(slots=True)
class SensorRunRecord:
    """A sensor run as `ranvier_runs` holds it: what `get axon`, the console and the API show.

    The engine writes it (`sensors.records.merge_run_record`) as the run starts, advances and
    ends; its steps carry the task run ids the executors reported.
    """

    id: str
    axon: str
    namespace: str
    sensor: str
    started: str
    """RFC 3339 (`format_time`)."""
    trigger: str | None = None
    phase: str = "Running"
    finished: str | None = None
    reason: str = ""
    steps: list[RunStepRecord] = field(default_factory=list)

    def to_json(self) -> bytes:
        """The stored bytes."""
        return json.dumps(
            {
                "id": self.id,
                "axon": self.axon,
                "namespace": self.namespace,
                "sensor": self.sensor,
                "trigger": self.trigger,
                "phase": self.phase,
                "started": self.started,
                "finished": self.finished,
                "reason": self.reason,
                "steps": [s.to_dict() for s in self.steps],
            }
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> SensorRunRecord:
        """Parse a stored record; `ValueError` saying what is wrong when it is not one."""
        try:
            data = json.loads(raw)
            return cls(
                id=str(data["id"]),
                axon=str(data["axon"]),
                namespace=str(data.get("namespace", "default")),
                sensor=str(data["sensor"]),
                started=str(data["started"]),
                trigger=_opt_str(data.get("trigger")),
                phase=str(data.get("phase", "Running")),
                finished=_opt_str(data.get("finished")),
                reason=str(data.get("reason") or ""),
                steps=[RunStepRecord.from_dict(s) for s in data.get("steps") or []],
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a sensor-run record: {exc!r}") from None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
