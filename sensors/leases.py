"""Partition leases: which engine replica steps which partition of the events stream.

Engine replicas share the partitions of the events stream (`events.subjects.partition_of`) by
lease, in the KV bucket `ranvier_leases`:

- `member.<replica>`: a replica is alive while its key is there. Every key of the bucket
  expires `ttl` seconds after its last write (the bucket's max age, enforced by the server), so
  a replica that dies leaves the bucket within `ttl` without anyone deciding it is dead.
- `partition.<n>`: held by the replica named in it. Taken with a KV create (only one replica
  wins), renewed with a compare-and-set every beat (`ttl / 8`), released with a delete at the
  revision held. The revision is the lease's fencing token: a renewal that finds another
  revision means the lease was lost.
- Fencing: a replica treats a lease as valid only until `ttl * VALID_FRACTION` after it SENT
  the request that last took or renewed it. The server keeps the key for `ttl` after it WROTE
  it, which is later, so a replica stops publishing for a partition at least `ttl * (1 -
  VALID_FRACTION)` seconds before any other replica can take it, even if it was paused (a long
  GC, SIGSTOP, a VM migration) and resumes not knowing it. `Lease.valid()` is checked before
  every publish, state write and ack.
- Assignment (`assign`, pure): live members sorted by name, partition p goes to member
  `p * n // P`, so every member gets P/n partitions (within one) and a member that joins or
  leaves moves only the partitions whose owner changes. A replica releases what is no longer
  its own (after finishing its batch and writing its state) and takes what is free and its
  own; a partition free for longer than `ttl` is taken by any replica (its assignee may be
  stuck).

The partition count is recorded in the bucket's metadata; a bucket made for another count than
the events stream's is an error, never silently re-partitioned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import nats.errors
import nats.js.errors
import structlog

from events import subjects
from events.bus import Bus, BusError
from events.model import new_id

__all__ = ["VALID_FRACTION", "Lease", "LeaseTable", "assign", "default_replica_id"]

log = structlog.get_logger(__name__)

DEFAULT_TTL: Final = 8.0
"""Seconds a lease outlives its holder: a dead replica's partitions are taken within this
(plus one beat)."""
VALID_FRACTION: Final = 0.6
"""The share of the TTL a holder trusts its lease for, counted from its own request."""
BEATS_PER_TTL: Final = 8
_MEMBER: Final = "member"
_PARTITION: Final = "partition"


def default_replica_id() -> str:
    """A replica name unique to this process: host, pid and a random suffix."""
    host = subjects.token(socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{new_id()[-6:].lower()}"


def assign(members: Sequence[str], partitions: int) -> list[str | None]:
    """The owner of each partition for these live members (None when there are none)."""
    ranked = sorted(set(members))
    n = len(ranked)
    if not n:
        return [None] * partitions
    return [ranked[p * n // partitions] for p in range(partitions)]


@dataclass(slots=True)
class Lease:
    """One partition held by this replica."""

    partition: int
    revision: int
    """The KV revision last written: the fencing token."""
    epoch: int
    """The revision at which it was taken (logged, and stored with the partition's state)."""
    valid_until: float
    """`time.monotonic()` after which the holder must not act for the partition."""
    released: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)
    """Renewal and release of one lease never overlap: a renewal landing after the release
    began would move the revision, the delete would miss it, and the lease would outlive its
    holder until the TTL."""

    def valid(self) -> bool:
        """Whether the holder may still publish, write state and ack for the partition."""
        return time.monotonic() < self.valid_until


