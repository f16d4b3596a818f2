"""The engine on the bus: consume events, step the pure engine, publish, persist, then ack.

`sensors.engine` decides; this module makes its decisions happen exactly once although the
process may die at any instruction. The rules:

- Events are consumed in batches from a durable pull consumer and stepped in memory.
- A batch commits in this order: publish its action requests, decision records and sensor-run
  records concurrently (the first two with one ack per stream and batch when the stream's
  sequence shows every message stored, `Bus.publish_tail_acked`, else one ack each); write
  each touched Axon's state once, by compare-and-set; only then ack (or term) its messages.
  Action requests carry their idempotency key as `Nats-Msg-Id`, so re-publishing them after
  a crash stores nothing new.
  The state write and the ack run in the background (`_kick`/`_flush`): while one is in
  flight the next batches are stepped and published, and the following write covers all of
  them at once (one write per touched Axon), at most one write per `write_interval` (0.1 s)
  unless unacked messages pile up. The state written is dumped between batches,
  so it holds exactly the events published so far, with the last one's sequence; an event
  is acked only after a write that covers it.
- Each Axon's state (in `ranvier_state`) records the last stream sequence applied to it, so an
  event seen again (redelivered after a crash between the state write and the ack) is skipped.
  That is only sound if events reach the engine in stream order. JetStream redelivers a dead
  process's unacked messages only after their ack wait, while newer ones flow to its successor;
  so on start, and after any failed batch, the runtime recreates its durable consumer from the
  ack floor: every message not known to be done comes again, in order.
- Any failure in a batch (a publish that does not go through, a state key that changed under
  us) throws the in-memory state away: it is reloaded from KV and the batch is redelivered. No
  half-applied change survives in memory.
- A malformed event, an event of an unknown type or with an invalid payload is logged, counted
  and terminated; it never stops the stream.
- Time is data. Each event is stepped at its own `time`. When the wall clock passes a
  deadline (`engine.due_ticks`), the runtime publishes a `ranvier.tick` event and acts on it
  only when it comes back from the stream, so a dry run over a recording takes the same
  decisions (`sensors.replay`, docs/replay.md).
- Partitions: the events stream is partitioned by Axon; a `PartitionEngine` steps one
  partition (its own durable consumer, state and sequence guard, everything above), and the
  `EngineRuntime` of each replica holds partitions by lease (`sensors.leases`), checking the
  lease before every publish, state write and ack (docs/scale-out.md).

A `ranvier.axon` submitted event is applied with `engine.submit` and the spec of that very
generation, read from `ranvier_axons` (`AxonStore`). After a restart, each Axon's state is
loaded with the spec of the generation it was saved with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import json
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import nats.errors
import nats.js.errors
import structlog
from nats.js import api

from events import subjects
from events.aio import checkpoint
from events.bus import Bus, BusError, Consumer, Outgoing, Received, RevisionMismatch, kv_key
from events.errors import RanvierError
from events.model import (
    ACTION,
    AXON,
    DECISION,
    LIFECYCLE,
    ActionRequest,
    AxonData,
    DecisionData,
    Event,
    SensorRunRecord,
    TickData,
    canonical_json,
    format_time,
    new_id,
    utcnow,
)
from sensors import engine
from sensors.axons import AxonStore, AxonStoreError
from sensors.leases import DEFAULT_TTL, Lease, LeaseTable, assign, default_replica_id
from sensors.records import merge_run_record, new_record
from sensors.spec import Axon

__all__ = [
    "EngineRuntime",
    "PartitionEngine",
    "RuntimeStats",
    "caught_up",
    "decision_event",
    "encode_action",
    "partition_durable",
    "state_key",
]

log = structlog.get_logger(__name__)

SOURCE: Final = "ranvier/engine"
DURABLE: Final = "ranvier-engine"
RUN_RECORDS_KEPT: Final = 4096
"""Sensor-run records kept in memory (to update them without reading KV back)."""
COMPRESS_OVER: Final = 64 * 1024
"""State values larger than this are stored zlib-compressed (prefixed `zlib:`): an Axon with
thousands of sensors has megabytes of JSON state, over NATS's default max payload."""
_ZLIB: Final = b"zlib:"
_MAX_ID: Final = 128
_RETRY_DELAY: Final = 0.5
_REFREEZE_EVERY: Final = 1.0
"""Seconds between collections of the objects made since the last one (`_keep_heap_old`)."""
_UNFREEZE_EVERY: Final = 600.0
"""Seconds between full collections of everything, frozen objects too (`_keep_heap_old`)."""
_STOP_WITHIN: Final = 5.0  # seconds a cancelled runtime waits for its cleanup


@dataclass(slots=True)
class RuntimeStats:
    """Counters of what the runtime did since it started (also logged)."""

    events: int = 0
    acked: int = 0
    redelivered: int = 0
    malformed: int = 0
    ignored: int = 0
    actions: int = 0
    decisions: int = 0
    batches: int = 0
    ticks: int = 0
    failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def partition_durable(durable: str, partition: int) -> str:
    """The durable consumer name of one partition."""
    return f"{durable}-p{partition}"


async def caught_up(bus: Bus, durable: str = DURABLE) -> bool:
    """Whether the engine has handled every stored event: for each partition holding events,
    its consumer exists and has nothing undelivered or unacked."""
    info = await bus.js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.STORED_EVENTS)
    partitions = {int(subject.split(".")[2]) for subject in (info.state.subjects or {})}
    for partition in sorted(partitions):
        try:
            consumer = await bus.js.consumer_info(
                subjects.EVENTS_STREAM, partition_durable(durable, partition)
            )
        except nats.js.errors.NotFoundError:
            return False
        if consumer.num_pending or consumer.num_ack_pending:
            return False
    return True


