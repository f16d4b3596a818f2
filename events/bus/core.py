"""What every part of the bus shares: errors, options, limits, publish records, KV keys."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, NamedTuple, Protocol, TypeVar, cast

import nats
import nats.errors
import nats.js.errors
from pydantic import BaseModel, ConfigDict, Field

from events import subjects
from events.errors import RanvierError
from events.model import PAYLOAD_TYPES, Event, EventError

T = TypeVar("T")

MSG_ID: Final = "Nats-Msg-Id"
START_HINT: Final = "start one with `ranvier server` or `ranvier up`, or pass --nats-url"
TOPOLOGY_PATIENCE: Final = 20.0
"""Seconds `Bus.connect` keeps asking a JetStream that does not answer (a leader election)."""
KEYS_INACTIVE: Final = 5.0
"""Seconds the server keeps a finished `kv_keys` read's consumer (nats-py's default is 5 min)."""
WATCH_INACTIVE: Final = 10.0
"""Seconds the server keeps a stopped (or cut off) `kv_watch` consumer. nats-py's default of 5
minutes made every `get axon`, scrape tick and progress poll leave a consumer behind, hundreds
per minute, until JetStream refused new ones ('maximum consumers limit reached')."""

# Errors after which a publish is retried with the same Nats-Msg-Id.
RETRYABLE: Final = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
)


KV_KEY_PATTERN: Final = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
"""What a KV key may hold (as nats-py checks it; `kv_key` makes any name fit)."""
WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
"""JetStream's refusal of a write that expected another last revision of its key."""
PLACEMENT_ERRORS: Final = frozenset({10005, 10023, 10074})
"""JetStream's answers to more replicas than it can place: no suitable peers for placement,
insufficient resources, replicas > 1 not supported in non-clustered mode."""


class BusError(RanvierError, RuntimeError):
    """The bus could not do what was asked (see the message)."""


class NoAnswerError(BusError, TimeoutError):
    """JetStream did not answer in time (no server with JetStream, or no leader yet)."""


class ConnectError(BusError, ConnectionError):
    """No NATS server could be reached at the URLs tried."""


class AuthError(ConnectError, PermissionError):
    """The NATS server refused the credentials."""


OUTAGE_ERRORS: Final = (BusError, nats.errors.Error, OSError)
"""What a call can raise while the server restarts or is briefly away (a request timed out,
no responders, the connection reset): loops that run until cancelled log these and go on."""


class RevisionMismatch(BusError):
    """A compare-and-set KV update lost: the key changed since the revision read."""

    def __init__(self, bucket: str, key: str, expected: int) -> None:
        super().__init__(f"{bucket}/{key} is no longer at revision {expected}")
        self.bucket = bucket
        self.key = key
        self.expected = expected


_USERINFO: Final = re.compile(r"^([a-z]+://)?[^@/]*@", re.IGNORECASE)


class ConnectOptions(BaseModel):
    """How to reach and authenticate to NATS (the CLI and settings map onto this)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1, description="Server URLs."
    )
    user: str | None = Field(None, description="User name (with password).")
    password: str | None = Field(None, description="Password (with user).")
    token: str | None = Field(None, description="Authentication token.")
    creds_file: Path | None = Field(None, description="A .creds file (JWT + nkey seed).")
    nkey_seed: Path | None = Field(None, description="A file holding an nkey seed.")
    tls_ca_file: Path | None = Field(None, description="CA bundle to verify the server's TLS.")
    name: str = Field("ranvier", description="Client name shown in server monitoring.")
    connect_timeout: float = Field(2.0, gt=0, description="Seconds per connection attempt.")
    request_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a JetStream reply.")
    reconnect_wait: float = Field(0.5, ge=0, description="Seconds between reconnect attempts.")
    max_reconnect_attempts: int = Field(-1, description="-1: keep reconnecting forever.")
    publish_retry_for: float = Field(
        60.0, gt=0, description="Seconds a publish keeps retrying through outages."
    )

    @property
    def url(self) -> str:
        """The servers as one comma-separated string, for messages (without any credentials
        a URL carries in its user part: messages end up in logs)."""
        return ",".join(_USERINFO.sub(r"\1", server) for server in self.servers)


class StreamLimits(BaseModel):
    """Retention, partitions and replicas of the ranvier streams (docs/architecture.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events_max_age: timedelta = Field(timedelta(days=7), description="Events kept this long.")
    decisions_max_age: timedelta = Field(timedelta(days=7), description="Decisions kept so long.")
    duplicate_window: timedelta = Field(timedelta(minutes=2), description="Msg-Id dedupe window.")
    partitions: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Partitions of the events stream (None: the stream's own, or "
        f"{subjects.DEFAULT_PARTITIONS} when creating it). Fixed once the stream exists.",
    )
    replicas: int | None = Field(
        None,
        ge=1,
        le=5,
        description="Copies of each stream and KV bucket on a NATS cluster. None: 1 for what is "
        "created, and an existing stream or bucket keeps its count.",
    )

    @property
    def num_replicas(self) -> int:
        """The replica count to create streams and buckets with."""
        return self.replicas or 1


class Published(NamedTuple):
    """What the server said about one publish."""

    stream: str
    seq: int
    duplicate: bool


class Outgoing(NamedTuple):
    """One encoded message to publish: subject, bytes, and its Nats-Msg-Id."""

    subject: str
    data: bytes
    msg_id: str


class Delivery(Protocol):
    """One message a durable consumer handed over, as its consumer reads and settles it."""

    @property
    def seq(self) -> int:
        """Stream sequence number."""
        ...

    @property
    def event(self) -> Event | None:
        """The event, or None when the message is not a valid event (see `error`)."""
        ...

    @property
    def error(self) -> EventError | None:
        """Why the message is not a valid event, if it is not."""
        ...

    async def ack(self) -> None:
        """Done with it (with ack-all, with every earlier message too)."""
        ...

    async def term(self) -> None:
        """Give up on it without having processed it."""
        ...


class Fetcher(Protocol):
    """A durable pull consumer as its user sees it: batches of deliveries, then close."""

    async def fetch(self, batch: int = 100, wait: float = 1.0) -> Sequence[Delivery]:
        """Up to `batch` messages; an empty list if none came within `wait` seconds."""
        ...

    async def close(self) -> None:
        """Stop fetching (the durable consumer stays)."""
        ...


def subject_of(event: Event) -> str:
    """The subject of an event, without validating its whole payload again.

    Events are made from typed payloads (already valid), so publishing reads only the fields
    the subject needs. When those are missing or wrong, the full validation runs and its
    `EventError` says what is wrong. (Validating every payload again cost as much as the
    rest of a publish: see bench/bus.py.)
    """
    model = PAYLOAD_TYPES.get(event.type)
    if model is not None:
        try:
            # nats_subject() reads plain attributes; a namespace over the data has them.
            return model.nats_subject(cast(Any, SimpleNamespace(**event.data)))
        except (AttributeError, TypeError):  # a field missing or not a string: validate
            pass
    return event.nats_subject


def kv_key(*parts: str) -> str:
    """A valid KV key from arbitrary names: each part made a safe token, joined with `.`."""
    if not parts:
        raise ValueError("kv_key needs at least one part")
    return ".".join(subjects.token(p) for p in parts)
