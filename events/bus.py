"""The bus: ranvier's one doorway to NATS JetStream.

Everything else (engine runtime, executors, watchers, the CLI) talks to NATS through `Bus`, so
the delivery rules of DESIGN.md live in one place:

- streams and KV buckets are created or updated idempotently on connect, so any process may
  be the first to start;
- every publish carries `Nats-Msg-Id` = the event id, and retries (timeouts, reconnects,
  JetStream briefly unavailable after a restart) reuse it, so the server's duplicate window
  turns "at least once" into "exactly once";
- consumption is batched, durable and explicitly acknowledged (ack / nak(delay) / term);
- KV offers the two primitives exactly-once needs: create (only one claimant wins) and
  compare-and-set update;
- replay reads with an ordered consumer and stops at the end of the stream as it was when the
  replay began, so a replay that re-publishes into the same stream still terminates.

nats-py errors never leak out for things a user can cause: an unreachable server, a refused
password, an oversized event are `RanvierError`s that say what was tried and what to do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import ssl
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, NamedTuple, TypeVar, cast

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from events import subjects
from events.aio import checkpoint
from events.errors import RanvierError
from events.model import DEFAULT_MAX_PAYLOAD, PAYLOAD_TYPES, Event, EventError

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

MSG_ID: Final = "Nats-Msg-Id"
START_HINT: Final = "start one with `ranvier server` or `ranvier up`, or pass --nats-url"
_TOPOLOGY_PATIENCE: Final = 20.0
"""Seconds `Bus.connect` keeps asking a JetStream that does not answer (a leader election)."""
_KEYS_INACTIVE: Final = 5.0
"""Seconds the server keeps a finished `kv_keys` read's consumer (nats-py's default is 5 min)."""
_WATCH_INACTIVE: Final = 10.0
"""Seconds the server keeps a stopped (or cut off) `kv_watch` consumer. nats-py's default of 5
minutes made every `get axon`, scrape tick and progress poll leave a consumer behind, hundreds
per minute, until JetStream refused new ones ('maximum consumers limit reached')."""

# Errors after which a publish is retried with the same Nats-Msg-Id.
_RETRYABLE: Final = (
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


_KV_KEY: Final = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
"""What a KV key may hold (as nats-py checks it; `kv_key` makes any name fit)."""
_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
"""JetStream's refusal of a write that expected another last revision of its key."""
_PLACEMENT_ERRORS: Final = frozenset({10005, 10023, 10074})
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
    """Retention of the ranvier streams (DESIGN.md defaults)."""

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


class Received:
    """A message delivered by a durable consumer, with its event parsed on first use."""

    __slots__ = ("_error", "_event", "_meta", "_parsed", "_seq", "msg")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self._parsed = False
        self._event: Event | None = None
        self._error: EventError | None = None
        self._meta: Msg.Metadata | None = None
        self._seq = 0

    def _parse(self) -> None:
        if not self._parsed:
            try:
                self._event = Event.from_json(self.msg.data)
            except EventError as exc:
                self._error = exc
            self._parsed = True

    @property
    def event(self) -> Event | None:
        """The event, or None when the message is not a valid event (see `error`)."""
        self._parse()
        return self._event

    @property
    def error(self) -> EventError | None:
        """Why the message is not a valid event, if it is not."""
        self._parse()
        return self._error

    @property
    def data(self) -> bytes:
        """The raw bytes as stored."""
        return bytes(self.msg.data)

    @property
    def subject(self) -> str:
        """The subject it was published on."""
        return str(self.msg.subject)

    @property
    def metadata(self) -> Msg.Metadata:
        """JetStream metadata (sequences, deliveries, timestamp), parsed once."""
        if self._meta is None:
            self._meta = self.msg.metadata
        return self._meta

    @property
    def seq(self) -> int:
        """Stream sequence number.

        Read straight from the reply subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>...`
        (9 tokens), or with domain and account hash before the stream (12 or more). The engine
        reads it for every event; nats-py's full `metadata` (a datetime, two dataclasses) was
        5% of the engine runtime's time (bench/engine.py).
        """
        if not self._seq:
            tokens = (self.msg.reply or "").split(".", 8)
            if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
                tail = tokens[8]
                if tail.count(".") == 0:  # the 9-token form: tokens[5] is the stream sequence
                    self._seq = int(tokens[5])
            if not self._seq:  # any other form: nats-py knows them all
                self._seq = int(self.metadata.sequence.stream)
        return self._seq

    @property
    def num_delivered(self) -> int:
        """How many times it was delivered (more than 1 means a redelivery)."""
        return int(self.metadata.num_delivered)

    @property
    def timestamp(self) -> datetime:
        """When the server stored it."""
        stamp: datetime = self.metadata.timestamp
        return stamp

    async def ack(self) -> None:
        """Done with it: never deliver again."""
        await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """Not done: deliver again (after `delay` seconds)."""
        await self.msg.nak(delay=delay)

    async def term(self) -> None:
        """Give up on it: never deliver again, without having processed it."""
        await self.msg.term()

    async def in_progress(self) -> None:
        """Still working on it: restart its ack timer."""
        await self.msg.in_progress()


@dataclass(frozen=True)
class Replayed:
    """One event read by `Bus.replay`: stream sequence, stored bytes, parsed event."""

    seq: int
    raw: bytes
    event: Event
    stored: datetime


