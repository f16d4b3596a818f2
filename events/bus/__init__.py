"""The bus: ranvier's one doorway to NATS JetStream.

Everything else (engine runtime, executors, watchers, the CLI) talks to NATS through `Bus`, so
the delivery rules (docs/architecture.md) live in one place:

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

import contextlib
from collections.abc import AsyncIterator

from events.bus.connection import open_connection
from events.bus.consume import Consumer, Received, Replayed
from events.bus.core import (
    MSG_ID,
    OUTAGE_ERRORS,
    START_HINT,
    AuthError,
    BusError,
    ConnectError,
    ConnectOptions,
    Delivery,
    Fetcher,
    NoAnswerError,
    Outgoing,
    Published,
    RevisionMismatch,
    StreamLimits,
    kv_key,
    subject_of,
)
from events.bus.kv import BusKeyValue, KVChange


class Bus(BusKeyValue):
    """A connection to NATS with ranvier's streams and buckets; use `async with Bus.connect()`.

    One facade over the parts, each in its own module and each built on the one before:
    connection (`connection.py`), streams and buckets (`topology.py`), publishing
    (`publish.py`), consuming and replay (`consume.py`), key-value (`kv.py`).
    """

    # -- connecting --------------------------------------------------------------------------

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
        nc, callbacks = await open_connection(options)
        bus = cls(nc, options, limits or StreamLimits(), callbacks)
        try:
            if ensure:
                await bus._ensure_topology_patiently()
            yield bus
        finally:
            await bus.close()


__all__ = [
    "MSG_ID",
    "OUTAGE_ERRORS",
    "START_HINT",
    "AuthError",
    "Bus",
    "BusError",
    "ConnectError",
    "ConnectOptions",
    "Consumer",
    "Delivery",
    "Fetcher",
    "KVChange",
    "NoAnswerError",
    "Outgoing",
    "Published",
    "Received",
    "Replayed",
    "RevisionMismatch",
    "StreamLimits",
    "kv_key",
    "subject_of",
]