class LeaseTable:
    """One replica's handle on the lease bucket."""

    def __init__(self, bus: Bus, *, replica: str, partitions: int, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"the lease TTL must be positive, not {ttl}")
        self._bus = bus
        self.replica = replica
        self.partitions = partitions
        self.ttl = ttl
        self.beat = ttl / BEATS_PER_TTL
        self._instance = new_id()
        self._member_revision: int | None = None

    @staticmethod
    def key(partition: int) -> str:
        """The bucket key of a partition's lease."""
        return f"{_PARTITION}.{partition}"

    async def open(self) -> None:
        """Create the bucket (or check it was made for this partition count)."""
        bucket = subjects.LEASES_BUCKET
        stream = f"KV_{bucket}"
        try:
            info = await self._bus.js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            await self._bus.create_bucket(bucket, ttl=self.ttl, history=1)
            info = await self._bus.js.stream_info(stream)
        config = info.config
        recorded = (config.metadata or {}).get(subjects.PARTITIONS_KEY)
        if recorded is not None and int(recorded) != self.partitions:
            raise BusError(
                f"the lease bucket {bucket} was made for {recorded} partitions, but the events "
                f"stream has {self.partitions}",
                hint=f"stop every engine, delete the bucket (nats kv del {bucket}) and start "
                "them again; they recreate it for the stream's count",
            )
        if recorded is None or (config.max_age or 0) != self.ttl:
            metadata = {**(config.metadata or {}), subjects.PARTITIONS_KEY: str(self.partitions)}
            window = min(config.duplicate_window or self.ttl, self.ttl)  # at most the max age
            await self._bus.js.update_stream(
                dataclasses.replace(
                    config, max_age=self.ttl, duplicate_window=window, metadata=metadata
                )
            )
            log.info("leases.bucket_configured", partitions=self.partitions, ttl=self.ttl)

    async def heartbeat(self) -> None:
        """Say this replica is alive (renews its member key)."""
        value = json.dumps({"replica": self.replica, "instance": self._instance}).encode()
        self._member_revision = await self._bus.kv_put(
            subjects.LEASES_BUCKET, f"{_MEMBER}.{subjects.token(self.replica)}", value
        )

    async def leave(self) -> None:
        """Say this replica is gone (its member key deleted), so others rebalance at once."""
        await self._bus.kv_delete(
            subjects.LEASES_BUCKET, f"{_MEMBER}.{subjects.token(self.replica)}"
        )

    async def members(self) -> list[str]:
        """The replicas alive now."""
        keys = await self._bus.kv_keys(subjects.LEASES_BUCKET, f"{_MEMBER}.*")
        return sorted(k.split(".", 1)[1] for k in keys)

    async def owners(self) -> list[str | None]:
        """The holder of each partition's lease (None: free)."""

        async def one(partition: int) -> str | None:
            got = await self._bus.kv_get(subjects.LEASES_BUCKET, self.key(partition))
            return None if got is None else _holder(got[0])[0]

        return list(await asyncio.gather(*(one(p) for p in range(self.partitions))))

    def _value(self) -> bytes:
        return json.dumps({"replica": self.replica, "instance": self._instance}).encode()

    async def acquire(self, partition: int) -> Lease | None:
        """Take a free partition, or one an earlier process of this replica held; None if
        another replica has it."""
        sent = time.monotonic()
        bucket, key = subjects.LEASES_BUCKET, self.key(partition)
        revision = await self._bus.kv_create(bucket, key, self._value())
        if revision is None:
            got = await self._bus.kv_get(bucket, key)
            if got is None or _holder(got[0])[0] != self.replica:
                return None
            # Ours, though not held: a predecessor's (it died: a replica name is one process
            # at a time), or one this process stopped trusting (fenced) and still has.
            try:
                revision = await self._bus.kv_update(bucket, key, self._value(), got[1])
            except BusError:
                return None
        return Lease(partition, revision, revision, sent + self.ttl * VALID_FRACTION)

    def mine(self, owner: str | None) -> bool:
        """Whether a lease's holder is this replica (this process or an earlier one)."""
        return owner == self.replica

    async def renew(self, lease: Lease) -> bool:
        """Extend a held lease; False (and the lease no longer valid) if it was lost. A lease
        being released is left alone (True)."""
        async with lease.lock:
            if lease.released:
                return True
            sent = time.monotonic()
            try:
                lease.revision = await self._bus.kv_update(
                    subjects.LEASES_BUCKET, self.key(lease.partition), self._value(), lease.revision
                )
            except BusError:  # another revision, or the key expired: lost
                lease.valid_until = 0.0
                return False
            lease.valid_until = sent + self.ttl * VALID_FRACTION
            return True

    async def release(self, lease: Lease) -> None:
        """Give a lease up (only if still held at its revision)."""
        async with lease.lock:
            lease.released = True
            lease.valid_until = 0.0
            try:
                await self._bus.kv_delete(
                    subjects.LEASES_BUCKET, self.key(lease.partition), last_revision=lease.revision
                )
            except (BusError, nats.errors.Error) as exc:  # lost meanwhile, or the server is gone
                log.info("leases.release_failed", partition=lease.partition, error=str(exc))


def _holder(value: bytes) -> tuple[str | None, str | None]:
    """(replica, instance) of a lease value; None for what cannot be read."""
    try:
        record = json.loads(value)
        replica, instance = record.get("replica"), record.get("instance")
    except (ValueError, AttributeError):
        return None, None
    return (
        replica if isinstance(replica, str) else None,
        instance if isinstance(instance, str) else None,
    )