def state_key(namespace: str, name: str) -> str:
    """The `ranvier_state` key of one Axon's state."""
    return kv_key(namespace, name)


def tick_id(tick: TickData) -> str:
    """The event id of a tick: the same Axon and deadline give the same id."""
    return _event_id("tick", f"{tick.namespace}.{tick.axon}.{format_time(tick.due)}", 0)


def _event_id(prefix: str, base: str, index: int) -> str:
    """A deterministic message id from a base id; hashed when it would be too long."""
    text = f"{prefix}-{base}-{index}"
    if len(text) <= _MAX_ID:
        return text
    import hashlib  # local: only long ids need it

    return f"{prefix}-{hashlib.blake2b(text.encode(), digest_size=20).hexdigest()}"


_quote: Final = json.encoder.encode_basestring_ascii  # the C helper json.dumps uses for a str


def _envelope(ev_id: str, type_: str, subject_attr: str, time: str, data_json: bytes) -> bytes:
    """CloudEvents JSON, byte for byte what `Event.to_json()` gives for these fields.

    Built directly because pydantic validating and re-serialising an envelope per record was
    most of the cost of publishing decisions (see bench/engine.py).
    """
    head = (
        f'{{"specversion":"1.0","id":{_quote(ev_id)},"source":"{SOURCE}",'
        f'"type":"{type_}","subject":{_quote(subject_attr)},"time":"{time}",'
        '"datacontenttype":"application/json","data":'
    )
    return head.encode() + data_json + b"}"


@functools.lru_cache(maxsize=65536)
def _action_subject(axon: str, kind: str) -> str:
    return subjects.action_subject(axon, kind)


@functools.lru_cache(maxsize=65536)
def _decision_subject(axon: str, sensor: str) -> str:
    return subjects.decision_subject(axon, sensor)


def encode_action(action: ActionRequest, time: str) -> Outgoing:
    """An action request as published: id and Nats-Msg-Id = its idempotency key."""
    key = action.idempotency_key
    data = action.model_dump_json(exclude_none=True).encode()
    return Outgoing(
        _action_subject(action.axon, action.kind),
        _envelope(key, ACTION, action.task, time, data),
        key,
    )


def decision_event(decision: DecisionData, ev_id: str, time: str) -> Outgoing:
    """A decision record as published on `ranvier.dec.<axon>.<sensor>`."""
    data = decision.model_dump_json(exclude_none=True).encode()
    return Outgoing(
        _decision_subject(decision.axon, decision.sensor),
        _envelope(ev_id, DECISION, decision.sensor, time, data),
        ev_id,
    )


class _Conflict(Exception):
    """A batch could not be committed; the state is reloaded and the batch redelivered."""


@dataclass(slots=True)
class _Slot:
    """What the runtime knows of one Axon's persisted state."""

    namespace: str
    name: str
    revision: int | None = None  # KV revision of the state key; None: key absent
    applied: int = 0  # last stream sequence applied to this Axon in the stored state
    stepped: int = 0  # last stream sequence applied to it in memory (>= applied)
    loaded: bool = False  # the engine holds its state (else: unknown or deleted)


@dataclass(slots=True)
class _Batch:
    """One batch's output, gathered in memory before anything is committed."""

    now: datetime
    actions: list[ActionRequest] = field(default_factory=list)
    decisions: list[tuple[str, DecisionData]] = field(default_factory=list)  # (msg id, record)
    dirty: dict[str, int] = field(default_factory=dict)  # axon key -> applied seq to write
    lifecycle: list[dict[str, Any]] = field(default_factory=list)  # reports about sensor runs
    started: set[str] = field(default_factory=set)  # sensor runs started in this batch
    ended: list[engine.EndedRun] = field(default_factory=list)  # sensor runs ended in it
    ack: list[Received] = field(default_factory=list)
    term: list[Received] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    """Batches published but not yet covered by a state write (hence not acked)."""

    dirty: dict[str, int] = field(default_factory=dict)  # axon key -> applied seq to write
    ack: Received | None = None  # the highest-sequence message to ack (ack-all)
    acked: int = 0  # messages that ack covers (for the stats)
    term: list[Received] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.dirty and self.ack is None and not self.term


class _Fenced(Exception):
    """The partition's lease is no longer valid: stop acting for it at once."""


