"""`events.aio.checkpoint`: a loop cancelled while a library swallows the cancellation stops."""

from __future__ import annotations

import asyncio
import sys

import pytest

from events.aio import checkpoint


async def _loop(turns: list[int], futures: list[asyncio.Future[int]], *, guarded: bool) -> None:
    while True:
        if guarded:
            checkpoint()
        turns.append(len(turns))
        fut = asyncio.get_running_loop().create_future()
        futures.append(fut)
        # What nats-py does in every request: on 3.11 a cancellation arriving as `fut`
        # completes is lost here (CPython gh-86296).
        await asyncio.wait_for(fut, 30)  # noqa: TID251 -- the hazard under test


async def _cancel_as_it_completes(*, guarded: bool) -> tuple[asyncio.Task[None], list[int]]:
    turns: list[int] = []
    futures: list[asyncio.Future[int]] = []
    task = asyncio.create_task(_loop(turns, futures, guarded=guarded))
    await asyncio.sleep(0)  # the task runs up to its wait
    assert len(futures) == 1
    futures[0].set_result(1)  # the reply arrives ...
    task.cancel()  # ... in the same turn of the event loop as the cancellation
    for _ in range(10):
        await asyncio.sleep(0)
    return task, turns


async def test_a_guarded_loop_stops_although_wait_for_swallowed_the_cancellation() -> None:
    task, turns = await _cancel_as_it_completes(guarded=True)
    assert task.done()
    assert task.cancelled()
    assert turns == [0]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython 3.12 fixed wait_for")
async def test_without_the_checkpoint_the_loop_runs_on_after_cancel() -> None:
    """The bug itself, on 3.11: this is why every cancelled-to-stop loop has a checkpoint."""
    task, turns = await _cancel_as_it_completes(guarded=False)
    try:
        assert not task.done()
        assert turns == [0, 1]  # a second turn began after cancel()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_checkpoint_passes_in_a_task_not_cancelled() -> None:
    checkpoint()  # no exception
    async with asyncio.timeout(5):  # a timeout's own cancellation is settled on exit
        await asyncio.sleep(0)
    checkpoint()
