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
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
import structlog

from events import subjects
from events.aio import checkpoint
from events.bus import Bus, BusError
from sensors.heap import REFREEZE_EVERY, UNFREEZE_EVERY, keep_heap_old
from sensors.leases import DEFAULT_TTL, Lease, LeaseTable, assign, default_replica_id
from sensors.partition import (
    DURABLE,
    RETRY_DELAY,
    STOP_WITHIN,
    Fenced,
    PartitionEngine,
    RuntimeStats,
    partition_durable,
    state_key,
)
from sensors.publishing import Records, decision_event, encode_action, tick_id

__all__ = [
    "DURABLE",
    "EngineRuntime",
    "PartitionEngine",
    "RuntimeStats",
    "caught_up",
    "decision_event",
    "encode_action",
    "partition_durable",
    "state_key",
    "tick_id",
]

log = structlog.get_logger(__name__)


async def caught_up(bus: Bus, durable: str = DURABLE) -> bool:
    """Whether the engine has handled every stored event: for each partition holding events,
    its consumer exists and has nothing undelivered or unacked."""
    stored = await bus.stored_subjects(subjects.EVENTS_STREAM, subjects.STORED_EVENTS)
    for partition in sorted({int(subject.split(".")[2]) for subject in stored}):
        backlog = await bus.consumer_backlog(
            subjects.EVENTS_STREAM, partition_durable(durable, partition)
        )
        if backlog is None or backlog:
            return False
    return True


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
    `STOP_WITHIN` seconds; what is not written by then is redelivered to the next holder).
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
        self._records = Records(bus)
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
                if now - frozen >= REFREEZE_EVERY:  # see keep_heap_old
                    everything = now - thawed >= UNFREEZE_EVERY
                    thawed = now if everything else thawed
                    frozen = now
                    keep_heap_old(everything=everything)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(table.beat, REFREEZE_EVERY)):
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
            await asyncio.sleep(RETRY_DELAY)

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
        except Fenced as exc:
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
            async with asyncio.timeout(STOP_WITHIN):
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
