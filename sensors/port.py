"""What the engine runtime needs of the bus: the one door between the rules and NATS.

`events.bus.Bus` (NATS JetStream) is the bus every role runs on; `events.bus.memory.MemoryBus`
(in-process, same delivery rules) lets unit tests drive a partition engine through its commit
and its failures without a server. Both satisfy `EngineBus` structurally.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol

from events.bus import Fetcher, KVChange, Outgoing, Published
from events.model import Event


class EngineBus(Protocol):
    """Streams with Msg-Id deduplication, KV with compare-and-set, durable ack-all consumers."""

    @property
    def partitions(self) -> int:
        """How many partitions the events stream has."""
        ...

    @property
    def max_payload(self) -> int:
        """The largest message the server takes, in bytes."""
        ...

    async def publish(
        self, event: Event, *, msg_id: str | None = None, subject: str | None = None
    ) -> Published: ...

    async def publish_many(
        self, events: Iterable[Event], *, max_in_flight: int = 256
    ) -> list[Published]: ...

    async def publish_many_encoded(
        self, items: Sequence[Outgoing], *, max_in_flight: int = 256
    ) -> list[Published]: ...

    async def publish_tail_acked(
        self, items: Sequence[Outgoing], *, last_seq: int | None, max_in_flight: int = 1024
    ) -> int | None: ...

    async def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None: ...

    async def kv_keys(self, bucket: str, pattern: str = ">") -> list[str]: ...

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int | None: ...

    async def kv_update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int: ...

    def kv_watch(
        self, bucket: str, pattern: str = ">", *, include_current: bool = True
    ) -> AsyncIterator[KVChange]: ...

    async def ack_floor(self, stream: str, durable: str) -> int | None: ...

    async def restart_consumer(
        self,
        stream: str,
        durable: str,
        *,
        start: int,
        filter_subject: str,
        ack_wait: float,
        max_ack_pending: int,
    ) -> Fetcher: ...
