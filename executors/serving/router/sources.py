"""Where the router's routing table comes from: memory, a JSON file, or (`kv_table.py`) KV.

A source gives the current table and then every later one. A file that becomes invalid is
logged and skipped, so the router keeps the table it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Protocol

import structlog
from pydantic import ValidationError

from events.errors import RanvierError
from executors.serving.routing import RoutingTable

log = structlog.get_logger(__name__)


class TableSource(Protocol):
    """Where the router's table comes from, and tells when it changes."""

    async def get(self) -> RoutingTable:
        """The current table."""
        ...

    def changes(self) -> AsyncIterator[RoutingTable]:
        """Every later table, as it changes (runs until cancelled)."""
        ...


class InMemoryTableSource:
    """A table held in memory; `set()` publishes a new one (tests, `ranvier up`)."""

    def __init__(self, table: RoutingTable | None = None) -> None:
        self._table = table or RoutingTable()
        self._changed = asyncio.Event()

    async def get(self) -> RoutingTable:
        """The current table."""
        return self._table

    def set(self, table: RoutingTable) -> None:
        """Replace the table and wake every `changes()` iterator (call it on the router's loop)."""
        self._table = table
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changes(self) -> AsyncGenerator[RoutingTable, None]:
        """Every later table."""
        while True:
            await self._changed.wait()
            yield self._table


class TableFileError(RanvierError):
    """A routing table file that is missing or not a valid table."""


def read_table_file(path: Path) -> RoutingTable:
    """A routing table from a JSON file."""
    try:
        return RoutingTable.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise TableFileError(f"routing table {path} does not exist") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TableFileError(
            f"routing table {path} is invalid: {where}: {first['msg']}",
            hint="fix the file; the router keeps its previous table",
        ) from exc


class FileTableSource:
    """A table in a JSON file, polled for changes (a bad edit is logged and skipped)."""

    def __init__(self, path: Path, *, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    async def get(self) -> RoutingTable:
        """The table in the file now."""
        return await asyncio.to_thread(read_table_file, self.path)

    async def changes(self) -> AsyncGenerator[RoutingTable, None]:
        """A new table each time the file changes to a valid one."""
        seen = await asyncio.to_thread(self._stamp)
        while True:
            await asyncio.sleep(self.interval)
            stamp = await asyncio.to_thread(self._stamp)
            if stamp == seen or stamp is None:
                continue
            seen = stamp
            try:
                yield await self.get()
            except TableFileError as exc:
                log.error("router.table_rejected", path=str(self.path), reason=str(exc))