class Consumer:
    """A durable pull consumer on one stream; `fetch()` returns batches of `Received`.

    Pull requests are made here rather than with nats-py's `PullSubscription.fetch`, which
    spends a task, a uuid and a wait_for on every message (most of its cost, see
    bench/bus.py). The protocol is JetStream's own: a request to `CONSUMER.MSG.NEXT` with a
    reply inbox; messages arrive on the inbox, and a status message (404 no messages, 408
    expired, 409 ...) ends a request that was not filled. Each request here ends on its own
    (a `no_wait` request, or a lingering one for a single message), so no status is ever
    mistaken for another request's.
    """

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        durable: str,
        registry: set[Any] | None = None,
        prefix: str = api.DEFAULT_PREFIX,
    ) -> None:
        self._nc = nc
        self._registry = registry
        self.stream = stream
        self.durable = durable
        self._next_subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._info_subject = f"{prefix}.CONSUMER.INFO.{stream}.{durable}"
        self._sub: Any = None
        self._inbox = ""
        self._msgs: collections.deque[Msg] = collections.deque()
        self._ended = False  # the current request got its status
        self._arrived = asyncio.Event()

    async def _listen(self) -> None:
        """(Re)subscribe to a fresh inbox; replies to abandoned requests then go nowhere."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            if self._registry is not None:
                self._registry.discard(self._sub)
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        if self._registry is not None:
            self._registry.add(self._sub)

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status is None:
            self._msgs.append(msg)
        elif status != "100":  # 100: heartbeat; anything else ends the request
            self._ended = True
            if status not in ("404", "408"):
                desc = msg.headers.get(api.Header.DESCRIPTION) if msg.headers else None
                log.warning("bus.pull_status", consumer=self.durable, status=status, desc=desc)
        self._arrived.set()

    async def _request(self, batch: int, *, expires: float | None) -> bool:
        """One pull request; True if it ended (filled or by status) within its time."""
        want = len(self._msgs) + batch
        self._ended = False
        req: dict[str, Any] = {"batch": batch}
        if expires is None:
            req["no_wait"] = True
        else:
            req["expires"] = int(expires * 1e9)
        await self._nc.publish(self._next_subject, json.dumps(req).encode(), reply=self._inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (expires or 0) + 2.0  # the server answers well within this
        while len(self._msgs) < want and not self._ended:
            self._arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(left):  # not wait_for: see events/aio.py
                    await self._arrived.wait()
            except TimeoutError:
                return False
        return True

    async def fetch(self, batch: int = 100, wait: float = 1.0) -> list[Received]:
        """Up to `batch` messages; an empty list if none came within `wait` seconds."""
        if self._sub is None:
            await self._listen()
        if not self._msgs:
            ok = await self._request(batch, expires=None)
            if ok and not self._msgs and wait > 0:
                ok = await self._request(1, expires=wait)
                if ok and self._msgs and batch > 1:
                    ok = await self._request(batch - 1, expires=None)
            if not ok:  # no answer (a reconnect?): late replies must not reach the next fetch
                await self._listen()
        out: list[Received] = []
        while self._msgs and len(out) < batch:
            out.append(Received(self._msgs.popleft()))
        return out

    async def num_pending(self) -> int:
        """Messages matching the filter not yet delivered to this consumer."""
        reply = await self._nc.request(self._info_subject, b"", timeout=5)
        info = json.loads(reply.data)
        if "error" in info:
            raise nats.js.errors.APIError.from_error(info["error"])
        return int(info.get("num_pending") or 0)

    async def close(self) -> None:
        """Stop fetching (the durable consumer stays on the server)."""
        if self._sub is None:
            return
        if self._registry is not None:
            self._registry.discard(self._sub)
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()
        self._sub = None


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


class Bus:
    """A connection to NATS with ranvier's streams and buckets; use `async with Bus.connect()`."""

    def __init__(
        self,
        nc: Client,
        options: ConnectOptions,
        limits: StreamLimits,
        callbacks: _Callbacks | None = None,
    ) -> None:
        self.nc = nc
        self._callbacks = callbacks
        self.js: JetStreamContext = nc.jetstream(timeout=options.request_timeout)
        self.options = options
        self.limits = limits
        self._kv: dict[str, KeyValue] = {}
        self.partitions = limits.partitions or subjects.DEFAULT_PARTITIONS
        """The events stream's partition count (read from the stream by `ensure_topology`)."""
        self._acks = _AckRouter(nc)
        # Iterator-style subscriptions still open; drain() would wait for their unread
        # messages until its timeout, so close() unsubscribes them first.
        self._open_subs: set[Any] = set()

    # -- connection --------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        options: ConnectOptions | None = None,
        *,
        limits: StreamLimits | None = None,
        ensure: bool = True,
    ) -> AsyncIterator[Bus]:
        """Connect, ensure streams and buckets (unless `ensure=False`), drain on exit."""
        options = options or ConnectOptions()
        nc, callbacks = await _open(options)
        bus = cls(nc, options, limits or StreamLimits(), callbacks)
        try:
            if ensure:
                await bus._ensure_topology_patiently()
            yield bus
        finally:
            await bus.close()

    async def _ensure_topology_patiently(self) -> None:
        """`ensure_topology`, asked again for a while when JetStream does not answer: on a
        cluster a stream whose leader just died answers nothing until its servers have elected
        another (seconds), and a process starting then should wait rather than fail."""
        deadline = time.monotonic() + min(self.options.publish_retry_for, _TOPOLOGY_PATIENCE)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.ensure_topology()
                return
            except NoAnswerError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.info("bus.topology_retry", url=self.url, attempt=attempt, error=str(exc))
                await asyncio.sleep(min(0.2 * attempt, 1.0))

    async def next_reconnect(self) -> None:
        """Return when the connection next comes back after an outage.

        A server restart forgets ephemeral consumers, so a KV watch (an ordered consumer)
        may stall after it; followers use this to watch again.
        """
        if self._callbacks is None:
            await asyncio.Event().wait()  # never reconnects: wait until cancelled
            return
        await self._callbacks.reconnect.wait()

    async def close(self) -> None:
        """Drain (finish in-flight work) then close; safe to call twice."""
        if self.nc.is_closed:
            return
        if self._callbacks is not None:
            self._callbacks.closing = True
        for sub in list(self._open_subs):
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._open_subs.clear()
        try:
            await self.nc.drain()
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("bus.drain_failed", error=repr(exc))
        finally:
            if not self.nc.is_closed:
                try:
                    await self.nc.close()
                except OSError as exc:  # the server died under us: nothing is left to flush
                    log.warning("bus.close_failed", error=repr(exc))

    @property
    def max_payload(self) -> int:
        """The largest message the connected server accepts (from its INFO)."""
        return int(self.nc.max_payload or DEFAULT_MAX_PAYLOAD)

    @property
    def url(self) -> str:
        """The server currently connected to."""
        server = self.nc.connected_url
        return server.geturl() if server is not None else self.options.url

    # -- topology ----------------------------------------------------------------------------

    def stream_configs(self) -> list[api.StreamConfig]:
        """The three ranvier streams as DESIGN.md describes them."""
        dup = self.limits.duplicate_window.total_seconds()
        replicas = self.limits.num_replicas
        source, dest = subjects.partition_transform(self.partitions)
        return [
            api.StreamConfig(
                name=subjects.EVENTS_STREAM,
                subjects=[subjects.EVENTS_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=self.limits.events_max_age.total_seconds(),
                duplicate_window=dup,
                num_replicas=replicas,
                subject_transform=api.SubjectTransform(src=source, dest=dest),
                metadata={subjects.PARTITIONS_KEY: str(self.partitions)},
            ),
            api.StreamConfig(
                name=subjects.ACTIONS_STREAM,
                subjects=[subjects.ACTIONS_SUBJECTS],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=dup,
                num_replicas=replicas,
            ),
            api.StreamConfig(
                name=subjects.DECISIONS_STREAM,
                subjects=[subjects.DECISIONS_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=self.limits.decisions_max_age.total_seconds(),
                duplicate_window=dup,
                num_replicas=replicas,
            ),
        ]

    async def ensure_topology(self) -> None:
        """Create or update the streams and KV buckets; idempotent, safe to race.

        The events stream's partition count is fixed when it is created: a stream created
        with another count than `limits.partitions` asks for is an error (never silent
        re-partitioning); with no count asked for, the stream's own is adopted.
        """
        try:
            await self._adopt_partitions()
            for config in self.stream_configs():
                await self._ensure_stream(config)
            for bucket in (
                subjects.AXONS_BUCKET,
                subjects.STATE_BUCKET,
                subjects.RUNS_BUCKET,
                subjects.MODELS_BUCKET,
            ):
                await self._bucket(bucket)
                if self.limits.replicas is not None:
                    await self._ensure_replicas(f"KV_{bucket}", self.limits.replicas)
            if self.limits.replicas is not None:  # the engines' lease bucket, once they made it
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    leases = f"KV_{subjects.LEASES_BUCKET}"
                    await self._ensure_replicas(leases, self.limits.replicas)
        except nats.js.errors.APIError as exc:
            raise self._placement_error(exc) or BusError(
                f"cannot set up ranvier's streams on {self.url}: {exc.description}",
                hint="is JetStream enabled on this server (nats-server --jetstream)?",
            ) from None
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
            raise NoAnswerError(
                f"JetStream does not answer on {self.url}",
                hint="enable it (nats-server --jetstream) or use `ranvier server`",
            ) from None

    async def _adopt_partitions(self) -> None:
        try:
            info = await self.js.stream_info(subjects.EVENTS_STREAM)
        except nats.js.errors.NotFoundError:
            return  # created with ours
        recorded = (info.config.metadata or {}).get(subjects.PARTITIONS_KEY)
        if recorded is None:
            if info.state.messages:
                raise BusError(
                    f"the events stream on {self.url} holds {info.state.messages} events stored "
                    "without partitions (by an older ranvier); they cannot be partitioned in place",
                    hint="`ranvier events export` them, delete the stream "
                    f"{subjects.EVENTS_STREAM} (or the state dir), then `ranvier events import`",
                )
            return  # empty: updated to ours
        count = int(recorded)
        wanted = self.limits.partitions
        if wanted is not None and wanted != count:
            raise BusError(
                f"the events stream on {self.url} has {count} partitions, but {wanted} are "
                "configured; the partition count is fixed when the stream is created",
                hint=f"use --partitions {count} (or RANVIER_PARTITIONS={count}), or export the "
                "events, delete the stream and import them into a new one",
            )
        self.partitions = count

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        try:
            info = await self.js.stream_info(config.name or "")
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:  # lost a creation race, or...
                if self._placement_error(exc) is not None:  # ...cannot place its replicas
                    raise
            else:
                log.info("bus.stream_created", stream=config.name, replicas=config.num_replicas)
                return
            info = await self.js.stream_info(config.name or "")
        current = info.config
        if self.limits.replicas is None:  # not asked for: an existing stream keeps its count
            config = config.evolve(num_replicas=current.num_replicas)
        if (
            current.subjects != config.subjects
            or (current.max_age or 0) != (config.max_age or 0)
            or (current.duplicate_window or 0) != (config.duplicate_window or 0)
            or (current.num_replicas or 1) != (config.num_replicas or 1)
            or current.subject_transform != config.subject_transform
        ):
            await self.js.update_stream(config)
            log.info(
                "bus.stream_updated",
                stream=config.name,
                replicas=config.num_replicas,
                was_replicas=current.num_replicas,
            )

    async def _ensure_replicas(self, stream: str, replicas: int) -> None:
        """Scale an existing stream (a KV bucket's) to `replicas` copies, keeping the rest."""
        current = (await self.js.stream_info(stream)).config
        if (current.num_replicas or 1) != replicas:
            await self.js.update_stream(current.evolve(num_replicas=replicas))
            log.info(
                "bus.stream_updated",
                stream=stream,
                replicas=replicas,
                was_replicas=current.num_replicas,
            )

    def _placement_error(self, exc: nats.js.errors.APIError) -> BusError | None:
        """A clear error when the server cannot hold the replicas asked for, else None."""
        wanted = self.limits.num_replicas
        if wanted <= 1 or exc.err_code not in _PLACEMENT_ERRORS:
            return None
        info: dict[str, Any] = getattr(self.nc, "_server_info", None) or {}  # INFO from the server
        if not info.get("cluster"):
            return BusError(
                f"cannot keep ranvier's streams and buckets with {wanted} replicas: the NATS "
                f"server at {self.url} is not part of a cluster ({exc.description})",
                hint="use --replicas 1 (RANVIER_REPLICAS=1) with a single server, "
                "or connect to a NATS cluster",
            )
        found = len(info.get("connect_urls") or ()) or None
        servers = f"{found} server(s)" if found else "fewer servers"
        return BusError(
            f"cannot keep ranvier's streams and buckets with {wanted} replicas: the NATS "
            f"cluster at {self.url} has {servers} up ({exc.description})",
            hint=f"lower --replicas (RANVIER_REPLICAS) to at most {found or 'its size'}, "
            "or add servers to the cluster",
        )

    async def _bucket(self, bucket: str) -> KeyValue:
        kv = self._kv.get(bucket)
        if kv is None:
            try:
                kv = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                kv = await self.create_bucket(bucket)
            self._kv[bucket] = kv
        return kv

    async def create_bucket(self, bucket: str, *, ttl: float = 0.0, history: int = 5) -> KeyValue:
        """Create a KV bucket (every key expiring `ttl` seconds after its last write, if set),
        with the streams' replica count; a bucket that exists already is returned as it is."""
        replicas = self.limits.num_replicas
        try:
            kv = await self.js.create_key_value(
                bucket=bucket,
                history=history,
                ttl=ttl or None,
                storage=api.StorageType.FILE,
                replicas=replicas,
            )
        except nats.js.errors.APIError as exc:
            raise self._placement_error(exc) or exc from None
        log.info("bus.bucket_created", bucket=bucket, ttl=ttl, replicas=replicas)
        self._kv[bucket] = kv
        return kv

    async def stream_info(self, stream: str = subjects.EVENTS_STREAM) -> api.StreamInfo:
        """The server's view of a stream (messages, first/last sequence, config)."""
        try:
            return await self.js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise BusError(f"no stream named {stream!r} on {self.url}") from None

    # -- publishing --------------------------------------------------------------------------

    def outgoing(self, event: Event, *, subject: str | None = None) -> Outgoing:
        """Encode an event for publishing (refusing oversized ones); subject from its type."""
        data = event.encode(self.max_payload)
        return Outgoing(subject or subject_of(event), data, event.id)

    async def publish(
        self, event: Event, *, msg_id: str | None = None, subject: str | None = None
    ) -> Published:
        """Publish one event and wait for the stream's ack (retrying with the same Msg-Id)."""
        item = self.outgoing(event, subject=subject)
        if msg_id is not None:
            item = item._replace(msg_id=msg_id)
        return await self.publish_encoded(item)

    async def publish_encoded(self, item: Outgoing) -> Published:
        """Publish one already-encoded message, retrying through outages."""
        deadline = time.monotonic() + self.options.publish_retry_for
        attempt = 0
        while True:
            attempt += 1
            try:
                ack = await self.js.publish(
                    item.subject,
                    item.data,
                    timeout=self.options.request_timeout,
                    headers={MSG_ID: item.msg_id},
                )
                return Published(ack.stream, ack.seq, bool(ack.duplicate))
            except _RETRYABLE as exc:
                if time.monotonic() >= deadline:
                    raise self._publish_failed(1, exc) from None
                log.info("bus.publish_retry", msg_id=item.msg_id, attempt=attempt, error=repr(exc))
                await asyncio.sleep(min(0.05 * attempt, 1.0))
            except nats.js.errors.APIError as exc:
                raise BusError(f"cannot publish to {item.subject}: {exc.description}") from None

    async def publish_many(
        self, events: Iterable[Event], *, max_in_flight: int = 256
    ) -> list[Published]:
        """Publish events concurrently (bounded); all are encoded and checked first."""
        items = [self.outgoing(ev) for ev in events]
        return await self.publish_many_encoded(items, max_in_flight=max_in_flight)

    async def publish_many_encoded(
        self, items: Sequence[Outgoing], *, max_in_flight: int = 256
    ) -> list[Published]:
        """Publish encoded messages with at most `max_in_flight` unacknowledged.

        Acks come back through one inbox subscription (`_AckRouter`). A message whose ack fails
        with a retryable error, or does not come within the request timeout (a reconnect lost
        it), is published again in a later round with the same Msg-Id, so the stream stores it
        once.
        Order is kept within a round; a retried message lands after the ones that went through.
        """
        results: list[Published | None] = [None] * len(items)
        todo = list(range(len(items)))
        deadline = time.monotonic() + self.options.publish_retry_for
        last_error: BaseException | None = None
        timeout = self.options.request_timeout
        while todo:
            round_ = _PublishRound(
                nc=self.nc,
                router=self._acks,
                items=items,
                results=results,
                max_in_flight=max_in_flight,
                timeout=timeout,
            )
            failed = await round_.run(todo)
            if not failed:
                break
            last_error = failed[1]
            if time.monotonic() >= deadline:
                raise self._publish_failed(len(failed[0]), last_error)
            log.info("bus.publish_retry", count=len(failed[0]), error=repr(last_error))
            todo = failed[0]
            await asyncio.sleep(0.1)
        return [r for r in results if r is not None]

    async def publish_tail_acked(
        self, items: Sequence[Outgoing], *, last_seq: int | None, max_in_flight: int = 1024
    ) -> int | None:
        """Publish to a stream this process alone writes to, asking an ack of the last only.

        `last_seq` is the stream's last sequence before these messages, as the previous call
        returned it (None: not known). The server stores one connection's messages to a stream
        in the order they were sent, so when the last message's ack says it was stored at
        `last_seq + len(items)`, every one of them was stored, once: a message lost (an outage,
        a stream leader changing) or found to be a duplicate would have left a gap, and nothing
        else writes there. Otherwise, or when `last_seq` is not known, all of them are published
        again with an ack each (`publish_many_encoded`; their Msg-Ids make that store nothing
        twice). Returns the stream's last sequence afterwards, None when it is not known.

        One ack per call instead of one per message: the engine runtime's action requests and
        decision records (about 1.4 per event) made most of its acks (bench/engine.py).
        """
        if not items:
            return last_seq
        stored: list[int] = []
        if last_seq is not None and len(items) > 1:
            for item in items[:-1]:
                await self.nc.publish(item.subject, item.data, headers={MSG_ID: item.msg_id})
            [ack] = await self.publish_many_encoded(items[-1:])
            if not ack.duplicate and ack.seq == last_seq + len(items):
                return ack.seq
            if not ack.duplicate:
                stored.append(ack.seq)
            log.info(
                "bus.tail_ack_gap", stream=ack.stream, expected=last_seq + len(items), got=ack.seq
            )
        acks = await self.publish_many_encoded(items, max_in_flight=max_in_flight)
        stored += [a.seq for a in acks if not a.duplicate]
        return max(stored) if stored else None

    def _publish_failed(self, count: int, exc: BaseException | None) -> BusError:
        return BusError(
            f"could not publish {count} message(s) to {self.url} within "
            f"{self.options.publish_retry_for:g}s: {exc!r}",
            hint="is the server running and JetStream enabled?",
        )

    # -- consuming ---------------------------------------------------------------------------

    async def consumer(
        self,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        max_ack_pending: int = 10_000,
        deliver_from: int | datetime | None = None,
    ) -> Consumer:
        """Create (or bind to) a durable pull consumer with explicit acks."""
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            filter_subject=filter_subject,
            **_deliver_policy(deliver_from),
        )
        try:
            try:
                await self.js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == 10059:  # the stream itself does not exist
                    raise
                await self.js.add_consumer(stream, config)
        except nats.js.errors.NotFoundError:
            raise BusError(f"no stream named {stream!r} on {self.url}") from None
        except nats.js.errors.APIError as exc:
            raise BusError(f"cannot create consumer {durable!r}: {exc.description}") from None
        return Consumer(self.nc, stream=stream, durable=durable, registry=self._open_subs)

    async def consume(
        self,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        batch: int = 100,
        max_wait: float = 1.0,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        yield_empty: bool = False,
        stop_when_empty: bool = False,
    ) -> AsyncGenerator[list[Received], None]:
        """Yield batches from a durable consumer until the caller stops iterating.

        Each message must be acked, nak'ed or term'ed by the caller. `yield_empty` yields `[]`
        after `max_wait` seconds without messages (for idle work); `stop_when_empty` ends the
        iteration at the first such pause instead.
        """
        consumer = await self.consumer(
            stream,
            durable,
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
        )
        try:
            while True:
                checkpoint()  # see events/aio.py
                got = await consumer.fetch(batch, wait=max_wait)
                if got or yield_empty:
                    yield got
                if not got and stop_when_empty:
                    return
        finally:
            await consumer.close()

    # -- replay ------------------------------------------------------------------------------

    async def replay(
        self,
        *,
        since: int | datetime | None = None,
        until: datetime | None = None,
        filter_subject: str | None = None,
        stream: str = subjects.EVENTS_STREAM,
        idle: float = 2.0,
    ) -> AsyncGenerator[Replayed, None]:
        """Read stored events in order, from `since` (a stream sequence or a store time).

        Ends at the last message the stream held when the replay began (or at `until`,
        compared with the time the server stored each message). Messages that are not valid
        events are skipped with a warning.
        """
        info = await self.stream_info(stream)
        last = int(info.state.last_seq or 0)
        if not info.state.messages or (isinstance(since, int) and since > last):
            return
        config = api.ConsumerConfig(**_deliver_policy(since))
        sub = await self.js.subscribe(
            filter_subject or _stream_subjects(stream),
            stream=stream,
            ordered_consumer=True,
            config=config,
            idle_heartbeat=idle,
        )
        self._open_subs.add(sub)
        try:
            start = await sub.consumer_info()
            if not start.num_pending and not (start.delivered and start.delivered.consumer_seq):
                return  # nothing matches (what was delivered already waits in our queue)
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle * 2)
                except nats.errors.TimeoutError:
                    if not (await sub.consumer_info()).num_pending:
                        return
                    continue
                meta = msg.metadata
                seq = int(meta.sequence.stream)
                if seq > last or (until is not None and meta.timestamp > until):
                    return
                raw = bytes(msg.data)
                try:
                    event = Event.from_json(raw)
                except EventError as exc:
                    log.warning("bus.replay_skipped", seq=seq, error=str(exc))
                else:
                    yield Replayed(seq, raw, event, meta.timestamp)
                if seq >= last or meta.num_pending == 0:
                    return
        finally:
            self._open_subs.discard(sub)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def follow(
        self,
        *,
        since: int | datetime | None = None,
        filter_subject: str | None = None,
        stream: str = subjects.EVENTS_STREAM,
    ) -> AsyncGenerator[Replayed, None]:
        """Events as they arrive (from `since`, else only new ones), until the caller stops."""
        policy = (
            {"deliver_policy": api.DeliverPolicy.NEW} if since is None else _deliver_policy(since)
        )
        sub = await self.js.subscribe(
            filter_subject or _stream_subjects(stream),
            stream=stream,
            ordered_consumer=True,
            config=api.ConsumerConfig(**policy),
        )
        self._open_subs.add(sub)
        try:
            while True:
                checkpoint()
                try:
                    msg = await sub.next_msg(timeout=None)
                except nats.errors.TimeoutError:
                    continue
                meta = msg.metadata
                raw = bytes(msg.data)
                try:
                    event = Event.from_json(raw)
                except EventError as exc:
                    log.warning("bus.follow_skipped", seq=meta.sequence.stream, error=str(exc))
                    continue
                yield Replayed(int(meta.sequence.stream), raw, event, meta.timestamp)
        finally:
            self._open_subs.discard(sub)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # -- key-value ---------------------------------------------------------------------------

    async def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """The value and revision of `key`, or None if it does not exist (or was deleted).

        Retried through outages (a stream leader changing, a reconnect), as writes are.
        """
        kv = await self._bucket(bucket)
        try:
            entry = await self._retrying(lambda: kv.get(key), bucket=bucket, key=key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return bytes(entry.value or b""), int(entry.revision or 0)

    async def _retrying(self, call: Callable[[], Awaitable[_T]], *, bucket: str, key: str) -> _T:
        """`call()` (a KV read) made again through outages (see `_Patience`)."""
        patience = _Patience(self)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except _RETRYABLE as exc:
                if patience.over():
                    raise  # as without retrying: the caller knows this error
                log.info("bus.kv_retry", bucket=bucket, key=key, attempt=attempt, error=repr(exc))
                await asyncio.sleep(min(0.05 * attempt, 1.0))

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Set `key` unconditionally; returns the new revision.

        Retried through outages with one `Nats-Msg-Id`, so a put whose answer was lost is
        stored once (see `_kv_write`).
        """
        revision, _ = await self._kv_write(bucket, key, value, expected=None)
        return revision or 0  # never None: nothing was expected, so nothing refused

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int | None:
        """Create `key` only if absent (or deleted): the revision if we won, None if it existed.

        A definite answer even across a stream leader's crash (see `_kv_write`); None also means
        the winner's value can be read now.
        """
        revision, last = await self._kv_write(bucket, key, value, expected=0, read_last=True)
        if revision is None and last is not None and _kv_deleted(last):
            revision, _ = await self._kv_write(bucket, key, value, expected=int(last.seq or 0))
        return revision

    async def kv_update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        """Compare-and-set: write only if `key` is at `last_revision` (else `RevisionMismatch`).

        A definite answer even across a stream leader's crash (see `_kv_write`).
        """
        revision, _ = await self._kv_write(bucket, key, value, expected=last_revision)
        if revision is None:
            raise RevisionMismatch(bucket, key, last_revision)
        return revision

    async def _kv_write(
        self,
        bucket: str,
        key: str,
        value: bytes,
        *,
        expected: int | None,
        read_last: bool = False,
    ) -> tuple[int | None, api.RawStreamMsg | None]:
        """Write `key` if its last revision is `expected` (0: none; None: whatever it is);
        (new revision, None) if it was, else (None, the key's last message as the stream's
        leader has it, when it was read: with `read_last`, or after a retry).

        On a replicated bucket a write's answer can be lost while the write itself is stored (the
        leader crashed after committing it), and asking again is refused: the key moved on. So
        the write is retried through outages with one `Nats-Msg-Id`, and a refusal after such a
        retry is checked against the key's last message: our Msg-Id there means we won. (The
        server checks the expected revision before duplicates, so the Msg-Id alone cannot tell.)
        A refusal can also come while the winning write is still being replicated, before the
        leader can read it back; the last message is awaited (a few seconds at most) so that a
        loser can read the winner's value as soon as it is told it lost.
        """
        if not _KV_KEY.match(key) or key.startswith(".") or key.endswith("."):
            raise nats.js.errors.InvalidKeyError(description=f"invalid KV key {key!r}")
        await self._bucket(bucket)  # the bucket must exist (created here if not)
        subject = f"$KV.{bucket}.{key}"
        msg_id = uuid.uuid4().hex
        headers = {MSG_ID: msg_id}
        if expected is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
        patience = _Patience(self)
        attempt = 0
        while True:
            attempt += 1
            try:
                ack = await self.js.publish(
                    subject, value, timeout=self.options.request_timeout, headers=headers
                )
                return int(ack.seq), None
            except _RETRYABLE as exc:
                if patience.over():
                    raise  # as without retrying: the caller knows this error
                log.info("bus.kv_retry", bucket=bucket, key=key, attempt=attempt, error=repr(exc))
                await asyncio.sleep(min(0.05 * attempt, 1.0))
            except nats.js.errors.APIError as exc:
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
                break
        if attempt == 1 and not read_last:
            return None, None
        last = await self._kv_last(bucket, key)
        if attempt > 1 and last is not None and (last.headers or {}).get(MSG_ID) == msg_id:
            log.info("bus.kv_retry_stored", bucket=bucket, key=key, revision=last.seq)
            return int(last.seq or 0), None
        return None, last

    async def _kv_last(self, bucket: str, key: str) -> api.RawStreamMsg | None:
        """The last message of `key` in its bucket's stream, waiting briefly for one that was
        accepted but is not readable yet (None if none shows)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.request_timeout
        stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"
        while True:
            try:
                return await self._retrying(
                    lambda: self.js.get_msg(stream, subject=subject), bucket=bucket, key=key
                )
            except nats.js.errors.NotFoundError:
                if loop.time() >= deadline:
                    return None
            await asyncio.sleep(0.01)

    async def kv_delete(self, bucket: str, key: str, *, last_revision: int | None = None) -> None:
        """Delete `key` (a no-op if it does not exist); with `last_revision`, only if the key
        is still at that revision (else `RevisionMismatch`)."""
        kv = await self._bucket(bucket)
        if last_revision is None:
            await kv.delete(key)
            return
        try:
            await kv.delete(key, last=last_revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RevisionMismatch(bucket, key, last_revision) from None

    async def kv_keys(self, bucket: str, pattern: str = ">") -> list[str]:
        """Keys currently set in `bucket` that match `pattern` (NATS wildcards).

        Read with an ephemeral pull consumer (last message per key, headers only): a pull
        consumer delivers nothing until asked, so its pending count is exact before the first
        fetch. nats-py's `keys()` and watch-based listing decide "all current values seen" from
        a push consumer's info, which races with delivery: under load it could announce the end
        before the first key arrived and return too few keys.
        """
        await self._bucket(bucket)  # the bucket must exist; a clear error otherwise
        stream = f"KV_{bucket}"
        prefix = f"$KV.{bucket}."
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=api.AckPolicy.NONE,
            headers_only=True,
            filter_subject=prefix + pattern,
            inactive_threshold=_KEYS_INACTIVE,
            max_ack_pending=-1,
        )
        sub = await self.js.pull_subscribe(prefix + pattern, stream=stream, config=config)
        keys: dict[str, None] = {}  # ordered set: a change while reading moves or drops a key
        try:
            remaining = (await sub.consumer_info()).num_pending or 0
            while remaining > 0:
                msgs = await sub.fetch(min(remaining, 1024), timeout=self.options.request_timeout)
                for msg in msgs:
                    remaining = msg.metadata.num_pending
                    key = msg.subject[len(prefix) :]
                    keys.pop(key, None)
                    if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                        keys[key] = None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return list(keys)

    async def kv_watch(
        self, bucket: str, pattern: str = ">", *, include_current: bool = True
    ) -> AsyncGenerator[KVChange, None]:
        """Changes to keys matching `pattern`, current values first (unless told otherwise).

        A deleted key yields a change with `value=None`. Iterate until you have seen enough.
        A change is `initial` when its revision is no newer than the bucket's last revision
        when the watch began: exact, where nats-py's "current values sent" marker races with
        delivery (the reason `kv_keys` does not use it either).
        """
        kv = await self._bucket(bucket)
        began = int((await self.stream_info(f"KV_{bucket}")).state.last_seq or 0)
        watcher = await kv.watch(pattern, inactive_threshold=_WATCH_INACTIVE)
        try:
            async for entry in watcher:
                if entry is None:  # nats-py's marker after the current values: not needed
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                revision = int(entry.revision or 0)
                change = KVChange(
                    key=str(entry.key),
                    value=None if deleted else bytes(entry.value or b""),
                    revision=revision,
                    initial=revision <= began,
                )
                if include_current or not change.initial:
                    yield change
        finally:
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped


