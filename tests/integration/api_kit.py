"""Run real roles in this process with the API role in front, for tests that speak HTTP to it.

`serving(bus, state_dir, roles)` builds the roles (engine, executor, router, api ... as
`ranvier up` does) on a connected bus, runs them, waits until the API listens and yields its
URL and the roles; everything is cancelled and awaited on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from events.bus import Bus
from ranvier.api.role import ApiRole
from ranvier.app import RoleOptions, build_roles, run_roles

START_WITHIN = 30.0


@contextlib.asynccontextmanager
async def serving(
    bus: Bus, state_dir: Path, roles: Sequence[str] = ("engine", "api"), **options: Any
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The API's base URL (ending in `/`) and the running roles."""
    built = build_roles(bus, list(roles), RoleOptions(state_dir, **options))
    api = built["api"]
    assert isinstance(api, ApiRole)
    stop = asyncio.Event()
    runner = asyncio.create_task(run_roles(built, stop))
    try:
        async with asyncio.timeout(START_WITHIN):
            listening = asyncio.create_task(api.listening.wait())
            await asyncio.wait([listening, runner], return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                runner.result()
        assert api.url is not None
        yield api.url, built
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float = 60.0, every: float = 0.2
) -> Any:
    """Poll `check` until it returns something truthy; its last value on timeout is an error."""
    last: Any = None
    async with asyncio.timeout(within):
        while True:
            last = await check()
            if last:
                return last
            await asyncio.sleep(every)
