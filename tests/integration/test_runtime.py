"""The engine runtime against a real nats-server: actions, redelivery, bad events, generations."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from events import subjects
from events.bus import Bus, Outgoing
from events.model import AXON, ActionRequest, Event, LifecycleData
from events.server import EmbeddedServer
from ranvier.cli import main
from sensors import engine
from sensors.axons import AxonStore
from sensors.runtime import state_key
from sensors.spec import Axon
from tests.integration.runtime_kit import (
    CHANGED_SENSOR,
    NAME,
    as_action,
    caught_up,
    duplicates,
    durable_of,
    expected_keys,
    prep_done,
    record_of,
    report,
    running,
    stored_actions,
    stored_decisions,
    stream_events,
    two_step_axon,
)

pytestmark = pytest.mark.integration


async def test_submitted_axon_and_lifecycle_events_give_exactly_the_expected_actions(
    bus: Bus, tmp_path: Path
) -> None:
    axon = two_step_axon()
    stored = await AxonStore(bus).submit(axon, tmp_path / "axon.yaml")
    assert stored.generation == 1
    async with running(bus, batch=16) as runtime:
        await bus.publish_many([prep_done(1), prep_done(2)])
        await caught_up(bus)
        first = await stored_actions(bus)
        assert [e.data["task"] for _, e in first] == ["Train", "Train"]
        # The executor reports step 0 done for both runs: each advances to Eval.
        await bus.publish_many([report(as_action(e)) for _, e in first])
        await caught_up(bus)
    actions = await stored_actions(bus)
    events = await stream_events(bus)
    want = expected_keys(axon, events)
    assert [k for k, _ in actions] == want
    assert [e.id for _, e in actions] == want
    assert [e.data["task"] for _, e in actions] == ["Train", "Train", "Eval", "Eval"]
    assert runtime.stats.malformed == 0
    decisions = await stored_decisions(bus)
    fired = {d["event_id"] for d in decisions if d["fired"]}
    assert fired == {e.id for e in events if e.type != AXON}
    # Sensor-run records (ranvier_runs) follow the runs: both are at step 1 (Eval).
    run_id = as_action(actions[-1][1]).sensor_run_id
    got = await bus.kv_get(subjects.RUNS_BUCKET, f"sensor.default.{NAME}.retrain.{run_id}")
    assert got is not None
    record = record_of(got[0])
    assert record["phase"] == "Running"
    assert record["trigger"] == "prepped"
    assert [(s["index"], s["task"], s["phase"]) for s in record["steps"]] == [
        (0, "Train", "Succeeded"),
        (1, "Eval", "Pending"),
    ]


async def test_a_redelivered_event_changes_nothing(bus: Bus) -> None:
    axon = two_step_axon()
    await AxonStore(bus).submit(axon)
    async with running(bus) as first:
        await bus.publish_many([prep_done(n) for n in range(5)])
        await caught_up(bus)
    assert first.stats.actions == 5
    state_before = await bus.kv_get(subjects.STATE_BUCKET, state_key("default", NAME))
    actions_before = await stored_actions(bus)
    # Forget the consumer: a new one starts at the first event, so every event comes again.
    await bus.js.delete_consumer(subjects.EVENTS_STREAM, durable_of(bus))
    async with running(bus) as again:
        await caught_up(bus)
    events = await stream_events(bus)
    assert again.stats.redelivered == len(events)
    assert again.stats.actions == again.stats.decisions == 0
    assert await bus.kv_get(subjects.STATE_BUCKET, state_key("default", NAME)) == state_before
    assert await stored_actions(bus) == actions_before


async def test_malformed_and_unknown_events_are_terminated_and_the_stream_flows(
    bus: Bus,
) -> None:
    axon = two_step_axon()
    await AxonStore(bus).submit(axon)
    subject = f"ranvier.ev.{NAME}.lifecycle.Prep"
    unknown = Event(id="odd-1", source="test", type="ranvier.unheard", time=prep_done(0).time)
    invalid = Event(
        id="bad-payload",
        source="test",
        type="ranvier.lifecycle",
        time=prep_done(0).time,
        data={"axon": NAME, "task": "Prep", "run_id": "x", "phase": "Exploded"},
    )
    with capture_logs() as logs:
        async with running(bus) as runtime:
            await bus.publish_many_encoded(
                [
                    Outgoing(subject, b"{not json", "garbage-1"),
                    Outgoing(subject, unknown.to_json(), unknown.id),
                    Outgoing(subject, invalid.to_json(), invalid.id),
                ]
            )
            await bus.publish(prep_done(7))
            await caught_up(bus)
    assert runtime.stats.malformed == 1
    assert runtime.stats.ignored == 2
    rejected = [e for e in logs if e["event"] == "runtime.event_rejected"]
    assert sorted(e["kind"] for e in rejected) == ["ignored", "ignored", "malformed"]
    actions = await stored_actions(bus)
    assert [e.data["task"] for _, e in actions] == ["Train"]
    assert actions[0][0] == expected_keys(axon, await stream_events(bus))[0]


async def test_an_event_of_another_cloudevents_producer_fires_and_exports_unchanged(
    bus: Bus, nats_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """No `time`, a W3C `traceparent` extension, a media type with a parameter, a `dataschema`:
    the sensor fires as for our own event, and `events export` gives the producer's bytes."""
    axon = two_step_axon()
    await AxonStore(bus).submit(axon)
    fields = json.loads(prep_done(3).to_json())
    del fields["time"]
    fields |= {
        "source": "https://ci.example.com/jobs/3",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "datacontenttype": "application/json; charset=utf-8",
        "dataschema": "https://example.com/schemas/lifecycle.json",
    }
    raw = json.dumps(fields).encode()
    async with running(bus) as runtime:
        await bus.publish_many_encoded(
            [Outgoing(f"ranvier.ev.{NAME}.lifecycle.Prep", raw, "prep-3")]
        )
        await caught_up(bus)
    assert runtime.stats.malformed == runtime.stats.ignored == 0
    actions = await stored_actions(bus)
    assert [e.data["task"] for _, e in actions] == ["Train"]
    [stored] = [item async for item in bus.replay() if item.event.id == "prep-3"]
    assert stored.raw == raw
    assert stored.event.time == stored.stored  # no time of its own: the moment it was stored
    assert stored.event.extensions["traceparent"] == fields["traceparent"]
    url = ["--nats-url", nats_server.url]
    assert await asyncio.to_thread(main, ["events", "export", "--type", "lifecycle", *url]) == 0
    exported = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line.encode() for line in exported] == [raw]  # (log lines share stdout in tests)


