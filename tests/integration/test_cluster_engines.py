"""Two engines and two executors on a three-node NATS cluster with three-replica streams.

While Rest calls flow (each starts a two-step run: the second step waits for the executor's
report of the first), the node leading the events stream is SIGKILLed and restarted, and one
engine is SIGKILLed for good: the other takes its partitions when their leases expire.
Afterwards every action the pure engine asks for over the stored events ran exactly once (one
task-run record per idempotency key, Succeeded), and every event was handled. The time from
each kill to the next action that started is logged (`cluster.failover_gap`).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from datetime import datetime
from pathlib import Path

import nats.errors
import pytest
import structlog

from events import subjects
from events.bus import Bus, StreamLimits
from events.model import RestData
from events.server import NatsCluster
from executors.runner import TaskRun
from sensors.axons import AxonStore
from sensors.engine import sensor_run_id
from sensors.loader import load_axon_text
from tests.integration.cluster_kit import (
    cluster_options,
    executor,
    stream_leader,
    task_runs,
    wait_current,
)
from tests.integration.runtime_kit import (
    caught_up,
    expected_keys,
    kill,
    spread_names,
    start_engine,
    stream_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(170)]

log = structlog.get_logger(__name__)

LEASE_TTL = 4.0
CALLS = 80
AXON = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {{name: {name}}}
spec:
  tasks:
    - name: Work
      container:
        command: [/bin/sh, -c, 'echo "$TASK_ID" >> {marks}/"$TASK_ID"']
  sensors:
    - name: go
      concurrency: Allow
      triggers: [{{name: call, type: Rest}}]
      tasks:
        - resourceExecutor: {{task: Work}}
        - resourceExecutor: {{task: Work}}
"""


def _epoch(stamp: str | None) -> float:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def gap_after(runs: list[TaskRun], sent: dict[str, float], moment: float) -> float:
    """Seconds from `moment` (wall clock) to the first action started for a call sent after
    it: how long new work waited for the failover."""
    later = [
        _epoch(r.started) for r in runs if r.started and sent.get(r.sensor_run_id, 0.0) > moment
    ]
    return min(later) - moment if later else float("inf")


async def test_engines_and_executors_survive_a_leader_kill_and_an_engine_kill(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    options = cluster_options(nats_cluster)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")}
    async with Bus.connect(options, limits=StreamLimits(replicas=3)) as bus:
        names = spread_names(4, bus.partitions)
        axons = {n: load_axon_text(AXON.format(name=n, marks=marks), f"{n}.yaml") for n in names}
        for axon in axons.values():
            await AxonStore(bus).submit(axon)
        await wait_current(bus, subjects.EVENTS_STREAM, 3)
        engines = [
            await start_engine(nats_cluster.url, f"engine-{i}", LEASE_TTL, 3) for i in range(2)
        ]
        executors = [
            await asyncio.create_subprocess_exec(
                *executor(tmp_path / "state", nats_cluster.url),
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        calls = [
            RestData(axon=names[i % len(names)], sensor="go", trigger="call").to_event(
                source="test", id=f"call-{i}"
            )
            for i in range(CALLS)
        ]
        kills: dict[str, float] = {}

        async def chaos() -> None:
            await asyncio.sleep(3.0)
            leader = await stream_leader(bus, nats_cluster, subjects.EVENTS_STREAM)
            kills["events leader"] = time.time()
            await asyncio.to_thread(nats_cluster.kill, leader)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(nats_cluster.restart, leader)
            await asyncio.sleep(2.0)
            kills["engine"] = time.time()
            await kill(engines[0])

        try:
            chaotic = asyncio.create_task(chaos())
            sent: dict[str, float] = {}  # sensor run id -> when its call was sent
            for call in calls:  # about 8 calls a second, through both kills
                sent[sensor_run_id(call.id, "go")] = time.time()
                await bus.publish(call)
                await asyncio.sleep(0.12)
            await chaotic
            deadline = time.monotonic() + 120
            while True:  # every call's two steps requested, run and reported
                if await settled(bus):
                    runs = await task_runs(bus)
                    want = expected_keys(axons, await stream_events(bus))
                    done = [r for r in runs if r.phase in ("Succeeded", "Failed")]
                    if len(want) == 2 * CALLS and len(done) == len(runs) >= len(want):
                        break
                assert time.monotonic() < deadline, "the pipeline did not finish in 120 s"
                await asyncio.sleep(0.5)
        finally:
            for proc in executors:
                proc.terminate()
            for proc in [*executors, *engines]:
                await kill(proc)
        executed = collections.Counter(r.action_key for r in runs)
        assert {k: c for k, c in executed.items() if c != 1} == {}  # nothing ran twice
        assert sorted(executed) == sorted(want)  # nothing lost
        assert [r.action_key for r in runs if r.phase != "Succeeded"] == []
        assert len(list(marks.iterdir())) == len(want)  # each task's process ran once
        await wait_current(bus, subjects.EVENTS_STREAM, 3)
        stored = int((await bus.stream_info()).state.messages)
        assert stored >= 1 + len(names) + CALLS + len(want)  # submits, calls, reports: none lost
    gaps = {what: round(gap_after(runs, sent, at), 3) for what, at in kills.items()}
    log.info("cluster.failover_gap", **gaps)
    print(f"failover gaps (kill -> next action started): {gaps}")
    assert all(gap < 60 for gap in gaps.values())


async def settled(bus: Bus) -> bool:
    """Whether the engines have handled every stored event and no action request waits (an
    outage answers False)."""
    try:
        if (await bus.stream_info(subjects.ACTIONS_STREAM)).state.messages:
            return False
        await caught_up(bus, limit=0.5)
    except (TimeoutError, OSError, nats.errors.Error):
        return False
    return True
