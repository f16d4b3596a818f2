"""KV writes whose answer is lost after the server stored them (what a stream leader crashing
between commit and reply does), on a real server: the writer still gets the right answer.

The loss is injected around nats-py's publish: the real write goes through and is stored, then
its caller sees a timeout, as it would when the reply died with the leader. The leader-kill
tests (test_cluster_failover.py) rarely hit this window; here it is hit every time.
"""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
from structlog.testing import capture_logs

from events import subjects
from events.bus import Bus, RevisionMismatch

pytestmark = pytest.mark.integration

BUCKET = subjects.RUNS_BUCKET


@pytest.fixture
def lose_next_answer(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Arm with `armed.append(1)`: the next JetStream publish is stored, its answer lost."""
    armed: list[int] = []
    publish = bus.js.publish

    async def publish_and_lose(*args: Any, **kwargs: Any) -> Any:
        ack = await publish(*args, **kwargs)
        if armed:
            armed.pop()
            raise nats.errors.TimeoutError
        return ack

    monkeypatch.setattr(bus.js, "publish", publish_and_lose)
    return armed


async def test_a_claim_whose_answer_was_lost_is_still_won(
    bus: Bus, lose_next_answer: list[int]
) -> None:
    lose_next_answer.append(1)
    with capture_logs() as logs:
        revision = await bus.kv_create(BUCKET, "claim.x", b"mine")
    assert revision is not None  # the old client took its own stored claim for someone else's
    assert [e["event"] for e in logs] == ["bus.kv_retry", "bus.kv_retry_stored"]
    assert await bus.kv_get(BUCKET, "claim.x") == (b"mine", revision)
    assert await bus.kv_create(BUCKET, "claim.x", b"other") is None  # and nobody else wins it


async def test_a_compare_and_set_whose_answer_was_lost_succeeded(
    bus: Bus, lose_next_answer: list[int]
) -> None:
    first = await bus.kv_put(BUCKET, "counter", b"1")
    lose_next_answer.append(1)
    second = await bus.kv_update(BUCKET, "counter", b"2", first)
    assert await bus.kv_get(BUCKET, "counter") == (b"2", second)
    with pytest.raises(RevisionMismatch):  # a real conflict is still one
        await bus.kv_update(BUCKET, "counter", b"3", first)


async def test_a_put_whose_answer_was_lost_is_stored_once(
    bus: Bus, lose_next_answer: list[int]
) -> None:
    before = await bus.kv_put(BUCKET, "record", b"a")
    lose_next_answer.append(1)
    after = await bus.kv_put(BUCKET, "record", b"b")
    assert after == before + 1  # the retry was a duplicate (same Msg-Id), not a second write
    info = await bus.stream_info(f"KV_{BUCKET}")
    assert info.state.last_seq == after


async def test_a_deleted_key_can_be_claimed_again(bus: Bus) -> None:
    assert await bus.kv_create(BUCKET, "claim.y", b"1") is not None
    await bus.kv_delete(BUCKET, "claim.y")
    assert await bus.kv_get(BUCKET, "claim.y") is None
    again = await bus.kv_create(BUCKET, "claim.y", b"2")
    assert again is not None
    assert await bus.kv_get(BUCKET, "claim.y") == (b"2", again)
    assert await bus.kv_create(BUCKET, "claim.y", b"3") is None


async def test_an_invalid_key_is_refused_before_anything_is_sent(bus: Bus) -> None:
    with pytest.raises(nats.js.errors.InvalidKeyError):
        await bus.kv_put(BUCKET, "a b", b"1")
    with pytest.raises(nats.js.errors.InvalidKeyError):
        await bus.kv_create(BUCKET, ".a", b"1")