class _Records:
    """Publishes the records of every partition a process holds.

    Action requests and decision records go to streams that only engines write; while this
    process holds every partition (`sole`), it is their only writer, and one ack per batch
    will do (`Bus.publish_tail_acked`); the lock keeps its partitions' batches from
    interleaving on a stream, which would break that check. Otherwise each record gets its
    own ack.
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.sole = True
        self._last: dict[str, int | None] = {subjects.ACTIONS_STREAM: None, DECISIONS: None}
        self._locks = {stream: asyncio.Lock() for stream in self._last}

    async def tail(self, stream: str, items: list[Outgoing], window: int) -> None:
        if not items:
            return
        async with self._locks[stream]:
            last = self._last[stream] if self.sole else None
            self._last[stream] = None  # unknown until the publish returns
            self._last[stream] = await self._bus.publish_tail_acked(
                items, last_seq=last, max_in_flight=window
            )


DECISIONS: Final = subjects.DECISIONS_STREAM


class PartitionEngine:
    """Steps one partition of the events stream with exactly-once effects; `await run()`.

    Runs while its `lease` (if any) is valid: before every publish, state write and ack it
    checks the lease, and stops with `_Fenced` the moment it is not. `drain()` asks it to
    finish the batch in hand, write its state, ack and return (a graceful hand-over).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        partition: int = 0,
        partitions: int | None = None,
        lease: Lease | None = None,
        records: _Records | None = None,
        durable: str = DURABLE,
        batch: int = 1024,
        max_wait: float = 0.5,
        ack_wait: float = 30.0,
        max_in_flight: int = 1024,
        write_interval: float = 0.1,
    ) -> None:
        self._bus = bus
        self._axons = AxonStore(bus)
        self.partition = partition
        self.partitions = partitions or bus.partitions
        self.lease = lease
        self._records = records or _Records(bus)
        self.durable = partition_durable(durable, partition)
        self.batch = batch
        self.max_wait = max_wait
        self.ack_wait = ack_wait
        self.max_in_flight = max_in_flight
        self.write_interval = write_interval
        """Least seconds between two state writes (acks wait for them): an Axon's state is
        written whole, and with thousands of active runs writing it after every small batch
        was most of the engine's and the server's work at a steady 1,000 events/s."""
        self.max_ack_pending = max(batch * 16, 4096)
        self.stats = RuntimeStats()
        self._state = engine.EngineState()
        self._slots: dict[str, _Slot] = {}
        self._specs: dict[tuple[str, str, int], Axon] = {}
        self._runs: OrderedDict[str, SensorRunRecord] = OrderedDict()
        self._consumer: Consumer | None = None
        self._pending = _Pending()
        self._flusher: asyncio.Future[None] | None = None
        self._written_at = 0.0  # loop time the last state write started
        # Msg-Ids of run records: unique to this process and record (a ULID each cost 2%).
        self._instance = new_id()
        self._record_ids = itertools.count(1)
        self._ticked: set[tuple[str, str, datetime]] = set()  # ticks published, still due
        self._due: datetime | None = None
        self._draining = False
        self.ready = asyncio.Event()
        """Set once state is loaded and the consumer is in place (tests and `up` wait on it)."""

    # -- life cycle ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Finish the batch in hand, write the state, ack, and return from `run()`."""
        self._draining = True

    def _fence(self) -> None:
        if self.lease is not None and not self.lease.valid():
            raise _Fenced(f"the lease of partition {self.partition} is no longer valid")

    async def run(self) -> None:
        """Consume and decide until cancelled or drained (raises `_Fenced` on a lost lease)."""
        try:
            await self._restart_until_ok()  # the server may be slow to answer at first
            self.ready.set()
            while not self._draining:
                checkpoint()  # a cancellation a library swallowed stops us here
                try:
                    await self._loop_once()
                except (_Conflict, BusError, nats.errors.Error, TimeoutError) as exc:
                    self.stats.failures += 1
                    why = str(exc) or repr(exc)
                    log.warning("runtime.batch_failed", partition=self.partition, error=why)
                    await asyncio.sleep(_RETRY_DELAY)
                    await self._restart_until_ok()
            await self._write_all()
        finally:
            # Stopping must not hang on a stuck connection: what is not written is redelivered.
            try:
                async with asyncio.timeout(_STOP_WITHIN):
                    await self._stop_flusher()
                    if self._consumer is not None:
                        with contextlib.suppress(Exception):  # the connection may be gone
                            await self._consumer.close()
            except TimeoutError:
                log.warning("runtime.stop_timed_out", seconds=_STOP_WITHIN)
            self._consumer = None

    async def _write_all(self) -> None:
        """Write and ack everything stepped so far (a drained partition hands over clean)."""
        while True:
            checkpoint()
            self._kick(force=True)  # raises what the last write raised
            flusher = self._flusher
            if flusher is None:  # nothing in flight, nothing pending
                return
            await asyncio.wait([flusher])

    async def _restart_until_ok(self) -> None:
        while True:
            self._fence()
            try:
                await self._restart()
                return
            except (BusError, nats.errors.Error, TimeoutError) as exc:
                log.warning("runtime.restart_failed", error=str(exc) or repr(exc))
                await asyncio.sleep(_RETRY_DELAY)

    async def _restart(self) -> None:
        """Reload all state from KV and recreate the consumer from its ack floor."""
        await self._stop_flusher()
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None
        await self._load_state()
        _keep_heap_old(everything=True)
        self._consumer = await self._recreate_consumer()
        self._ticked.clear()
        self._due = engine.next_deadline(self._state)

    async def _recreate_consumer(self) -> Consumer:
        stream = subjects.EVENTS_STREAM
        start = 1
        try:
            info = await self._bus.js.consumer_info(stream, self.durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            start = floor + 1
            # Unacked messages of a dead process would come back only after their ack wait,
            # behind newer ones; a fresh consumer from the floor brings them back in order.
            await self._bus.js.delete_consumer(stream, self.durable)
        # Ack-all: one ack per batch (its last message) instead of one per message.
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subject=subjects.partition_filter(self.partition),
        )
        self._fence()  # a replica that lost the lease must not reset the new holder's consumer
        await self._bus.js.add_consumer(stream, config)
        consumer = Consumer(self._bus.nc, stream=stream, durable=self.durable)
        log.info("runtime.consuming", durable=self.durable, from_seq=start)
        return consumer

    async def _load_state(self) -> None:
        self._state = engine.EngineState()
        self._slots = {}
        self._runs.clear()
        bucket = subjects.STATE_BUCKET
        for key in await self._bus.kv_keys(bucket):
            if not self._owns_key(key):
                continue
            got = await self._bus.kv_get(bucket, key)
            if got is None:
                continue
            raw, revision = got
            try:
                record = json.loads(zlib.decompress(raw[len(_ZLIB) :]) if raw[:1] != b"{" else raw)
                ns, name = str(record["namespace"]), str(record["axon"])
                applied = int(record["seq"])
                slot = _Slot(ns, name, revision=revision, applied=applied, stepped=applied)
            except (ValueError, KeyError, TypeError, zlib.error) as exc:
                log.error("runtime.state_unreadable", key=key, error=str(exc))
                continue
            self._slots[engine.axon_key(ns, name)] = slot
            if record.get("deleted"):
                continue
            try:
                spec = await self._spec(ns, name, int(record["generation"]))
                self._state.load_axon(spec, canonical_json(record["engine"]))
            except (RanvierError, KeyError, TypeError, ValueError) as exc:
                log.error("runtime.state_not_loaded", axon=f"{ns}/{name}", error=str(exc))
                continue
            slot.loaded = True
        log.info("runtime.state_loaded", partition=self.partition, axons=len(self._slots))

    def _owns_key(self, key: str) -> bool:
        """Whether a state key (`<namespace>.<axon>` tokens) is an Axon of this partition."""
        _, _, name = key.partition(".")
        return subjects.partition_of(name, self.partitions) == self.partition

    async def _spec(self, namespace: str, name: str, generation: int) -> Axon:
        cached = self._specs.get((namespace, name, generation))
        if cached is not None:
            return cached
        stored = await self._axons.get(namespace, name, generation)
        if stored is None:
            raise AxonStoreError(
                f"generation {generation} of Axon {namespace}/{name} is not in "
                f"{subjects.AXONS_BUCKET}"
            )
        self._specs[(namespace, name, generation)] = stored.axon
        return stored.axon

    # -- the loop ------------------------------------------------------------------------------

    async def _loop_once(self) -> None:
        consumer = self._consumer
        if consumer is None:
            raise _Conflict("no consumer")
        self._kick()
        wait = self.max_wait
        if not self._pending.empty():  # come back in time to write it
            wait = min(wait, max(self._write_due() - asyncio.get_running_loop().time(), 0.005))
        due = self._due
        if due is not None:
            wait = max(0.0, min(wait, (due - utcnow()).total_seconds()))
        received = await consumer.fetch(self.batch, wait=wait)
        if received:
            with _gc_paused():
                await self._process(received)
            self._due = engine.next_deadline(self._state)  # the batch may have set one
        elif self._flusher is not None:  # idle: let the state write finish, then write the rest
            await asyncio.wait([self._flusher])
        await self._maybe_tick()

    async def _maybe_tick(self) -> None:
        """Publish a `ranvier.tick` event for each deadline the wall clock has passed.

        Time is data: the engine acts on a tick only when it comes back from the stream, in
        order with every other event, so a dry run over a recording decides exactly what this
        runtime decided (`sensors.replay`). Each tick's id derives from its Axon and deadline:
        published again (a restart, a new holder of the partition), the stream stores it once.
        """
        now = utcnow()
        due = self._due
        if due is None or due > now:
            return
        ticks = engine.due_ticks(self._state, now)
        current = {(t.namespace, t.axon, t.due) for t in ticks}
        self._ticked.intersection_update(current)  # what is no longer due needs no memory
        fresh = [t for t in ticks if (t.namespace, t.axon, t.due) not in self._ticked]
        self._due = engine.next_deadline(self._state, now)
        if not fresh:
            return
        self._fence()
        await self._bus.publish_many(
            [t.to_event(source=SOURCE, id=tick_id(t), time=t.due) for t in fresh]
        )
        self._ticked.update((t.namespace, t.axon, t.due) for t in fresh)
        self.stats.ticks += len(fresh)

    async def _process(self, received: Sequence[Received]) -> None:
        now = utcnow()
        batch = _Batch(now=now)
        new_spec = False
        for rec in received:
            self.stats.events += 1
            event = rec.event
            if event is None:
                self._reject(batch, rec, "malformed", str(rec.error))
                continue
            seq = rec.seq
            akey = engine.event_axon(event)
            slot = self._slots.get(akey) if akey is not None else None
            if slot is not None and seq <= max(slot.applied, slot.stepped):
                self.stats.redelivered += 1
                batch.ack.append(rec)
                continue
            # The event's own time, never the wall clock: a dry run over a recording steps
            # each event at the same time, so it decides the same (`sensors.replay`).
            if event.type == AXON:
                result = await self._axon_event(event, event.time)
                if result is None:
                    self._reject(batch, rec, "invalid", f"event {event.id}: invalid axon event")
                    continue
                new_spec = True
            else:
                result = engine.step(self._state, event, event.time)
            if result.ignored is not None:
                if event.type != AXON:  # unknown type, invalid payload, no Axon named
                    self._reject(batch, rec, "ignored", result.ignored)
                    continue
                self.stats.ignored += 1
                log.info("runtime.axon_event_ignored", event_id=event.id, reason=result.ignored)
            if event.type == LIFECYCLE and event.data.get("sensor_run_id"):
                batch.lifecycle.append(event.data)
            self._collect(batch, result, event.id, akey, seq)
            slot = self._slots.get(akey) if akey is not None else None
            if slot is not None:
                slot.stepped = max(slot.stepped, seq)
            batch.ack.append(rec)
        await self._commit(batch)
        if new_spec:
            _keep_heap_old()

    def _reject(self, batch: _Batch, rec: Received, kind: str, why: str) -> None:
        self.stats.malformed += kind == "malformed"
        self.stats.ignored += kind != "malformed"
        self.stats.reasons[kind] = self.stats.reasons.get(kind, 0) + 1
        log.warning("runtime.event_rejected", kind=kind, seq=rec.seq, reason=why)
        batch.term.append(rec)

    async def _axon_event(self, event: Event, now: datetime) -> engine.StepResult | None:
        try:
            data = AxonData.model_validate(event.data)
        except ValueError:
            return None
        if data.action == "deleted":
            return engine.step(self._state, event, now)
        try:
            spec = await self._spec(data.namespace, data.axon, data.generation)
        except AxonStoreError as exc:
            return engine.StepResult(ignored=str(exc))
        key = engine.axon_key(data.namespace, data.axon)
        if key not in self._slots:
            self._slots[key] = _Slot(data.namespace, data.axon)
        return engine.submit(self._state, spec, data.generation, event, now)

    def _collect(
        self, batch: _Batch, result: engine.StepResult, base: str, akey: str | None, seq: int
    ) -> None:
        for i, decision in enumerate(result.decisions):
            batch.decisions.append((_event_id("dec", base, i), decision))
        batch.actions.extend(result.actions)
        batch.started.update(result.started)
        batch.ended.extend(result.ended)
        for key in (*result.touched, *result.deleted):
            slot = self._slots[key]
            applied = seq if key == akey else max(slot.applied, slot.stepped)
            batch.dirty[key] = max(applied, batch.dirty.get(key, 0))
        if akey is not None and akey in batch.dirty:
            batch.dirty[akey] = max(batch.dirty[akey], seq)

    # -- commit --------------------------------------------------------------------------------

    async def _commit(self, batch: _Batch) -> None:
        """Publish a batch's records, then hand its state and acks to the flusher.

        The state write and the ack leave the batch's critical path: the next batch is fetched
        and stepped while the flusher writes (one write per touched Axon for every batch
        published since its last write, compressed in a thread), then acks. Nothing is acked
        before a state write that covers it; a failed write throws all in-memory state away
        (`_restart`), and every unacked event comes again and is stepped on the stored state.
        Re-publishing the records of such events stores nothing new (their Msg-Ids).
        """
        stamp = format_time(batch.now)
        actions = [encode_action(a, stamp) for a in batch.actions]
        decisions = [decision_event(d, ev_id, stamp) for ev_id, d in batch.decisions]
        runs = await self._run_records(batch, stamp)
        # Actions and decisions go to streams only engines write: one ack per stream and
        # batch will do while this process holds every partition (`_Records`). Run records
        # share their bucket with the executors' records, so each has its own ack.
        window = self.max_in_flight
        self._fence()
        await asyncio.gather(
            self._bus.publish_many_encoded(runs, max_in_flight=window),
            self._records.tail(subjects.ACTIONS_STREAM, actions, window),
            self._records.tail(DECISIONS, decisions, window),
        )
        pending = self._pending
        for key, seq in batch.dirty.items():
            pending.dirty[key] = max(seq, pending.dirty.get(key, 0))
        if batch.ack:
            last = max(batch.ack, key=_seq_of)
            if pending.ack is None or last.seq > pending.ack.seq:
                pending.ack = last
            pending.acked += len(batch.ack)
        pending.term += batch.term
        self.stats.batches += 1
        self.stats.actions += len(batch.actions)
        self.stats.decisions += len(batch.decisions)
        if batch.actions:
            log.debug("runtime.batch", actions=len(batch.actions), acked=len(batch.ack))
        self._kick()

    def _kick(self, *, force: bool = False) -> None:
        """Start writing what is pending unless a write is in flight (raises if one failed).

        Only called between batches (never between a step and its publish), so the state
        dumped here holds exactly the events published so far, and the sequence recorded with
        it (`_Slot.stepped`) is the last of them.
        """
        flusher = self._flusher
        if flusher is not None:
            if not flusher.done():
                return
            self._flusher = None
            flusher.result()  # a failed write: _Conflict, handled by run()
        pending = self._pending
        if pending.empty():
            return
        now = asyncio.get_running_loop().time()
        unacked = pending.acked + len(pending.term)
        if not force and now < self._write_due() and unacked < self.max_ack_pending // 2:
            return  # written soon; sooner only if unacked messages could stall the consumer
        self._written_at = now
        self._pending = _Pending()
        dirty = {
            key: max(seq, self._slots[key].stepped, self._slots[key].applied)
            for key, seq in pending.dirty.items()
        }
        records = {key: self._record(key, seq) for key, seq in dirty.items()}
        self._flusher = asyncio.ensure_future(self._flush(pending, dirty, records))

    def _write_due(self) -> float:
        """Loop time from which the next state write may start."""
        return self._written_at + self.write_interval

    async def _flush(
        self,
        pending: _Pending,
        dirty: dict[str, int],
        records: dict[str, tuple[list[str], bool]],
    ) -> None:
        values: dict[str, bytes] = {}
        big: dict[str, list[str]] = {}
        for key, (pieces, _) in records.items():
            if sum(map(len, pieces)) > COMPRESS_OVER:
                big[key] = pieces
            else:
                values[key] = "".join(pieces).encode()
        if big:  # joined and compressed in a thread (zlib releases the GIL): stepping goes on
            values.update(await asyncio.to_thread(_compress, big))
        self._fence()
        writes = [
            self._write(key, seq, values[key], loaded=records[key][1]) for key, seq in dirty.items()
        ]
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise _Conflict(f"state write failed: {failed[0]!r}")
        self._fence()  # the new holder owns the consumer's acks
        if pending.ack is not None:  # ack-all: acking the last acks the earlier messages
            await pending.ack.ack()
        for rec in pending.term:
            await rec.term()
        self.stats.acked += pending.acked + len(pending.term)

    async def _stop_flusher(self) -> None:
        """Drop the write in flight and what is pending (before reloading the state)."""
        flusher, self._flusher = self._flusher, None
        self._pending = _Pending()
        if flusher is not None:
            flusher.cancel()
            await asyncio.wait([flusher])  # does not raise what the flusher raised
            if not flusher.cancelled():
                flusher.exception()  # retrieved: it is the reason of this restart, logged

    def _record(self, key: str, seq: int) -> tuple[list[str], bool]:
        """The state record of an Axon as stored (before compression), as pieces of text to
        join, and whether the engine holds its state (False: deleted).

        The engine's part comes as its cached pieces (`dump_axon_parts`): an Axon with
        thousands of active runs has megabytes of state, and joining them here, on the event
        loop, stalled every event in flight (the latency bench's p99).
        """
        slot = self._slots[key]
        header: dict[str, Any] = {"namespace": slot.namespace, "axon": slot.name, "seq": seq}
        if self.lease is not None:  # which holder wrote it (diagnostics; the CAS protects it)
            header["epoch"] = self.lease.epoch
        try:
            pieces = self._state.dump_axon_parts(key)
        except engine.EngineError:  # its state is gone (deleted)
            return [canonical_json({**header, "deleted": True}).decode()], False
        generation = self._state.generation(slot.namespace, slot.name)
        head = canonical_json({**header, "generation": generation, "deleted": False}).decode()
        return ['{"engine":', *pieces, ",", head[1:]], True

    async def _write(self, key: str, seq: int, value: bytes, *, loaded: bool) -> None:
        slot = self._slots[key]
        bucket = subjects.STATE_BUCKET
        if slot.revision is None:
            revision = await self._bus.kv_create(bucket, key_of(slot), value)
            if revision is None:
                raise RevisionMismatch(bucket, key_of(slot), 0)
        else:
            revision = await self._bus.kv_update(bucket, key_of(slot), value, slot.revision)
        slot.revision = revision
        slot.applied = seq
        slot.loaded = loaded

    # -- sensor-run records --------------------------------------------------------------------

    async def _run_records(self, batch: _Batch, stamp: str) -> list[Outgoing]:
        """Records of the sensor runs this batch touched (ranvier_runs, contract layout).

        A record is the engine's view of the run (`EngineState.run`: phase, trigger, every step
        up to the current one with its actions' attempts and phases) merged with what only the
        record holds: the task run ids reported for earlier steps. So the previous record is
        needed for every run not started in this batch: from memory, else read back from KV
        (after a restart). Even if that read finds nothing, the steps the engine knows of are
        all there; only their task run ids would be missing.
        """
        touched: dict[str, tuple[str, str, str, str]] = {}  # run id -> (ns, axon, sensor, rkey)
        for action in batch.actions:
            touched.setdefault(action.sensor_run_id, _run_ref(action))
        for _, decision in batch.decisions:
            if decision.sensor_run_id is not None:
                touched.setdefault(decision.sensor_run_id, _run_ref(decision))
        for ended in batch.ended:  # a run replaced or dropped is named by no decision of its own
            touched.setdefault(ended.run_id, _run_ref(ended))
        if not touched:
            return []
        missing = [
            ref[3]
            for rid, ref in touched.items()
            if ref[3] not in self._runs and rid not in batch.started
        ]
        if missing:
            await self._fetch_runs(missing)
        reasons = {d.sensor_run_id: d for _, d in batch.decisions if d.sensor_run_id}
        reports: dict[str, list[dict[str, Any]]] = {}
        for report in batch.lifecycle:
            reports.setdefault(str(report["sensor_run_id"]), []).append(report)
        by_run: dict[str, list[ActionRequest]] = {}
        for action in batch.actions:
            by_run.setdefault(action.sensor_run_id, []).append(action)
        out: list[Outgoing] = []
        ends = {ended.run_id: ended for ended in batch.ended}
        for rid, (ns, axon, sensor, rkey) in touched.items():
            view = self._state.run(engine.axon_key(ns, axon), rid)
            end = ends.get(rid)
            previous = self._runs.get(rkey)
            if view is None and end is None and previous is None and rid not in batch.started:
                continue  # a report about a run nobody knows (long gone, or never started)
            record = merge_run_record(
                previous or new_record(rid, namespace=ns, axon=axon, sensor=sensor, started=stamp),
                stamp=stamp,
                decision=reasons.get(rid),
                actions=by_run.get(rid, ()),
                reports=reports.get(rid, ()),
                view=view,
                end=end,
            )
            self._remember(rkey, record)
            out.append(
                Outgoing(
                    f"$KV.{subjects.RUNS_BUCKET}.{rkey}",
                    record.to_json(),
                    f"{self._instance}-{next(self._record_ids)}",
                )
            )
        return out

    async def _fetch_runs(self, keys: Iterable[str]) -> None:
        """Read back records of runs this process has not seen (after a restart)."""

        async def one(key: str) -> None:
            got = await self._bus.kv_get(subjects.RUNS_BUCKET, key)
            if got is not None:
                with contextlib.suppress(ValueError):
                    self._remember(key, SensorRunRecord.from_json(got[0]))

        await asyncio.gather(*(one(k) for k in keys))

    def _remember(self, key: str, record: SensorRunRecord) -> None:
        self._runs[key] = record
        self._runs.move_to_end(key)
        while len(self._runs) > RUN_RECORDS_KEPT:
            self._runs.popitem(last=False)


