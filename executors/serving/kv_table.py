"""The router's table from the `ranvier_models` KV bucket, and the router as a role.

Each Axon's deployments write their own part of the table (`router.<ns>.<axon>`), so two
deployers never rewrite each other's routes; the router needs one table, so this module merges
the parts. A KV watch delivers every change in revision order, and each merged table is a
consistent snapshot of the bucket at that revision: the router compiles it and swaps it in with
one assignment (in-flight requests finish on the table they started with).

A watch does not survive every outage: a restarted nats-server has forgotten the watch's
ordered consumer and nats-py may wait a long time (or forever) before it notices. So the watch
ends with `WatchLost` when the connection comes back, and the router reads the whole table
again and watches anew (`Router._follow`).

`RouterRole` is what `ranvier run --role router` and `ranvier up` run: the router on a host and
port, its base URL recorded under `router.url` so that the deployer and `ranvier endpoint` can
tell users where their models are. In a cluster the address a router binds (0.0.0.0:8080 in a
pod) is no use to anyone else, so it records its public URL instead (`--public-url`, the
Service's DNS name in the manifests); every replica records the same one, so none removes it
when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Final

import structlog
from pydantic import ValidationError

from events.aio import checkpoint
from events.bus import Bus, BusError, KVChange
from events.subjects import MODELS_BUCKET
from executors.serving.hosting import serving
from executors.serving.router import create_router_app
from executors.serving.routing import RoutingTable

log = structlog.get_logger(__name__)

ROUTER_URL_KEY: Final = "router.url"
PARTS_PATTERN: Final = "router.*.*"  # router.<ns>.<axon>; router.url has one token less


def merge_parts(parts: Mapping[str, RoutingTable], revision: int) -> RoutingTable:
    """One table from the axons' parts (in key order, so the result is deterministic)."""
    return RoutingTable(
        revision=revision,
        deployers=[d for key in sorted(parts) for d in parts[key].deployers],
    )


class WatchLost(BusError):
    """The connection to NATS came back after an outage: the table's watch must be made again."""


def parse_part(key: str, raw: bytes) -> RoutingTable | None:
    """A part from its stored bytes, or None (logged) when it is not a valid table."""
    try:
        return RoutingTable.model_validate_json(raw)
    except ValidationError as exc:
        log.error("router.part_rejected", key=key, reason=str(exc.errors()[0]["msg"]))
        return None


class KvTableSource:
    """A `TableSource` over the router keys of `ranvier_models`."""

    def __init__(self, bus: Bus, *, bucket: str = MODELS_BUCKET) -> None:
        self.bus = bus
        self.bucket = bucket
        self._revision = 0

    async def get(self) -> RoutingTable:
        """The table merged from the parts stored now."""
        parts: dict[str, RoutingTable] = {}
        revision = 0
        for key in await self.bus.kv_keys(self.bucket, PARTS_PATTERN):
            found = await self.bus.kv_get(self.bucket, key)
            if found is None:
                continue
            revision = max(revision, found[1])
            part = parse_part(key, found[0])
            if part is not None:
                parts[key] = part
        self._revision = revision
        return merge_parts(parts, revision)

    async def changes(self) -> AsyncGenerator[RoutingTable, None]:
        """A merged table after every change to a part (runs until cancelled).

        Current values are replayed first; a merged table is yielded for those only when they
        are newer than what `get()` returned, so nothing changed between the two is missed.
        Raises `WatchLost` when the connection comes back after an outage (call `get()`, then
        `changes()` again) and `BusError` when the watch cannot be made.
        """
        parts: dict[str, RoutingTable] = {}
        async for change in self._watch():
            if change.value is None:
                parts.pop(change.key, None)
            else:
                part = parse_part(change.key, change.value)
                if part is None:
                    continue  # keep the key's previous part
                parts[change.key] = part
            if change.initial and change.revision <= self._revision:
                continue
            self._revision = max(self._revision, change.revision)
            yield merge_parts(parts, change.revision)

    async def _watch(self) -> AsyncGenerator[KVChange, None]:
        """`kv_watch` of the parts until the bus reconnects (then `WatchLost`)."""
        reconnected = asyncio.ensure_future(self.bus.next_reconnect())
        watch = self.bus.kv_watch(self.bucket, PARTS_PATTERN)
        change: asyncio.Future[KVChange] | None = None
        try:
            while True:
                checkpoint()
                change = asyncio.ensure_future(anext(watch))
                await asyncio.wait({change, reconnected}, return_when=asyncio.FIRST_COMPLETED)
                if not change.done():
                    raise WatchLost("NATS reconnected: the routing table's watch is made again")
                if isinstance(change.exception(), StopAsyncIteration):
                    return
                yield change.result()
        finally:
            reconnected.cancel()
            if change is not None and not change.done():
                change.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await change
            await watch.aclose()


class RouterRole:
    """Serves the router over `KvTableSource` and records its URL under `router.url`."""

    def __init__(
        self,
        bus: Bus,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_listening: Callable[[str], None] | None = None,
        backend_timeout_s: float = 30.0,
        public_url: str | None = None,
    ) -> None:
        """`public_url`: the URL recorded for clients instead of the bound address."""
        self.bus = bus
        self.host = host
        self.port = port
        self.public_url = public_url.rstrip("/") if public_url else None
        self._router: Any = None
        self.on_listening = on_listening
        self.backend_timeout_s = backend_timeout_s
        self.url: str | None = None
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled; then stop accepting, finish requests, forget the URL."""
        app = create_router_app(KvTableSource(self.bus), timeout=self.backend_timeout_s)
        self._router = app.state.router
        try:
            async with serving(app, self.host, self.port) as (bound, task):
                self.url = self.public_url or bound
                await self.bus.kv_put(
                    MODELS_BUCKET, ROUTER_URL_KEY, json.dumps({"url": self.url}).encode()
                )
                log.info("router.listening", url=self.url, bound=bound)
                self.listening.set()
                if self.on_listening is not None:
                    self.on_listening(self.url)
                await asyncio.shield(task)
        finally:
            await self._forget_url()

    @property
    def table_loaded(self) -> bool:
        """Whether the router serves a routing table (read by the `/readyz` probe)."""
        return self._router is not None and self._router.compiled is not None

    async def _forget_url(self) -> None:
        """Remove `router.url` if it still names this router (another may have replaced it);
        a public URL stays: it names the Service, which the other replicas still serve."""
        if self.url is None or self.public_url is not None:
            return
        try:
            found = await self.bus.kv_get(MODELS_BUCKET, ROUTER_URL_KEY)
            if found is not None and json.loads(found[0]).get("url") == self.url:
                await self.bus.kv_delete(MODELS_BUCKET, ROUTER_URL_KEY)
        except (BusError, ValueError, OSError) as exc:
            # the bus may already be closing at shutdown; a stale URL is only informative
            log.warning("router.url_not_removed", error=str(exc))


__all__ = [
    "PARTS_PATTERN",
    "ROUTER_URL_KEY",
    "KvTableSource",
    "RouterRole",
    "WatchLost",
    "merge_parts",
]
