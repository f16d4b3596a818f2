"""AxonStore against a real nats-server: generations by CAS, history keys, announcing events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from events.bus import Bus
from events.model import AXON
from events.server import EmbeddedServer
from ranvier.cli import main
from sensors.axons import AxonStore, AxonStoreError, axon_event_id, spec_digest
from tests.integration.runtime_kit import CHANGED_SENSOR, NAME, stream_events, two_step_axon

pytestmark = pytest.mark.integration


async def _axon_events(bus: Bus) -> list[tuple[str, str, int]]:
    return [
        (e.id, e.data["action"], e.data["generation"])
        for e in await stream_events(bus)
        if e.type == AXON
    ]


async def test_submit_keeps_the_generation_for_the_same_spec_and_bumps_it_on_change(
    bus: Bus, tmp_path: Path
) -> None:
    store = AxonStore(bus)
    source = tmp_path / "axon.yaml"
    first = await store.submit(two_step_axon(), source)
    again = await store.submit(two_step_axon(), source)
    assert (first.generation, again.generation) == (1, 1)
    assert first.axon_dir == tmp_path
    changed = await store.submit(two_step_axon(CHANGED_SENSOR), source)
    assert changed.generation == 2
    assert changed.digest == spec_digest(two_step_axon(CHANGED_SENSOR)) != first.digest
    old = await store.get("default", NAME, 1)
    assert old is not None
    assert old.axon == two_step_axon()
    current = await store.get("default", NAME)
    assert current is not None
    assert current.generation == 2
    assert current.axon == two_step_axon(CHANGED_SENSOR)
    assert await _axon_events(bus) == [
        (axon_event_id("default", NAME, 1), "submitted", 1),
        (axon_event_id("default", NAME, 2), "submitted", 2),
    ]


async def test_concurrent_submits_of_different_specs_get_distinct_generations(bus: Bus) -> None:
    specs = [two_step_axon(), two_step_axon(CHANGED_SENSOR)]
    stored = await asyncio.gather(*(AxonStore(bus).submit(s) for s in specs))
    assert sorted(s.generation for s in stored) == [1, 2]
    for item in stored:
        kept = await AxonStore(bus).get("default", NAME, item.generation)
        assert kept is not None
        assert kept.digest == item.digest


async def test_delete_marks_the_axon_and_a_resubmit_starts_a_new_generation(bus: Bus) -> None:
    store = AxonStore(bus)
    await store.submit(two_step_axon())
    gone = await store.delete("default", NAME)
    assert gone.deleted
    assert await store.list() == []
    assert [s.name for s in await store.list(include_deleted=True)] == [NAME]
    back = await store.submit(two_step_axon())
    assert back.generation == 2
    assert not back.deleted
    assert [a for _, a, _ in await _axon_events(bus)] == ["submitted", "deleted", "submitted"]
    with pytest.raises(AxonStoreError, match="no Axon default/nobody was submitted"):
        await store.delete("default", "nobody")


async def test_watch_yields_current_records_then_changes(bus: Bus) -> None:
    store = AxonStore(bus)
    await store.submit(two_step_axon())
    seen: list[tuple[int, bool]] = []
    watch = store.watch()
    seen.append(((first := await anext(watch)).generation, first.deleted))
    await store.submit(two_step_axon(CHANGED_SENSOR))
    seen.append(((second := await anext(watch)).generation, second.deleted))
    await watch.aclose()  # type: ignore[attr-defined]  # an async generator underneath
    assert seen == [(1, False), (2, False)]


async def test_all_namespaces_finds_the_axon_wherever_it_is_and_names_a_tie(
    bus: Bus, nats_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-A` on commands that take `-n`: the one namespace holding the name, or an error naming
    every namespace that holds it; `list axon -n` shows one namespace."""
    store = AxonStore(bus)
    team = two_step_axon()
    team = team.model_copy(
        update={"metadata": team.metadata.model_copy(update={"namespace": "team-a"})}
    )
    await store.submit(team)
    url = ["--nats-url", nats_server.url]

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, [*argv, *url])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = await cli("get", "axon", NAME, "-o", "json")
    assert code == 1
    assert f"no Axon default/{NAME}" in err
    code, out, _ = await cli("get", "axon", NAME, "-A", "-o", "json")
    assert code == 0
    assert json.loads(out)["namespace"] == "team-a"
    code, out, _ = await cli("trigger", NAME, "no-such-sensor", "-A")
    assert code == 1  # found the Axon in team-a; the sensor is the mistake now
    await store.submit(two_step_axon())  # the same name in default too
    code, _, err = await cli("get", "axon", NAME, "-A")
    assert code == 1
    assert f"Axon {NAME} is in namespaces default, team-a" in err
    code, out, _ = await cli("list", "axon", "-n", "team-a", "-o", "json")
    assert [(r["namespace"], r["name"]) for r in json.loads(out)] == [("team-a", NAME)]
    code, out, _ = await cli("list", "axon", "-o", "json")
    assert sorted(r["namespace"] for r in json.loads(out)) == ["default", "team-a"]
    code, _, err = await cli("get", "axon", "nowhere", "-A")
    assert code == 1
    assert "no Axon nowhere was submitted in any namespace" in err
