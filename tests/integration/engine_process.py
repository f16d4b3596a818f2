"""The engine runtime as its own OS process, for the crash test: `python -m
tests.integration.engine_process NATS_URL[,URL...]`. Prints `ready` once consuming; runs until
killed."""

from __future__ import annotations

import asyncio
import logging
import sys

import structlog

from events.bus import Bus, ConnectOptions
from sensors.runtime import EngineRuntime


async def main(url: str) -> None:
    options = ConnectOptions(
        servers=url.split(","), request_timeout=2.0, reconnect_wait=0.1, name="engine-process"
    )
    async with Bus.connect(options) as bus:
        runtime = EngineRuntime(bus, batch=64)
        task = asyncio.create_task(runtime.run())
        await runtime.ready.wait()
        print("ready", flush=True)
        await task


if __name__ == "__main__":
    structlog.configure(
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    asyncio.run(main(sys.argv[1]))
