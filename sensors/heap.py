"""Keeping the garbage collector off the engine's hot path (pauses cost latency, see
bench/engine.py): no collection during a batch, and long-lived state frozen out of sight."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

REFREEZE_EVERY: Final = 1.0
"""Seconds between collections of the objects made since the last one (`keep_heap_old`)."""
UNFREEZE_EVERY: Final = 600.0
"""Seconds between full collections of everything, frozen objects too (`keep_heap_old`)."""


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is processed.

    A batch allocates tens of thousands of short-lived objects (decisions, records, encoded
    messages), which made the collector run dozens of times per batch, some of them full
    collections over the whole engine state: a fifth of the runtime's CPU (bench/engine.py).
    Paused, it runs once the batch is done. Nothing here makes cycles that need it sooner.
    """
    if not gc.isenabled():  # paused already (or by the host process): leave it as it is
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def keep_heap_old(*, everything: bool = False) -> None:
    """Collect garbage, then take every surviving object out of the collector's sight.

    A full collection walks every tracked object; an Axon's spec, compiled spec and state are
    tens of thousands of objects that live as long as the Axon, and a full collection over
    them took 60 ms in the latency bench (its p99). Frozen (`gc.freeze`) after the state is
    loaded, after a generation is applied and then every `REFREEZE_EVERY` seconds (so the
    runs started meanwhile join them: a full collection then walks about a second's worth of
    survivors, not 10,000 runs, which cost 30 ms pauses and the latency bench's p99), they
    are no longer walked. Frozen objects are still freed when their last reference goes; only
    cycles among them would stay: the engine's state makes none, but a process running other
    roles too (`ranvier up`: HTTP connections, tasks) may. So every `UNFREEZE_EVERY` seconds
    (`everything`) the frozen objects are collected as well: one long pause per ten minutes
    instead of memory that grows.
    """
    if everything:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
