"""`Bus.kv_keys` lists exactly the keys that are set, also when many listings run at once.

nats-py's watch-based listing announced "no more current values" from a push consumer's info,
racing with delivery: under load it returned too few keys (seen as a deployment that recovery
never found). The pull-consumer listing must be exact every time.
"""

from __future__ import annotations

import asyncio

from events import subjects
from events.bus import Bus, kv_key


async def test_kv_keys_lists_exactly_the_set_keys_under_concurrent_reads(bus: Bus) -> None:
    bucket = subjects.MODELS_BUCKET
    keys = [kv_key("deploy", "default", f"axon{i:03d}", "d") for i in range(300)]
    await asyncio.gather(*(bus.kv_put(bucket, k, b"{}") for k in keys))
    deleted = set(keys[::7])
    for key in deleted:
        await bus.kv_delete(bucket, key)
    await bus.kv_put(bucket, kv_key("router", "url"), b"{}")  # outside the pattern
    expected = sorted(set(keys) - deleted)

    listings = await asyncio.gather(*(bus.kv_keys(bucket, "deploy.>") for _ in range(25)))

    for listing in listings:
        assert sorted(listing) == expected
        assert len(listing) == len(set(listing))


async def test_kv_keys_of_an_empty_pattern_is_empty(bus: Bus) -> None:
    assert await bus.kv_keys(subjects.MODELS_BUCKET, "nothing.>") == []


async def test_a_key_set_again_after_a_delete_is_listed(bus: Bus) -> None:
    bucket = subjects.RUNS_BUCKET
    await bus.kv_put(bucket, "task.a", b"1")
    await bus.kv_delete(bucket, "task.a")
    assert await bus.kv_keys(bucket, "task.>") == []
    await bus.kv_put(bucket, "task.a", b"2")
    assert await bus.kv_keys(bucket, "task.>") == ["task.a"]
