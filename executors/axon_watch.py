"""Which Axons are deleted, followed live from the events stream (the executor stops their runs).

The executor must stop an Axon's runs (and its model servers) when the Axon is deleted, and
must not start new ones for it. This follows the Axon events published after the executor
started; a server restart forgets the ordered consumer under `follow`, so the follow is made
again after every reconnect, from the event after the last one seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from events import subjects
from events.aio import checkpoint
from events.bus import OUTAGE_ERRORS, Bus, Replayed
from events.model import AXON, AxonData, EventError

log = structlog.get_logger(__name__)

RETRY_DELAY: Final = 0.5

OnDeleted = Callable[[str, str], Awaitable[None]]
"""Called with (namespace, axon) when an Axon is deleted."""


class AxonWatch:
    """Follows Axon events: the deleted Axons (`deleted`), and a callback on each deletion."""

    def __init__(self, bus: Bus, on_deleted: OnDeleted) -> None:
        self.bus = bus
        self.on_deleted = on_deleted
        self.deleted: set[tuple[str, str]] = set()  # (namespace, axon) deleted while watched

    def is_deleted(self, namespace: str, axon: str) -> bool:
        """True if the Axon was deleted (and not submitted again) while watched."""
        return (namespace, axon) in self.deleted

    async def run(self) -> None:
        """Follow Axon events published from now on, until cancelled (outages are retried)."""
        since: int | None = None
        while True:
            checkpoint()
            try:
                if since is None:
                    info = await self.bus.stream_info(subjects.EVENTS_STREAM)
                    since = int(info.state.last_seq or 0) + 1
                since = await self._follow(since)
            except OUTAGE_ERRORS as exc:
                log.warning("executor.axon_watch_failed", error=str(exc) or repr(exc))
                await asyncio.sleep(RETRY_DELAY)

    async def _follow(self, since: int) -> int:
        """Handle Axon events from stream sequence `since` until the bus reconnects; returns
        the sequence to follow from next."""
        reconnected = asyncio.ensure_future(self.bus.next_reconnect())
        follow = self.bus.follow(since=since, filter_subject=subjects.events_filter(None, "axon"))
        item: asyncio.Future[Replayed] | None = None
        try:
            while True:
                checkpoint()
                item = asyncio.ensure_future(anext(follow))
                await asyncio.wait({item, reconnected}, return_when=asyncio.FIRST_COMPLETED)
                if not item.done():
                    return since
                since = item.result().seq + 1
                await self._on_event(item.result())
        finally:
            reconnected.cancel()
            if item is not None and not item.done():
                item.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await item
            await follow.aclose()

    async def _on_event(self, item: Replayed) -> None:
        if item.event.type != AXON:
            return
        try:
            data = item.event.payload()
        except EventError:
            return
        assert isinstance(data, AxonData)
        where = (data.namespace, data.axon)
        if data.action == "submitted":
            self.deleted.discard(where)
            return
        self.deleted.add(where)
        await self.on_deleted(data.namespace, data.axon)


__all__ = ["AxonWatch", "OnDeleted"]