async def test_a_new_generation_keeps_the_state_of_unchanged_sensors(bus: Bus) -> None:
    store = AxonStore(bus)
    await store.submit(two_step_axon())
    async with running(bus):
        await bus.publish(prep_done(1))
        await caught_up(bus)
    train = as_action((await stored_actions(bus))[0][1])
    # Generation 2 adds a sensor; `retrain` is unchanged, so its run at step 0 goes on, also
    # across a restart of the runtime (state reloaded with generation 2's spec).
    changed = two_step_axon(CHANGED_SENSOR)
    assert (await store.submit(changed)).generation == 2
    async with running(bus):
        await caught_up(bus)
    async with running(bus) as runtime:
        await bus.publish(report(train))
        await caught_up(bus)
    assert runtime.stats.actions == 1
    actions = await stored_actions(bus)
    assert [e.data["task"] for _, e in actions] == ["Train", "Eval"]
    events = await stream_events(bus)
    keys = [k for k, _ in actions]
    assert not duplicates(keys)
    # The pure engine, given each generation's spec at its submit, agrees.
    assert keys == _expected_across_generations(events, {1: two_step_axon(), 2: changed})
    decisions = await stored_decisions(bus)
    kept = [d["reason"] for d in decisions if d["event_id"] == f"axon.default.{NAME}.g2"]
    assert "generation 2: unchanged, state kept" in kept
    assert "generation 2: new sensor" in kept


def _expected_across_generations(events: list[Event], specs: dict[int, Axon]) -> list[str]:
    state = engine.EngineState()
    keys: list[str] = []
    for event in events:
        if event.type == AXON:
            spec = specs[int(event.data["generation"])]
            result = engine.submit(state, spec, int(event.data["generation"]), event, event.time)
        else:
            result = engine.step(state, event, event.time)
        keys += [a.idempotency_key for a in result.actions]
    return keys


async def test_lifecycle_report_for_an_unknown_axon_concerns_nothing(bus: Bus) -> None:
    other = LifecycleData(axon="nobody", task="Prep", run_id="r", phase="Succeeded")
    async with running(bus) as runtime:
        await bus.publish(other.to_event(source="test"))
        await caught_up(bus)
    assert runtime.stats.events == 1
    assert runtime.stats.actions == runtime.stats.malformed == runtime.stats.ignored == 0
    assert await stored_actions(bus) == []


