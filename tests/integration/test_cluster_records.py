"""The cluster pieces that keep ranvier's records: version numbers and the watcher's reporter.

Real nats-server (the `bus` fixture); the reporter gets lifecycle payloads as the cluster
lifecycle watcher would hand them over.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from events import subjects
from events.bus import Bus
from events.model import ActionRequest, LifecycleData
from events.watchers.lifecycle import lifecycle_event_id
from executors import runner
from executors.cluster import ClusterReporter, VersionCounter
from executors.kv import BusKeyValue
from executors.registry import ModelRegistry, ModelVersion
from executors.runner import TaskRun

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_watcher_and_runner_give_a_transition_the_same_id() -> None:
    data = LifecycleData(axon="a", task="T", run_id="r-1", phase="Running")
    assert lifecycle_event_id(data) == runner.lifecycle_event_id(data.run_id, data.phase)
    other = data.model_copy(update={"phase": "Succeeded"})
    assert lifecycle_event_id(other) != lifecycle_event_id(data)


async def test_versions_are_numbered_once_each_above_the_registry(bus: Bus) -> None:
    registry = ModelRegistry(BusKeyValue(bus, subjects.MODELS_BUCKET))
    await registry.put(
        ModelVersion(
            axon="a", task="Train", version=3, run_id="old", path="/m/3", phase="Succeeded"
        )
    )
    counter = VersionCounter(bus)
    got = await asyncio.gather(*(counter.allocate("default", "a", "Train") for _ in range(8)))
    assert sorted(got) == list(range(4, 12))
    assert await counter.allocate("default", "a", "Other") == 1


def request(kind: str, task: str) -> ActionRequest:
    return ActionRequest(
        axon="a",
        sensor="S",
        sensor_run_id="sr-1",
        step=0,
        kind=kind,  # type: ignore[arg-type]  # the tests pass valid kinds
        task=task,
    )


async def lifecycle_in_stream(bus: Bus) -> list[tuple[str, str]]:
    return [
        (str(item.event.data["run_id"]), str(item.event.data["phase"]))
        async for item in bus.replay(filter_subject=subjects.events_filter(None, "lifecycle"))
    ]


async def test_reporter_publishes_what_the_record_lacks_and_moves_it(bus: Bus) -> None:
    reporter = ClusterReporter(bus)
    record = TaskRun.new(request("trainer", "Train"), "run-1", "executor-x")
    record.apply(record.lifecycle().model_copy(update={"phase": "Running"}))
    await bus.kv_put(subjects.RUNS_BUCKET, record.key, record.to_json())
    base = LifecycleData(axon="a", task="Train", run_id="run-1", phase="Pending")

    await reporter(base)  # the runner said Running already: nothing
    await reporter(base.model_copy(update={"phase": "Running"}))
    done = {"job": "a-train-run-1", "version": "4"}
    await reporter(base.model_copy(update={"phase": "Succeeded", "outputs": done}))
    await reporter(base.model_copy(update={"phase": "Succeeded", "outputs": done}))

    assert await lifecycle_in_stream(bus) == [("run-1", "Succeeded")]
    assert (reporter.published, reporter.skipped) == (1, 3)
    stored = await bus.kv_get(subjects.RUNS_BUCKET, record.key)
    assert stored is not None
    assert TaskRun.from_json(stored[0]).phase == "Succeeded"
    # The version is registered before the Succeeded that may trigger a deploy.
    version = await ModelRegistry(BusKeyValue(bus, subjects.MODELS_BUCKET)).get("a", "Train", 4)
    assert version is not None
    assert (version.run_id, version.phase) == ("run-1", "Succeeded")


async def test_reporter_leaves_a_deploy_succeeded_to_the_deployer(bus: Bus) -> None:
    reporter = ClusterReporter(bus)
    record = TaskRun.new(request("deployer", "d"), "run-2", "executor-x")
    await bus.kv_put(subjects.RUNS_BUCKET, record.key, record.to_json())
    base = LifecycleData(
        axon="a", task="d", run_id="run-2", phase="Running", outputs={"deployment": "a-d-v1"}
    )
    await reporter(base)
    await reporter(base.model_copy(update={"phase": "Succeeded"}))
    assert Counter(await lifecycle_in_stream(bus)) == Counter({("run-2", "Running"): 1})