AckHandler = Callable[[int, Published | None, BaseException | None], None]


class _AckRouter:
    """Publish acks for pipelined publishes, through one wildcard inbox subscription.

    nats-py's `publish_async` makes a Future, a wait_for and a PubAck dataclass per message;
    at tens of thousands of messages per second that is most of the client's cost. Here each
    publish carries a reply subject `<inbox>.<n>` and its ack calls a plain callback, which is
    what the JetStream protocol needs and nothing more. nats-py re-subscribes the inbox after a
    reconnect; acks lost in an outage are handled by the caller's timeout and retry.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._next = 0
        self._handlers: dict[str, tuple[AckHandler, int]] = {}

    async def start(self) -> None:
        """Subscribe to the ack inbox (once)."""
        if not self._prefix:
            prefix = f"{self._nc.new_inbox()}."
            await self._nc.subscribe(f"{prefix}*", cb=self._on_ack)
            self._prefix = prefix

    def expect(self, handler: AckHandler, index: int) -> tuple[str, str]:
        """A fresh reply subject whose ack goes to `handler(index, ...)`; returns (token, reply)."""
        self._next += 1
        token = str(self._next)
        self._handlers[token] = (handler, index)
        return token, self._prefix + token

    def forget(self, token: str) -> None:
        """Stop waiting for an ack (a late one is then ignored)."""
        self._handlers.pop(token, None)

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._handlers.pop(msg.subject[len(self._prefix) :], None)
        if entry is None:
            return
        handler, index = entry
        published, error = _parse_ack(msg)
        handler(index, published, error)


def _parse_ack(msg: Msg) -> tuple[Published | None, BaseException | None]:
    """A JetStream publish ack: the stored position, or the error the server gave."""
    if msg.headers and msg.headers.get(api.Header.STATUS) == "503":
        return None, nats.js.errors.NoStreamResponseError()
    try:
        resp = json.loads(msg.data)
    except ValueError:
        return None, nats.errors.Error(f"bad publish ack: {msg.data[:80]!r}")
    if "error" in resp:
        return None, nats.js.errors.APIError.from_error(resp["error"])
    return Published(resp["stream"], int(resp["seq"]), bool(resp.get("duplicate", False))), None


class _PublishRound:
    """One pass of `publish_many_encoded` over the messages still to publish."""

    def __init__(
        self,
        *,
        nc: Client,
        router: _AckRouter,
        items: Sequence[Outgoing],
        results: list[Published | None],
        max_in_flight: int,
        timeout: float,
    ) -> None:
        self.nc = nc
        self.router = router
        self.items = items
        self.results = results
        self.timeout = timeout
        self.free = max_in_flight
        # Wake the publisher when a quarter of the window is free, not on every ack: one
        # wake-up per burst instead of one per message.
        self.low_water = max(1, max_in_flight // 4)
        self.wake_at = 1
        self.waiter: asyncio.Future[None] | None = None
        self.inflight: dict[str, int] = {}  # ack token -> item index
        self.tokens: dict[int, str] = {}  # item index -> ack token
        self.retry: list[int] = []
        self.errors: list[BaseException] = []
        self.fatal: list[BaseException] = []

    def settle(self, index: int, published: Published | None, error: BaseException | None) -> None:
        """Ack callback: record the position, or queue a retry, and free a window slot."""
        token = self.tokens.pop(index, None)
        if token is None:
            return
        del self.inflight[token]
        if published is not None:
            self.results[index] = published
        elif isinstance(error, _RETRYABLE):
            self.retry.append(index)
            self.errors.append(error)
        else:
            self.fatal.append(error or RuntimeError("publish failed"))
        self.free += 1
        if self.free >= self.wake_at and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def give_up_on_inflight(self) -> None:
        """Acks that did not come are presumed lost: forget them and queue them again."""
        self.errors.append(TimeoutError(f"no ack within {self.timeout}s"))
        for token, index in self.inflight.items():
            self.router.forget(token)
            self.retry.append(index)
        self.free += len(self.inflight)
        self.inflight.clear()
        self.tokens.clear()

    async def wait_for_acks(self, *, all_of_them: bool) -> None:
        """Wait for a free slot (or for every ack); a window stuck for `timeout` is reset."""
        while self.inflight and (all_of_them or self.free <= 0):
            self.wake_at = self.free + len(self.inflight) if all_of_them else self.low_water
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self.timeout):
                    await self.waiter
            except TimeoutError:
                self.give_up_on_inflight()
            finally:
                self.waiter = None

    async def run(self, todo: list[int]) -> tuple[list[int], BaseException] | None:
        """Publish `todo`; returns the indexes to retry and the last error, if any."""
        await self.router.start()
        for pos, i in enumerate(todo):
            if self.fatal:
                break
            if self.free <= 0:
                await self.wait_for_acks(all_of_them=False)
            item = self.items[i]
            token, reply = self.router.expect(self.settle, i)
            self.inflight[token] = i
            self.tokens[i] = token
            self.free -= 1
            try:
                await self.nc.publish(
                    item.subject, item.data, reply=reply, headers={MSG_ID: item.msg_id}
                )
            except nats.errors.Error as exc:
                self.errors.append(exc)
                self.give_up_on_inflight()
                self.retry.extend(todo[pos + 1 :])
                break
        await self.wait_for_acks(all_of_them=True)
        if self.fatal:
            first = self.fatal[0]
            desc = getattr(first, "description", None) or repr(first)
            raise BusError(f"cannot publish: {desc}")
        if self.retry:
            return sorted(set(self.retry)), self.errors[-1] if self.errors else TimeoutError("lost")
        return None


class _Patience:
    """How long a KV operation keeps trying: through a leader election on a live connection
    (up to `publish_retry_for`), but only briefly while no server can be reached at all, so that
    a caller whose server is gone (a shutdown after a crash) hears of it as it did before."""

    def __init__(self, bus: Bus) -> None:
        self._nc = bus.nc
        now = time.monotonic()
        self._end = now + bus.options.publish_retry_for
        self._grace = 2 * bus.options.reconnect_wait + 0.5  # long enough to reach another server
        self._offline_end: float | None = None

    def over(self) -> bool:
        """Whether to give up now (called after each failed attempt)."""
        now = time.monotonic()
        if self._nc.is_connected:
            self._offline_end = None
        elif self._offline_end is None:
            self._offline_end = now + self._grace
        return now >= self._end or (self._offline_end is not None and now >= self._offline_end)


class KVChange(NamedTuple):
    """One change seen by `Bus.kv_watch`."""

    key: str
    value: bytes | None
    revision: int
    initial: bool


def _kv_deleted(msg: api.RawStreamMsg) -> bool:
    """Whether a KV stream message is a delete or purge marker."""
    return (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE")


def _stream_subjects(stream: str) -> str:
    """The subject filter that covers a whole ranvier stream."""
    return {
        subjects.EVENTS_STREAM: subjects.STORED_EVENTS,
        subjects.ACTIONS_STREAM: subjects.ACTIONS_SUBJECTS,
        subjects.DECISIONS_STREAM: subjects.DECISIONS_SUBJECTS,
    }.get(stream, ">")


def _deliver_policy(since: int | datetime | None) -> dict[str, Any]:
    if since is None:
        return {"deliver_policy": api.DeliverPolicy.ALL}
    if isinstance(since, datetime):
        return {"deliver_policy": api.DeliverPolicy.BY_START_TIME, "opt_start_time": since}
    return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": max(since, 1)}


class _Callbacks:
    """nats-py's connection callbacks, logged as structlog events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures: list[BaseException] = []
        self.connected = False  # errors before the first connect are raised, not logged
        self.closing = False
        self.reconnect = asyncio.Event()  # set (then replaced) at each reconnect

    async def error(self, exc: Exception) -> None:
        self.failures.append(exc)
        if self.connected and not self.closing:
            log.warning("bus.error", url=self.url, error=repr(exc))

    async def disconnected(self) -> None:
        if self.connected and not self.closing:
            log.warning("bus.disconnected", url=self.url)

    async def reconnected(self) -> None:
        log.info("bus.reconnected", url=self.url)
        fired, self.reconnect = self.reconnect, asyncio.Event()
        fired.set()

    async def closed(self) -> None:
        log.debug("bus.closed", url=self.url)