async def test_explain_prints_the_decisions_of_an_event(
    bus: Bus, nats_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await AxonStore(bus).submit(two_step_axon())
    async with running(bus):
        await bus.publish(prep_done(3))
        await caught_up(bus)
    url = ["--nats-url", nats_server.url]
    assert await asyncio.to_thread(main, ["explain", "prep-3", *url]) == 0
    text = capsys.readouterr().out
    assert f"default/{NAME} retrain [prepped] FIRED" in text
    assert "trainer:Train@step0" in text
    assert await asyncio.to_thread(main, ["explain", "prep-3", "-o", "json", *url]) == 0
    shown = json.loads(capsys.readouterr().out)
    run_id = engine.sensor_run_id("prep-3", "retrain")
    assert [(d["sensor"], d["fired"], d["sensor_run_id"]) for d in shown["decisions"]] == [
        ("retrain", True, run_id)
    ]
    assert await asyncio.to_thread(main, ["explain", "no-such-event", *url]) == 1
    assert "no decisions recorded for event no-such-event" in capsys.readouterr().err


async def test_a_run_record_keeps_earlier_steps_across_a_restart(bus: Bus) -> None:
    """After a restart the record of a run is read back, not rebuilt from the batch that
    advances it: the step that ran before the restart stays in the record."""
    await AxonStore(bus).submit(two_step_axon())
    async with running(bus):
        await bus.publish(prep_done(1))
        await caught_up(bus)
    [(_, train_event)] = await stored_actions(bus)
    train = as_action(train_event)
    running_report = report(train, "Running")
    async with running(bus):  # a fresh process: it has not seen this run
        await bus.publish(running_report)
        await caught_up(bus)
    async with running(bus):  # again: the report of step 0 advances the run to step 1
        await bus.publish(report(train))
        await caught_up(bus)
    key = f"sensor.default.{NAME}.retrain.{train.sensor_run_id}"
    got = await bus.kv_get(subjects.RUNS_BUCKET, key)
    assert got is not None
    record = record_of(got[0])
    assert record["phase"] == "Running"
    assert record["trigger"] == "prepped"
    assert [(s["index"], s["task"], s["phase"], s["run_id"]) for s in record["steps"]] == [
        (0, "Train", "Succeeded", running_report.data["run_id"]),
        (1, "Eval", "Pending", None),
    ]


async def test_a_replaced_run_is_recorded_as_ended_and_an_unknown_run_gets_no_record(
    bus: Bus,
) -> None:
    """`concurrency: Replace` ends the active run although no decision of the event names it:
    its record says so. A report naming a run the engine never started makes no record."""
    replace = two_step_axon().model_dump(by_alias=True, exclude_none=True)
    replace["spec"]["sensors"][0]["concurrency"] = "Replace"
    await AxonStore(bus).submit(Axon.model_validate(replace))
    ghost = ActionRequest(
        axon=NAME,
        sensor="retrain",
        sensor_run_id="no-such-run",
        step=0,
        kind="trainer",
        task="Train",
    )
    async with running(bus):
        await bus.publish(prep_done(1))
        await caught_up(bus)
        await bus.publish_many([prep_done(2), report(ghost)])
        await caught_up(bus)
    first, second = (as_action(e) for _, e in await stored_actions(bus))
    got = await bus.kv_get(
        subjects.RUNS_BUCKET, f"sensor.default.{NAME}.retrain.{first.sensor_run_id}"
    )
    assert got is not None
    old = record_of(got[0])
    assert (old["phase"], old["reason"]) == ("Failed", f"replaced by run {second.sensor_run_id}")
    assert old["finished"] is not None
    got = await bus.kv_get(
        subjects.RUNS_BUCKET, f"sensor.default.{NAME}.retrain.{second.sensor_run_id}"
    )
    assert got is not None
    assert record_of(got[0])["phase"] == "Running"
    assert (
        await bus.kv_get(subjects.RUNS_BUCKET, f"sensor.default.{NAME}.retrain.no-such-run") is None
    )


async def test_deleting_an_axon_ends_its_active_runs_in_their_records(bus: Bus) -> None:
    store = AxonStore(bus)
    await store.submit(two_step_axon())
    async with running(bus):
        await bus.publish(prep_done(1))
        await caught_up(bus)
        [(_, request)] = await stored_actions(bus)
        run_id = as_action(request).sensor_run_id
        key = f"sensor.default.{NAME}.retrain.{run_id}"
        got = await bus.kv_get(subjects.RUNS_BUCKET, key)
        assert got is not None
        assert record_of(got[0])["phase"] == "Running"
        await store.delete("default", NAME)
        await caught_up(bus)
    got = await bus.kv_get(subjects.RUNS_BUCKET, key)
    assert got is not None
    record = record_of(got[0])
    assert (record["phase"], record["reason"]) == ("Failed", engine.AXON_DELETED)
    assert record["finished"] is not None
