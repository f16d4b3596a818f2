"""An engine replica as its own OS process, for the crash and replica tests:
`python -m tests.integration.engine_process NATS_URL[,URL...] [REPLICA] [LEASE_TTL] [REPLICAS]`
(REPLICAS: the streams' and buckets' replica count, on a NATS cluster).

Prints `ready` once it has taken part in a partition assignment; runs until killed. SIGTERM
hands its partitions over gracefully (as a Kubernetes pod's shutdown does), then exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import structlog

from events.bus import Bus, ConnectOptions, StreamLimits
from sensors.runtime import EngineRuntime


async def main(url: str, replica: str | None, lease_ttl: float, replicas: int | None) -> None:
    options = ConnectOptions(
        servers=url.split(","), request_timeout=2.0, reconnect_wait=0.1, name="engine-process"
    )
    async with Bus.connect(options, limits=StreamLimits(replicas=replicas)) as bus:
        runtime = EngineRuntime(bus, replica=replica, lease_ttl=lease_ttl, batch=64)
        task = asyncio.create_task(runtime.run())
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        ready = asyncio.create_task(runtime.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print("ready", flush=True)
        try:
            await task
        except asyncio.CancelledError:
            if task.cancelled():  # SIGTERM: handed over
                return
            raise


if __name__ == "__main__":
    structlog.configure(
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    args = sys.argv[1:]
    asyncio.run(
        main(
            args[0],
            args[1] if len(args) > 1 else None,
            float(args[2]) if len(args) > 2 else 8.0,
            int(args[3]) if len(args) > 3 else None,
        )
    )