async def _open(options: ConnectOptions) -> tuple[Client, _Callbacks]:
    """Connect once without retrying (so failures are quick and clear), then allow reconnects."""
    cb = _Callbacks(options.url)
    kwargs: dict[str, Any] = {
        "servers": options.servers,
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        # nats-py tries each server until it is over max_reconnect_attempts (1: twice).
        "reconnect_time_wait": 0.05,
        "max_reconnect_attempts": 1,
        "allow_reconnect": False,
        "error_cb": cb.error,
        "disconnected_cb": cb.disconnected,
        "reconnected_cb": cb.reconnected,
        "closed_cb": cb.closed,
        "user": options.user,
        "password": options.password,
        "token": options.token,
    }
    for path, what in ((options.creds_file, "creds file"), (options.nkey_seed, "nkey seed")):
        if path is not None and not path.is_file():
            raise ConnectError(f"{what} {path} does not exist")
    if options.creds_file is not None:
        kwargs["user_credentials"] = str(options.creds_file)
    if options.nkey_seed is not None:
        kwargs["nkeys_seed"] = str(options.nkey_seed)
    if options.tls_ca_file is not None:
        kwargs["tls"] = _tls_context(options.tls_ca_file)
    nc = Client()
    try:
        await nc.connect(**kwargs)
    except nats.errors.AuthorizationError:
        await _discard(nc)
        raise _auth_error(options) from None
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        await _discard(nc)
        if any(isinstance(f, nats.errors.AuthorizationError) for f in cb.failures) or (
            "authorization" in str(exc).lower()
        ):
            raise _auth_error(options) from None
        cause = cb.failures[-1] if cb.failures else exc
        if isinstance(cause, ssl.SSLError):
            raise ConnectError(
                f"TLS with the NATS server at {options.url} failed ({_reason(cause)})",
                hint="pass the CA that signed its certificate with --tls-ca (RANVIER_TLS_CA_FILE)",
            ) from None
        raise ConnectError(
            f"cannot reach a NATS server at {options.url} ({_reason(cause)})", hint=START_HINT
        ) from None
    # Connected: from now on a lost connection is retried rather than fatal. nats-py reads
    # these options at reconnect time, so enabling them after the first connect is safe.
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = options.max_reconnect_attempts
    nc.options["reconnect_time_wait"] = options.reconnect_wait
    cb.connected = True
    return nc, cb