@dataclass(slots=True)
class _Held:
    """A partition this replica holds, and the task stepping it."""

    lease: Lease
    engine: PartitionEngine
    task: asyncio.Task[None]
    releasing: bool = False


class EngineRuntime:
    """The engine role: holds partitions by lease and steps each held one; `await run()`.

    Any number of replicas may run against one bus; each steps only the partitions it holds
    (`sensors.leases`), so no partition is ever stepped by two replicas at once, and one
    replica alone holds them all. Cancelling `run()` hands over gracefully: every partition
    finishes its batch, writes its state and acks, then its lease is released (within
    `_STOP_WITHIN` seconds; what is not written by then is redelivered to the next holder).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        replica: str | None = None,
        lease_ttl: float = DEFAULT_TTL,
        durable: str = DURABLE,
        **options: Any,
    ) -> None:
        """`options` go to each `PartitionEngine` (batch, max_wait, write_interval, ...)."""
        self._bus = bus
        self.replica = replica or default_replica_id()
        self.lease_ttl = lease_ttl
        self.durable = durable
        self._options = options
        self._records = _Records(bus)
        self._held: dict[int, _Held] = {}
        self._free_since: dict[int, float] = {}
        self._retired = RuntimeStats()
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once this replica has taken part in one assignment and its partitions are
        loaded and consuming."""

    @property
    def partitions(self) -> list[int]:
        """The partitions this replica holds now."""
        return sorted(self._held)

    @property
    def stats(self) -> RuntimeStats:
        """Counters over every partition this replica held since it started."""
        total = RuntimeStats()
        for stats in (self._retired, *(h.engine.stats for h in self._held.values())):
            _add_stats(total, stats)
        return total

    async def run(self) -> None:
        """Hold and step partitions until cancelled."""
        table = LeaseTable(
            self._bus, replica=self.replica, partitions=self._bus.partitions, ttl=self.lease_ttl
        )
        loop = asyncio.get_running_loop()
        frozen = thawed = loop.time()
        try:
            await self._open(table)
            while True:
                checkpoint()
                try:
                    await self._beat(table)
                except (BusError, nats.errors.Error, TimeoutError) as exc:
                    log.warning("runtime.beat_failed", error=str(exc) or repr(exc))
                if not self.ready.is_set():
                    await self._await_ready(table.beat)
                now = loop.time()
                if now - frozen >= _REFREEZE_EVERY:  # see _keep_heap_old
                    everything = now - thawed >= _UNFREEZE_EVERY
                    thawed = now if everything else thawed
                    frozen = now
                    _keep_heap_old(everything=everything)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(table.beat, _REFREEZE_EVERY)):
                        await self._wake.wait()
        finally:
            await self._hand_over(table)

    async def _await_ready(self, within: float) -> None:
        """Set `ready` once every held partition consumes (waiting at most `within`)."""
        waiting = [asyncio.ensure_future(h.engine.ready.wait()) for h in self._held.values()]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=within)
            for task in pending:
                task.cancel()
            if pending:
                return
        self.ready.set()

    async def _open(self, table: LeaseTable) -> None:
        while True:
            checkpoint()
            try:
                await table.open()
                return
            except BusError as exc:
                if "partitions" in str(exc):  # a configuration error: nothing to retry
                    raise
                log.warning("runtime.leases_unavailable", error=str(exc))
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("runtime.leases_unavailable", error=str(exc) or repr(exc))
            await asyncio.sleep(_RETRY_DELAY)

    async def _beat(self, table: LeaseTable) -> None:
        """Renew, then release what moved to another replica and take what is free and ours."""
        for partition, held in list(self._held.items()):
            if held.task.done():
                self._reap(partition, held)
        held_now = list(self._held.values())
        _, *renewed = await asyncio.gather(
            table.heartbeat(), *(table.renew(held.lease) for held in held_now)
        )
        for held, ok in zip(held_now, renewed, strict=True):
            if not ok:
                log.warning("runtime.lease_lost", partition=held.lease.partition)
                held.task.cancel()  # fenced already; nothing of it may be written now
        members = await table.members()
        if self.replica not in members:
            members.append(self.replica)  # our heartbeat is in; a lagging read may miss it
        owners = await table.owners()
        target = assign(members, table.partitions)
        now = time.monotonic()
        for partition, held in self._held.items():
            if target[partition] != self.replica and not held.releasing:
                held.releasing = True
                held.engine.drain()
                log.info("runtime.partition_moving", partition=partition, to=target[partition])
        for partition, owner in enumerate(owners):
            if partition in self._held or (owner is not None and not table.mine(owner)):
                self._free_since.pop(partition, None)
                continue
            since = self._free_since.setdefault(partition, now)
            if target[partition] == self.replica or now - since > table.ttl:
                await self._take(table, partition, free_for=now - since)

    async def _take(self, table: LeaseTable, partition: int, *, free_for: float) -> None:
        lease = await table.acquire(partition)
        if lease is None:
            return
        self._free_since.pop(partition, None)
        engine_ = PartitionEngine(
            self._bus,
            partition=partition,
            partitions=table.partitions,
            lease=lease,
            records=self._records,
            durable=self.durable,
            **self._options,
        )
        task = asyncio.create_task(self._step(table, engine_), name=f"partition-{partition}")
        self._held[partition] = _Held(lease, engine_, task)
        self._records.sole = len(self._held) == table.partitions
        log.info(
            "runtime.partition_taken",
            partition=partition,
            replica=self.replica,
            epoch=lease.epoch,
            seen_free_for=round(free_for, 3),
        )

    async def _step(self, table: LeaseTable, engine_: PartitionEngine) -> None:
        """Run one partition; on a graceful end, release its lease."""
        try:
            await engine_.run()
        except _Fenced as exc:
            log.warning("runtime.fenced", partition=engine_.partition, reason=str(exc))
            return
        finally:
            self._wake.set()
        if engine_.lease is not None:
            await table.release(engine_.lease)
            log.info("runtime.partition_released", partition=engine_.partition)

    def _reap(self, partition: int, held: _Held) -> None:
        """Forget a partition whose task ended (released, fenced or failed)."""
        del self._held[partition]
        self._records.sole = False
        _add_stats(self._retired, held.engine.stats)
        if not held.task.cancelled() and (exc := held.task.exception()) is not None:
            log.error("runtime.partition_failed", partition=partition, error=repr(exc))

    async def _hand_over(self, table: LeaseTable) -> None:
        """Drain every partition, release its lease and leave (bounded in time)."""
        for held in self._held.values():
            held.engine.drain()
        tasks = [h.task for h in self._held.values()]
        try:
            async with asyncio.timeout(_STOP_WITHIN):
                if tasks:
                    await asyncio.wait(tasks)
                await table.leave()
        except (TimeoutError, BusError, nats.errors.Error) as exc:
            log.warning("runtime.hand_over_incomplete", error=str(exc) or repr(exc))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for partition, held in list(self._held.items()):
            self._reap(partition, held)


