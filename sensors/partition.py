"""One partition of the events stream on the bus: its consumer, state, batches and commit.

The rules a `PartitionEngine` keeps (commit order, the sequence guard, restarting from the ack
floor, rejecting bad events, time as data) are described in `sensors.runtime`, which runs one
per partition this replica holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import nats.errors
import structlog

from events import subjects
from events.aio import checkpoint
from events.bus import BusError, Delivery, Fetcher, RevisionMismatch, kv_key
from events.errors import RanvierError
from events.model import (
    AXON,
    LIFECYCLE,
    ActionRequest,
    AxonData,
    DecisionData,
    Event,
    canonical_json,
    format_time,
    utcnow,
)
from sensors import engine
from sensors.axons import AxonStore, AxonStoreError
from sensors.heap import gc_paused, keep_heap_old
from sensors.leases import Lease
from sensors.port import EngineBus
from sensors.publishing import (
    DECISIONS,
    SOURCE,
    Records,
    decision_event,
    encode_action,
    event_id,
    tick_id,
)
from sensors.run_records import RunRecordStore
from sensors.spec import Axon

log = structlog.get_logger(__name__)

DURABLE: Final = "ranvier-engine"
COMPRESS_OVER: Final = 64 * 1024
"""State values larger than this are stored zlib-compressed (prefixed `zlib:`): an Axon with
thousands of sensors has megabytes of JSON state, over NATS's default max payload."""
_ZLIB: Final = b"zlib:"
RETRY_DELAY: Final = 0.5
STOP_WITHIN: Final = 5.0  # seconds a cancelled runtime waits for its cleanup


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


def state_key(namespace: str, name: str) -> str:
    """The `ranvier_state` key of one Axon's state."""
    return kv_key(namespace, name)


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
    ack: list[Delivery] = field(default_factory=list)
    term: list[Delivery] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    """Batches published but not yet covered by a state write (hence not acked)."""

    dirty: dict[str, int] = field(default_factory=dict)  # axon key -> applied seq to write
    ack: Delivery | None = None  # the highest-sequence message to ack (ack-all)
    acked: int = 0  # messages that ack covers (for the stats)
    term: list[Delivery] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.dirty and self.ack is None and not self.term


class Fenced(Exception):
    """The partition's lease is no longer valid: stop acting for it at once."""


class PartitionEngine:
    """Steps one partition of the events stream with exactly-once effects; `await run()`.

    Runs while its `lease` (if any) is valid: before every publish, state write and ack it
    checks the lease, and stops with `Fenced` the moment it is not. `drain()` asks it to
    finish the batch in hand, write its state, ack and return (a graceful hand-over).
    """

    def __init__(
        self,
        bus: EngineBus,
        *,
        partition: int = 0,
        partitions: int | None = None,
        lease: Lease | None = None,
        records: Records | None = None,
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
        self._records = records or Records(bus)
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
        self._run_records = RunRecordStore(bus)
        self._consumer: Fetcher | None = None
        self._pending = _Pending()
        self._flusher: asyncio.Future[None] | None = None
        self._written_at = 0.0  # loop time the last state write started
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
            raise Fenced(f"the lease of partition {self.partition} is no longer valid")

    async def run(self) -> None:
        """Consume and decide until cancelled or drained (raises `Fenced` on a lost lease)."""
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
                    await asyncio.sleep(RETRY_DELAY)
                    await self._restart_until_ok()
            await self._write_all()
        finally:
            # Stopping must not hang on a stuck connection: what is not written is redelivered.
            try:
                async with asyncio.timeout(STOP_WITHIN):
                    await self._stop_flusher()
                    if self._consumer is not None:
                        with contextlib.suppress(Exception):  # the connection may be gone
                            await self._consumer.close()
            except TimeoutError:
                log.warning("runtime.stop_timed_out", seconds=STOP_WITHIN)
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
                await asyncio.sleep(RETRY_DELAY)

    async def _restart(self) -> None:
        """Reload all state from KV and recreate the consumer from its ack floor."""
        await self._stop_flusher()
        if self._consumer is not None:
            await self._consumer.close()
            self._consumer = None
        await self._load_state()
        keep_heap_old(everything=True)
        self._consumer = await self._recreate_consumer()
        self._ticked.clear()
        self._due = engine.next_deadline(self._state)

    async def _recreate_consumer(self) -> Fetcher:
        """A fresh consumer from the partition's ack floor (ack-all: one ack per batch)."""
        stream = subjects.EVENTS_STREAM
        floor = await self._bus.ack_floor(stream, self.durable)
        start = floor + 1 if floor is not None else 1
        self._fence()  # a replica that lost the lease must not reset the new holder's consumer
        consumer = await self._bus.restart_consumer(
            stream,
            self.durable,
            start=start,
            filter_subject=subjects.partition_filter(self.partition),
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
        )
        log.info("runtime.consuming", durable=self.durable, from_seq=start)
        return consumer

    async def _load_state(self) -> None:
        self._state = engine.EngineState()
        self._slots = {}
        self._run_records.clear()
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
            with gc_paused():
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

    async def _process(self, received: Sequence[Delivery]) -> None:
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
            keep_heap_old()

    def _reject(self, batch: _Batch, rec: Delivery, kind: str, why: str) -> None:
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
            batch.decisions.append((event_id("dec", base, i), decision))
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
        runs = await self._run_records.for_batch(
            self._state,
            actions=batch.actions,
            decisions=[d for _, d in batch.decisions],
            ended=batch.ended,
            lifecycle=batch.lifecycle,
            started=batch.started,
            stamp=stamp,
        )
        # Actions and decisions go to streams only engines write: one ack per stream and
        # batch will do while this process holds every partition (`Records`). Run records
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


def _seq_of(rec: Delivery) -> int:
    return rec.seq


def key_of(slot: _Slot) -> str:
    """The state key of a slot."""
    return state_key(slot.namespace, slot.name)
