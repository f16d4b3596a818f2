"""Keeping one embedded nats-server running: `ranvier up` owns its server.

When the child dies (a crash, the OOM killer, a stray SIGKILL) it is started again on the same
port and store, after a backoff, and every client's reconnect finds it where it was. A server
that keeps dying is not restarted forever: after `max_crashes` within `window` seconds the
supervisor gives up with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from events.aio import checkpoint
from events.server.errors import ServerError, ServerGaveUp
from events.server.process import EmbeddedServer

log = structlog.get_logger(__name__)

MAX_CRASHES: Final = 5
CRASH_WINDOW: Final = 60.0
BACKOFF: Final = 0.2
BACKOFF_CAP: Final = 5.0
WATCH_EVERY: Final = 0.1


class Supervisor:
    """Keeps a started `EmbeddedServer` running: after a crash, starts it again on the same port
    and store, waiting `backoff` seconds doubled for each earlier crash in the window (at most
    `backoff_cap`); the `max_crashes`-th crash within `window` seconds raises `ServerGaveUp`."""

    def __init__(
        self,
        server: EmbeddedServer,
        *,
        max_crashes: int = MAX_CRASHES,
        window: float = CRASH_WINDOW,
        backoff: float = BACKOFF,
        backoff_cap: float = BACKOFF_CAP,
        every: float = WATCH_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_crashes < 1:
            raise ValueError("max_crashes must be at least 1")
        self.server = server
        self.max_crashes = max_crashes
        self.window = window
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.every = every
        self.clock = clock
        self.crashes: list[float] = []  # clock times of the crashes still in the window
        self.restarts = 0

    def delay(self) -> float:
        """Seconds to wait before the next start, from the crashes in the window."""
        return min(self.backoff * 2.0 ** max(len(self.crashes) - 1, 0), self.backoff_cap)

    def crashed(self, why: str) -> None:
        """Count a crash now; raises `ServerGaveUp` when there were too many in the window."""
        now = self.clock()
        self.crashes = [t for t in self.crashes if now - t < self.window] + [now]
        if len(self.crashes) >= self.max_crashes:
            raise ServerGaveUp(
                f"nats-server crashed {len(self.crashes)} times in {self.window:g} s: {why}"
            )

    async def run(self) -> None:
        """Watch the server until cancelled, restarting it after each crash (see the class)."""
        server = self.server
        if server.port is None:
            raise ServerError("start the embedded nats-server before supervising it")
        server.requested_port = server.port  # clients reconnect to the URL they know
        while True:
            checkpoint()
            await asyncio.sleep(self.every)
            exited = server.exited()
            if exited is None:
                continue
            why = f"{exited}, last logged: {server.last_line()}"
            self.crashed(why)
            log.warning(
                "nats.crashed", why=why, restart_in_s=self.delay(), crashes=len(self.crashes)
            )
            await self._restart()

    async def _restart(self) -> None:
        """Start the server again after the backoff; a start that fails counts as a crash."""
        while True:
            checkpoint()
            await asyncio.sleep(self.delay())
            try:
                await _finish_even_if_cancelled(asyncio.to_thread(self.server.start))
            except ServerError as exc:
                self.crashed(str(exc))
                log.warning("nats.restart_failed", error=str(exc), retry_in_s=self.delay())
                continue
            self.restarts += 1
            log.info("nats.restarted", url=self.server.url, restarts=self.restarts)
            return


async def _finish_even_if_cancelled(work: Awaitable[str]) -> str:
    """Await `work`; a cancellation waits for it to end first, so that a server being started
    in a thread is never stopped by someone else half-way through."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
