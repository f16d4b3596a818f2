"""The model registry's `KeyValueStore`, over one of the bus's KV buckets.

`executors.registry` keeps its logic behind a four-method protocol so that its tests need no
server; in production the same registry reads and writes `ranvier_models` through this adapter.
It only translates: the bus's "created: None" and `RevisionMismatch` become the registry's
`KeyExistsError` and `RevisionMismatchError`, so the registry's compare-and-set loop works the
same whichever store holds the bytes.
"""

from __future__ import annotations

import hashlib
import json

from events import subjects
from events.bus import Bus, RevisionMismatch, kv_key
from events.model import format_time, new_id, utcnow
from executors.registry import KeyExistsError, KvEntry, RevisionMismatchError


class BusKeyValue:
    """A `registry.KeyValueStore` backed by a bucket of a connected `Bus`."""

    def __init__(self, bus: Bus, bucket: str) -> None:
        self.bus = bus
        self.bucket = bucket

    async def get(self, key: str) -> KvEntry | None:
        """The latest value of `key`, or None if it has none (or was deleted)."""
        found = await self.bus.kv_get(self.bucket, key)
        return None if found is None else KvEntry(found[0], found[1])

    async def create(self, key: str, value: bytes) -> int:
        """Store `value` only if `key` has none; its revision, else `KeyExistsError`."""
        revision = await self.bus.kv_create(self.bucket, key, value)
        if revision is None:
            raise KeyExistsError(f"{self.bucket}/{key} already exists")
        return revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Store `value` only if `key` is at revision `last`; else `RevisionMismatchError`."""
        try:
            return await self.bus.kv_update(self.bucket, key, value, last)
        except RevisionMismatch as exc:
            raise RevisionMismatchError(str(exc)) from None

    async def keys(self, prefix: str = "") -> list[str]:
        """Keys that have a value and start with `prefix` (filtered on the server when it can)."""
        # A prefix ending with a dot is a whole number of tokens: let the server filter by
        # subject; anything else is filtered here.
        pattern = f"{prefix}>" if prefix.endswith(".") else ">"
        keys = await self.bus.kv_keys(self.bucket, pattern)
        return sorted(k for k in keys if k.startswith(prefix))


def claim_key(idempotency_key: str) -> str:
    """`claim.<sha256 hex>`: the KV key an executor creates to own an action request (or a
    study's trial), in `ranvier_runs`."""
    return kv_key("claim", hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest())


async def claim(bus: Bus, idempotency_key: str, executor: str) -> str | None:
    """Own the action request (or study trial) `idempotency_key`: create its claim with a new
    run id in `ranvier_runs`. The run id, or None when another run claimed it first."""
    run_id = new_id()
    record = {"run_id": run_id, "action_key": idempotency_key, "executor": executor}
    won = await bus.kv_create(
        subjects.RUNS_BUCKET,
        claim_key(idempotency_key),
        json.dumps({**record, "claimed": format_time(utcnow())}).encode("utf-8"),
    )
    return run_id if won is not None else None
