"""The router's table: compiled, swapped in by one assignment, followed while the router runs.

A new table is compiled first (a bad one is refused and the old one kept) and then swapped in
by one assignment: each request reads the table once when it starts, so in-flight requests
finish on the table they started with. Following changes never gives up: when the source
fails (a NATS outage), the router keeps serving its last table, backs off, reads the whole
table again and follows from there.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from prometheus_client import Counter

from events.aio import checkpoint
from executors.serving.router.sources import TableSource
from executors.serving.routing import CompiledTable, RoutingError, RoutingTable, compile_table

log = structlog.get_logger(__name__)


class FollowedTable:
    """The compiled table a source gives now; `start()` loads it and follows its changes."""

    def __init__(self, source: TableSource, *, retry: tuple[float, float], swaps: Counter) -> None:
        """`retry`: first and longest wait before following a failed source again."""
        self.source = source
        self.retry = retry
        self.swaps = swaps
        self.compiled: CompiledTable | None = None
        self._watcher: asyncio.Task[None] | None = None

    def swap(self, table: RoutingTable) -> None:
        """Compile and install `table`; a table that does not compile is refused."""
        compiled = compile_table(table)
        self.compiled = compiled
        self.swaps.inc()
        log.info("router.table_swapped", revision=table.revision, deployers=len(table.deployers))

    async def start(self) -> None:
        """Load the first table, then follow changes in a task."""
        self.swap(await self.source.get())
        self._watcher = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stop following changes (the last table stays)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def _install(self, table: RoutingTable) -> None:
        try:
            self.swap(table)
        except RoutingError as exc:
            log.error("router.table_rejected", revision=table.revision, reason=str(exc))

    async def _follow(self) -> None:
        """Follow the source until cancelled; after a failure, back off, reload, follow again."""
        first, _ = self.retry
        delay = first
        while True:
            checkpoint()
            try:
                async for table in self.source.changes():
                    self._install(table)
                    delay = first
                reason = "the source's changes ended"
            except Exception as exc:  # any source, any outage: the router must keep following
                reason = str(exc) or repr(exc)
            log.warning("router.follow_interrupted", reason=reason, retry_in=delay)
            delay = await self._reload(delay)
            log.info("router.follow_resumed")

    async def _reload(self, delay: float) -> float:
        """Read the whole table again (what changed while not following), backing off while the
        source is down; returns the next wait."""
        _, longest = self.retry
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
            try:
                self._install(await self.source.get())
                return delay
            except Exception as exc:  # still down: wait longer (logged, never fatal)
                log.warning("router.reload_failed", reason=str(exc) or repr(exc), retry_in=delay)
