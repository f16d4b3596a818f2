"""An in-process bus with `Bus`'s delivery rules, for unit tests of what runs on the bus.

It keeps what exactly-once rests on, as JetStream does it, and nothing else:

- a stream stores messages under increasing sequence numbers and stores a repeated
  `Nats-Msg-Id` once (the duplicate window never closes here); the events stream stores a
  published subject under its partition, as the server's subject transform does;
- a KV bucket is the stream of `$KV.<bucket>.<key>` messages: a key's revision is its last
  message's sequence, `kv_create` wins only if the key is absent, `kv_update` is
  compare-and-set;
- a durable consumer is ack-all with a filter and a start sequence: it delivers each matching
  message once, acking a message acks every earlier one (the ack floor), and what is not
  acked comes again only when the consumer is created afresh from its floor.

Every effect is appended to `journal` in the order it happened, and `fail_next` makes the next
matching operation raise, so a test can assert the order of a commit and break it at any step.
Not modelled: connections and outages, clusters, ack-wait timers, stream limits and ages.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from events import subjects
from events.bus.core import BusError, Outgoing, Published, RevisionMismatch, subject_of
from events.bus.kv import KVChange
from events.model import Event, EventError, utcnow

DEFAULT_MAX_PAYLOAD = 1024 * 1024
_STREAMS = {
    subjects.EVENTS_STREAM: subjects.STORED_EVENTS,
    subjects.ACTIONS_STREAM: subjects.ACTIONS_SUBJECTS,
    subjects.DECISIONS_STREAM: subjects.DECISIONS_SUBJECTS,
}


def subject_matches(subject: str, pattern: str) -> bool:
    """Whether `subject` matches a NATS filter (`*` one token, `>` one or more at the end)."""
    tokens, wanted = subject.split("."), pattern.split(".")
    for i, want in enumerate(wanted):
        if want == ">":
            return len(tokens) > i
        if i >= len(tokens) or (want != "*" and want != tokens[i]):
            return False
    return len(tokens) == len(wanted)


@dataclass(slots=True)
class Stored:
    """One message as a stream stores it."""

    seq: int
    subject: str
    data: bytes
    msg_id: str
    at: datetime
    deleted: bool = False  # a KV delete marker


@dataclass(slots=True)
class _Stream:
    name: str
    messages: list[Stored] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    grew: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def last_seq(self) -> int:
        return self.messages[-1].seq if self.messages else 0

    def last_on(self, subject: str) -> Stored | None:
        for message in reversed(self.messages):
            if message.subject == subject:
                return message
        return None


class MemoryDelivery:
    """One message delivered by a `MemoryConsumer`."""

    __slots__ = ("_consumer", "_parsed", "stored")

    def __init__(self, consumer: MemoryConsumer, stored: Stored) -> None:
        self._consumer = consumer
        self.stored = stored
        self._parsed: Event | EventError | None = None

    def _parse(self) -> Event | EventError:
        if self._parsed is None:
            try:
                self._parsed = Event.from_json(self.stored.data, stored_at=self.stored.at)
            except EventError as exc:
                self._parsed = exc
        return self._parsed

    @property
    def seq(self) -> int:
        return self.stored.seq

    @property
    def event(self) -> Event | None:
        parsed = self._parse()
        return parsed if isinstance(parsed, Event) else None

    @property
    def error(self) -> EventError | None:
        parsed = self._parse()
        return parsed if isinstance(parsed, EventError) else None

    async def ack(self) -> None:
        await self._consumer.settle("ack", self.stored.seq)

    async def term(self) -> None:
        await self._consumer.settle("term", self.stored.seq)


class MemoryConsumer:
    """A durable ack-all pull consumer of a `MemoryBus` stream."""

    def __init__(
        self, bus: MemoryBus, stream: str, durable: str, *, start: int, filter_subject: str
    ) -> None:
        self._bus = bus
        self.stream = stream
        self.durable = durable
        self.filter = filter_subject
        self.next_seq = start  # the next sequence to look at
        self.floor = start - 1  # every message up to here is acked
        self.closed = False

    async def fetch(self, batch: int = 100, wait: float = 1.0) -> list[MemoryDelivery]:
        stream = self._bus.stream(self.stream)
        found = self._take(stream, batch)
        if not found and wait > 0:
            try:
                async with asyncio.timeout(wait), stream.grew:
                    await stream.grew.wait_for(lambda: self._ready(stream))
            except TimeoutError:
                return []
            found = self._take(stream, batch)
        return [MemoryDelivery(self, stored) for stored in found]

    def _ready(self, stream: _Stream) -> bool:
        return any(subject_matches(m.subject, self.filter) for m in self._unseen(stream))

    def _take(self, stream: _Stream, batch: int) -> list[Stored]:
        found: list[Stored] = []
        for m in self._unseen(stream):
            if subject_matches(m.subject, self.filter):
                found.append(m)
                if len(found) == batch:
                    break
        if found:
            self.next_seq = found[-1].seq + 1
        return found

    def _unseen(self, stream: _Stream) -> list[Stored]:
        """The messages from `next_seq` on (a stream's sequence n is its message n - 1)."""
        return stream.messages[max(self.next_seq, 1) - 1 :]

    async def settle(self, how: str, seq: int) -> None:
        """Ack (ack-all: up to `seq`) or term one message; journaled."""
        self._bus.check(how, self.stream)
        if how == "ack":
            self.floor = max(self.floor, seq)
        self._bus.journal.append((how, self.stream, seq))
        async with self._bus.settled:
            self._bus.settled.notify_all()

    async def close(self) -> None:
        self.closed = True


class MemoryBus:
    """Streams, KV buckets and durable consumers in memory; see the module's docstring."""

    def __init__(
        self,
        *,
        partitions: int = subjects.DEFAULT_PARTITIONS,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.partitions = partitions
        self.max_payload = max_payload
        self.journal: list[tuple[str, str, int]] = []
        """(operation, stream, sequence) of every effect, in order: `publish` (a message
        stored), `duplicate` (a message dropped for its Msg-Id, with the sequence it has),
        `ack`, `term`; KV writes are publishes on the bucket's stream `KV_<bucket>`."""
        self._streams: dict[str, _Stream] = {}
        self._consumers: dict[tuple[str, str], MemoryConsumer] = {}
        self._failures: list[tuple[str, str, BaseException]] = []
        self.settled = asyncio.Condition()
        """Notified on every ack and term."""

    # -- faults ------------------------------------------------------------------------------

    def fail_next(self, operation: str, stream: str, error: BaseException | None = None) -> None:
        """Make the next `operation` (`publish`, `ack` or `term`) on `stream` (a glob: `KV_*`)
        raise `error` (a `BusError` by default) instead of taking effect."""
        self._failures.append((operation, stream, error or BusError(f"{operation} failed")))

    def check(self, operation: str, stream: str) -> None:
        """Raise the first failure planned for this operation on this stream, if any."""
        for i, (op, pattern, error) in enumerate(self._failures):
            if op == operation and fnmatch.fnmatchcase(stream, pattern):
                del self._failures[i]
                raise error

    # -- streams -----------------------------------------------------------------------------

    def stream(self, name: str) -> _Stream:
        """A stream by name (made on first use)."""
        if name not in self._streams:
            self._streams[name] = _Stream(name)
        return self._streams[name]

    def messages(self, stream: str) -> list[Stored]:
        """What a stream holds, oldest first."""
        return list(self.stream(stream).messages)

    def _stream_of(self, subject: str) -> tuple[str, str]:
        """The stream a published subject goes to, and the subject it is stored under."""
        if subject.startswith("$KV."):
            bucket = subject.split(".", 2)[1]
            return f"KV_{bucket}", subject
        stored = subjects.stored_subject(subject, self.partitions)
        for name, pattern in _STREAMS.items():
            if subject_matches(stored, pattern):
                return name, stored
        raise BusError(f"no stream listens on {subject!r}")

    async def _store(
        self, item: Outgoing, *, deleted: bool = False, expected: int | None = None
    ) -> Published:
        name, stored_subject = self._stream_of(item.subject)
        stream = self.stream(name)
        if item.msg_id and item.msg_id in stream.ids:
            self.journal.append(("duplicate", name, stream.ids[item.msg_id]))
            return Published(name, stream.ids[item.msg_id], duplicate=True)
        if len(item.data) > self.max_payload:
            raise BusError(f"message of {len(item.data)} bytes is over {self.max_payload}")
        if expected is not None:
            last = stream.last_on(stored_subject)
            if (last.seq if last is not None else 0) != expected:
                raise RevisionMismatch(name, stored_subject, expected)
        self.check("publish", name)
        seq = stream.last_seq + 1
        stream.messages.append(
            Stored(seq, stored_subject, item.data, item.msg_id, utcnow(), deleted)
        )
        if item.msg_id:
            stream.ids[item.msg_id] = seq
        self.journal.append(("publish", name, seq))
        async with stream.grew:
            stream.grew.notify_all()
        return Published(name, seq, duplicate=False)

    async def publish(
        self, event: Event, *, msg_id: str | None = None, subject: str | None = None
    ) -> Published:
        data = event.encode(self.max_payload)
        return await self._store(Outgoing(subject or subject_of(event), data, msg_id or event.id))

    async def publish_many(
        self, events: Iterable[Event], *, max_in_flight: int = 256
    ) -> list[Published]:
        return [await self.publish(event) for event in events]

    async def publish_many_encoded(
        self, items: Sequence[Outgoing], *, max_in_flight: int = 256
    ) -> list[Published]:
        return [await self._store(item) for item in items]

    async def publish_tail_acked(
        self, items: Sequence[Outgoing], *, last_seq: int | None, max_in_flight: int = 1024
    ) -> int | None:
        if not items:
            return last_seq
        acks = await self.publish_many_encoded(items)
        stored = [a.seq for a in acks if not a.duplicate]
        return max(stored) if stored else None

    # -- key-value ---------------------------------------------------------------------------

    def _last(self, bucket: str, key: str) -> Stored | None:
        return self.stream(f"KV_{bucket}").last_on(f"$KV.{bucket}.{key}")

    async def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        last = self._last(bucket, key)
        if last is None or last.deleted:
            return None
        return last.data, last.seq

    async def kv_keys(self, bucket: str, pattern: str = ">") -> list[str]:
        prefix = f"$KV.{bucket}."
        latest: dict[str, Stored] = {}
        for message in self.stream(f"KV_{bucket}").messages:
            latest[message.subject] = message
        return [
            subject[len(prefix) :]
            for subject, message in latest.items()
            if not message.deleted and subject_matches(subject, prefix + pattern)
        ]

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        return (await self._store(Outgoing(f"$KV.{bucket}.{key}", value, ""))).seq

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int | None:
        last = self._last(bucket, key)
        if last is not None and not last.deleted:
            return None
        expected = last.seq if last is not None else 0
        return (
            await self._store(Outgoing(f"$KV.{bucket}.{key}", value, ""), expected=expected)
        ).seq

    async def kv_update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        try:
            item = Outgoing(f"$KV.{bucket}.{key}", value, "")
            return (await self._store(item, expected=last_revision)).seq
        except RevisionMismatch:
            raise RevisionMismatch(bucket, key, last_revision) from None

    async def kv_delete(self, bucket: str, key: str, *, last_revision: int | None = None) -> None:
        item = Outgoing(f"$KV.{bucket}.{key}", b"", "")
        await self._store(item, deleted=True, expected=last_revision)

    async def kv_watch(
        self, bucket: str, pattern: str = ">", *, include_current: bool = True
    ) -> AsyncGenerator[KVChange, None]:
        stream = self.stream(f"KV_{bucket}")
        prefix = f"$KV.{bucket}."
        began = stream.last_seq
        if include_current:
            latest = {m.subject: m for m in stream.messages}
            for message in sorted(latest.values(), key=lambda m: m.seq):
                if subject_matches(message.subject, prefix + pattern):
                    yield _change(message, prefix, initial=True)
        seen = began
        while True:
            async with stream.grew:
                await stream.grew.wait_for(functools.partial(_grown, stream, seen))
            for message in stream.messages[seen:]:
                if subject_matches(message.subject, prefix + pattern):
                    yield _change(message, prefix, initial=False)
            seen = stream.last_seq

    # -- consumers ---------------------------------------------------------------------------

    async def ack_floor(self, stream: str, durable: str) -> int | None:
        consumer = self._consumers.get((stream, durable))
        return consumer.floor if consumer is not None else None

    async def acked(self, stream: str, durable: str, seq: int) -> None:
        """Wait until durable consumer `durable` (of its latest creation) has acked `seq`."""

        def done() -> bool:
            consumer = self._consumers.get((stream, durable))
            return consumer is not None and consumer.floor >= seq

        async with self.settled:
            await self.settled.wait_for(done)

    async def restart_consumer(
        self,
        stream: str,
        durable: str,
        *,
        start: int,
        filter_subject: str,
        ack_wait: float,
        max_ack_pending: int,
    ) -> MemoryConsumer:
        consumer = MemoryConsumer(self, stream, durable, start=start, filter_subject=filter_subject)
        self._consumers[(stream, durable)] = consumer
        return consumer


def _change(message: Stored, prefix: str, *, initial: bool) -> KVChange:
    return KVChange(
        key=message.subject[len(prefix) :],
        value=None if message.deleted else message.data,
        revision=message.seq,
        initial=initial,
    )


def _grown(stream: _Stream, seen: int) -> bool:
    return stream.last_seq > seen