async def _discard(nc: Client) -> None:
    """Close a client whose first connect failed (nats-py leaves its socket open)."""
    # Best effort and bounded: after a failed TLS handshake the stream never reports itself
    # closed, so the close runs as its own task that we stop waiting for after a second.
    await _bounded(nc.close())
    transport = getattr(nc, "_transport", None)  # nats-py keeps the socket here
    if transport is not None:
        transport.close()
        await _bounded(transport.wait_closed())


async def _bounded(aw: Awaitable[Any], seconds: float = 1.0) -> None:
    """Run `aw` for at most `seconds`, ignoring its outcome (cleanup that may hang)."""
    task = asyncio.ensure_future(aw)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieve, never raise
    _, pending = await asyncio.wait([task], timeout=seconds)
    for late in pending:
        late.cancel()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text or type(exc).__name__


def _auth_error(options: ConnectOptions) -> AuthError:
    if options.token:
        used = "the token given"
    elif options.user:
        used = f"user {options.user!r}"
    elif options.creds_file or options.nkey_seed:
        used = "the credentials given"
    else:
        used = "no credentials"
    return AuthError(
        f"authorization failed at {options.url} with {used}",
        hint="check --user/--password, --token or --creds (or RANVIER_USER, ...); the server "
        "of `ranvier up` or `ranvier server` takes the token kept in its --state-dir, which "
        "commands run with that --state-dir present by themselves",
    )


def _tls_context(ca_file: Path) -> ssl.SSLContext:
    if not ca_file.is_file():
        raise ConnectError(f"TLS CA file {ca_file} does not exist")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConnectError(f"cannot use {ca_file} as a TLS CA bundle: {exc.reason}") from None


__all__ = [
    "OUTAGE_ERRORS",
    "AuthError",
    "Bus",
    "BusError",
    "ConnectError",
    "ConnectOptions",
    "Consumer",
    "KVChange",
    "NoAnswerError",
    "Outgoing",
    "Published",
    "Received",
    "Replayed",
    "RevisionMismatch",
    "StreamLimits",
    "kv_key",
]
