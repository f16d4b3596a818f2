"""asyncio helpers for loops that must stop when cancelled, on Python 3.11 too.

Python 3.11's `asyncio.wait_for` can swallow a cancellation: when the task is cancelled at the
moment the awaited future completes, `wait_for` returns the result and the `CancelledError`
is lost (CPython gh-86296, fixed in 3.12 by reimplementing it on `asyncio.timeout`). nats-py
awaits `wait_for` in every request, flush and publish ack, so a long-running loop cancelled at
such a moment went on running, and whoever awaited its task after cancelling it waited
forever (an engine runtime stopped by a test hung this way, 1 run in 10 under load).

So: our own code waits with `asyncio.timeout` (which counts cancellations properly), never
`wait_for`; and every loop that runs until cancelled calls `checkpoint()` once per turn, so a
cancellation swallowed inside a library is honoured at the next turn. The task remembers it
was asked to stop (`Task.cancelling()` stays above zero), which is what `checkpoint` reads.
"""

from __future__ import annotations

import asyncio

__all__ = ["checkpoint"]


def checkpoint() -> None:
    """Raise `CancelledError` if the current task was cancelled and went on running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