def _add_stats(total: RuntimeStats, more: RuntimeStats) -> None:
    for name in RuntimeStats.__dataclass_fields__:
        if name == "reasons":
            for reason, count in more.reasons.items():
                total.reasons[reason] = total.reasons.get(reason, 0) + count
        else:
            setattr(total, name, getattr(total, name) + getattr(more, name))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is processed.

    A batch allocates tens of thousands of short-lived objects (decisions, records, encoded
    messages), which made the collector run dozens of times per batch, some of them full
    collections over the whole engine state: a fifth of the runtime's CPU (bench/engine.py).
    Paused, it runs once the batch is done. Nothing here makes cycles that need it sooner.
    """
    if not gc.isenabled():  # paused already (or by the host process): leave it as it is
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _keep_heap_old(*, everything: bool = False) -> None:
    """Collect garbage, then take every surviving object out of the collector's sight.

    A full collection walks every tracked object; an Axon's spec, compiled spec and state are
    tens of thousands of objects that live as long as the Axon, and a full collection over
    them took 60 ms in the latency bench (its p99). Frozen (`gc.freeze`) after the state is
    loaded, after a generation is applied and then every `_REFREEZE_EVERY` seconds (so the
    runs started meanwhile join them: a full collection then walks about a second's worth of
    survivors, not 10,000 runs, which cost 30 ms pauses and the latency bench's p99), they
    are no longer walked. Frozen objects are still freed when their last reference goes; only
    cycles among them would stay: the engine's state makes none, but a process running other
    roles too (`ranvier up`: HTTP connections, tasks) may. So every `_UNFREEZE_EVERY` seconds
    (`everything`) the frozen objects are collected as well: one long pause per ten minutes
    instead of memory that grows.
    """
    if everything:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def _compress(records: dict[str, list[str]]) -> dict[str, bytes]:
    """State values as stored when large: `zlib:` and the zlib stream (level 1: fast) of the
    pieces joined. The pieces are compressed one by one, never joined into one string: that
    keeps each hold of the GIL short (in the latency bench, joining megabytes in one call
    held the event loop up for milliseconds; p99 8.5 and 6.9 ms piece by piece against 13.1
    and 8.5 joined)."""
    out: dict[str, bytes] = {}
    for key, pieces in records.items():
        stream = zlib.compressobj(1)
        chunks = [_ZLIB, *(stream.compress(piece.encode()) for piece in pieces), stream.flush()]
        out[key] = b"".join(chunks)
    return out


def _seq_of(rec: Received) -> int:
    return rec.seq


def key_of(slot: _Slot) -> str:
    """The state key of a slot."""
    return state_key(slot.namespace, slot.name)


def _run_ref(item: ActionRequest | DecisionData | engine.EndedRun) -> tuple[str, str, str, str]:
    rid = (item.run_id if isinstance(item, engine.EndedRun) else item.sensor_run_id) or ""
    key = f"{_runs_prefix(item.namespace, item.axon, item.sensor)}.{subjects.token(rid)}"
    return item.namespace, item.axon, item.sensor, key


@functools.lru_cache(maxsize=65536)
def _runs_prefix(namespace: str, axon: str, sensor: str) -> str:
    """`kv_key("sensor", namespace, axon, sensor)`: the start of its runs' record keys."""
    return kv_key("sensor", namespace, axon, sensor)
