"""The runtime keeps long-lived objects out of the collector's sight, and still frees cycles."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from sensors.heap import keep_heap_old


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # leave the test process as it was


def test_frozen_cycles_are_freed_by_the_periodic_full_collection() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    alive = weakref.ref(a)
    keep_heap_old()  # frozen while referenced
    del a, b
    keep_heap_old()  # the frozen cycle is not walked: still there
    assert alive() is not None
    keep_heap_old(everything=True)
    assert alive() is None


def test_young_cycles_are_freed_by_every_collection() -> None:
    keep_heap_old()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    keep_heap_old()
    assert alive() is None
