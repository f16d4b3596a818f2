"""A partition engine's commit on the in-memory bus: publish, then state, then ack.

What the engine requests is not written out by hand: the pure engine, run over the events
the stream holds, says which actions are due (`expected_actions`); the Axon and its events are
the runtime tests' (`tests/integration/runtime_kit.py`). The journal of the bus
records every effect in order, and planned failures break the commit at one step each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from events import subjects
from events.bus import Outgoing
from events.bus.memory import MemoryBus
from events.model import Event, EventError
from sensors.axons import AxonStore
from sensors.partition import PartitionEngine
from tests.integration.runtime_kit import expected_keys, prep_done, two_step_axon

EVENTS = subjects.EVENTS_STREAM
ACTIONS = subjects.ACTIONS_STREAM
STATE = f"KV_{subjects.STATE_BUCKET}"


async def submit_and_prep(bus: MemoryBus, runs: int) -> None:
    """Submit the Axon, then report `runs` successful runs of Prep (each fires `retrain`)."""
    await AxonStore(bus).submit(two_step_axon())
    for n in range(runs):
        await bus.publish(prep_done(n))


def expected_actions(bus: MemoryBus) -> list[str]:
    """Idempotency keys the pure engine requests for the valid stored events, in order."""
    events: list[Event] = []
    for stored in bus.messages(EVENTS):
        with contextlib.suppress(EventError):  # terminated by the runtime, never stepped
            events.append(Event.from_json(stored.data))
    return expected_keys(two_step_axon(), events)


def stored_actions(bus: MemoryBus) -> list[str]:
    """Msg-Ids of the action requests the actions stream holds, in order."""
    return [m.msg_id for m in bus.messages(ACTIONS)]


def position(journal: list[tuple[str, str, int]], op: str, stream: str) -> int:
    """Index of the first `op` on `stream` in the journal (-1 if none)."""
    return next((i for i, entry in enumerate(journal) if entry[:2] == (op, stream)), -1)


def junk(data: bytes, msg_id: str) -> Outgoing:
    """A message on an event subject that is not an event."""
    return Outgoing(subjects.event_subject("pipe", "lifecycle", "Prep"), data, msg_id)


@contextlib.asynccontextmanager
async def stepping(bus: MemoryBus) -> AsyncIterator[PartitionEngine]:
    """A partition engine on partition 0 of `bus`, running until the block ends."""
    part = PartitionEngine(bus, partition=0, batch=16, max_wait=0.01, write_interval=0.0)
    task = asyncio.create_task(part.run())
    try:
        yield part
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def all_acked(bus: MemoryBus, part: PartitionEngine) -> None:
    """Wait until the partition's ack floor covers the whole events stream."""
    last = bus.messages(EVENTS)[-1].seq
    async with asyncio.timeout(10):
        await bus.acked(EVENTS, part.durable, last)


async def test_a_batch_is_published_then_its_state_written_then_acked() -> None:
    bus = MemoryBus(partitions=1)
    await submit_and_prep(bus, 5)
    async with stepping(bus) as part:
        await all_acked(bus, part)
    assert stored_actions(bus) == expected_actions(bus)
    assert len(stored_actions(bus)) == 5
    journal = bus.journal
    assert position(journal, "ack", EVENTS) > position(journal, "publish", STATE)
    assert position(journal, "publish", STATE) > position(journal, "publish", ACTIONS) >= 0
    # Every ack comes after a state write that itself comes after the actions it covers.
    for i, (op, stream, seq) in enumerate(journal):
        if (op, stream) != ("ack", EVENTS):
            continue
        writes = [j for j in range(i) if journal[j][:2] == ("publish", STATE)]
        assert writes, f"ack of seq {seq} before any state write"
        actions_before = [j for j in range(i) if journal[j][:2] == ("publish", ACTIONS)]
        assert not actions_before or max(actions_before) < max(writes)


async def test_a_failed_state_write_acks_nothing_and_every_action_is_stored_once() -> None:
    bus = MemoryBus(partitions=1)
    await submit_and_prep(bus, 4)
    bus.fail_next("publish", STATE)
    async with stepping(bus) as part:
        await all_acked(bus, part)
        failures = part.stats.failures
    assert failures == 1
    journal = bus.journal
    first_write = position(journal, "publish", STATE)
    assert 0 <= first_write < position(journal, "ack", EVENTS)
    # The events came again and were stepped again: their actions' Msg-Ids stored nothing twice.
    assert any(op == "duplicate" and stream == ACTIONS for op, stream, _ in journal)
    assert stored_actions(bus) == expected_actions(bus)


async def test_events_the_stored_state_has_seen_are_acked_without_being_stepped() -> None:
    bus = MemoryBus(partitions=1)
    await submit_and_prep(bus, 3)
    bus.fail_next("ack", EVENTS)  # the state is written, the ack is lost
    async with stepping(bus) as part:
        await all_acked(bus, part)
        redelivered = part.stats.redelivered
    journal = bus.journal
    written = position(journal, "publish", STATE)
    assert written >= 0
    # After the restart every event came again from the ack floor and was recognised by the
    # sequence the state records: nothing was stepped, so nothing was even offered again.
    assert redelivered == len(bus.messages(EVENTS))
    assert [e for e in journal[written:] if e[1] == ACTIONS] == []
    assert stored_actions(bus) == expected_actions(bus)


async def test_a_malformed_event_is_terminated_and_the_stream_flows() -> None:
    bus = MemoryBus(partitions=1)
    await AxonStore(bus).submit(two_step_axon())
    await bus.publish_many_encoded([junk(b"{not json", "junk-1")])
    await bus.publish(prep_done(0))
    async with stepping(bus) as part:
        await all_acked(bus, part)
        assert part.stats.malformed == 1
    malformed = bus.messages(EVENTS)[1].seq
    assert ("term", EVENTS, malformed) in bus.journal
    assert len(stored_actions(bus)) == 1


async def test_a_failed_publish_writes_no_state_and_acks_nothing() -> None:
    bus = MemoryBus(partitions=1)
    await submit_and_prep(bus, 3)
    bus.fail_next("publish", ACTIONS)
    async with stepping(bus) as part:
        await all_acked(bus, part)
        failures = part.stats.failures
    assert failures == 1
    journal = bus.journal
    first_action = position(journal, "publish", ACTIONS)
    assert (
        0 <= first_action < position(journal, "publish", STATE) < position(journal, "ack", EVENTS)
    )
    assert stored_actions(bus) == expected_actions(bus)
