"""Two executor processes on a three-node NATS cluster, the actions stream's leader SIGKILLed.

`ranvier run --role executor` twice, given every node's URL and `--replicas 3`, consumes action
requests for distinct idempotency keys; a trivial local task appends its run id to a file named
after its action. The node leading RANVIER_ACTIONS is killed while they work and restarted on
its store. Exactly once means: one claim per action, one task-run record per action and it
Succeeded, and each action's file holds one line (its process ran once).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from pathlib import Path

import nats.errors
import pytest
import structlog

from events import subjects
from events.bus import Bus, StreamLimits, kv_key
from events.model import ActionRequest
from events.server import NatsCluster
from executors.runner import claim_key
from sensors.axons import AxonStore
from sensors.loader import load_axon
from tests.integration.cluster_kit import (
    cluster_options,
    executor,
    stream_leader,
    task_runs,
    wait_current,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

log = structlog.get_logger(__name__)

AXON = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: failover}
spec:
  tasks:
    - name: Touch
      container:
        command: [/bin/sh, -c, 'sleep 0.2; echo "$TASK_ID" >> %s/"$ACTION"']
"""


def request(i: int) -> ActionRequest:
    return ActionRequest.model_validate(
        {
            "axon": "failover",
            "sensor": "s",
            "sensor_run_id": f"run-{i}",
            "step": 0,
            "kind": "resourceExecutor",
            "task": "Touch",
            "params": {"env": {"ACTION": f"a{i:04d}"}},
        }
    )


def ran(marks: Path) -> int:
    """How many actions ran (each writes its own file)."""
    return len(list(marks.iterdir()))


async def pending(bus: Bus, marks: Path, count: int) -> dict[str, int]:
    """What is left: actions not run yet, requests not acked yet (-1: no leader to ask)."""
    left = {"not_run": count - ran(marks)}
    try:
        left["not_acked"] = int((await bus.stream_info(subjects.ACTIONS_STREAM)).state.messages)
    except (TimeoutError, nats.errors.Error):
        left["not_acked"] = -1
    return {k: v for k, v in left.items() if v}


async def test_each_action_runs_once_when_the_actions_leader_is_killed(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    count, kill_after = 160, 40
    marks = tmp_path / "marks"
    marks.mkdir()
    path = tmp_path / "failover.yaml"
    path.write_text(AXON % marks, encoding="utf-8")
    requests = [request(i) for i in range(count)]
    options = cluster_options(nats_cluster)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")}
    env["RANVIER_LOG_LEVEL"] = "info"
    async with Bus.connect(options, limits=StreamLimits(replicas=3)) as bus:
        await AxonStore(bus).submit(load_axon(path), path)
        await wait_current(bus, subjects.ACTIONS_STREAM, 3)
        leader = await stream_leader(bus, nats_cluster, subjects.ACTIONS_STREAM)
        await bus.publish_many([r.to_event(source="test") for r in requests])
        logs = [tmp_path / f"executor-{i}.log" for i in range(2)]
        procs = []
        for path in logs:
            with path.open("wb") as out:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *executor(tmp_path / "state", nats_cluster.url, "--concurrency", "8"),
                        env=env,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=out,
                    )
                )
        try:
            began = time.monotonic()
            async with asyncio.timeout(60):
                while ran(marks) < kill_after:  # noqa: ASYNC110  # files written by other processes
                    await asyncio.sleep(0.02)
            done_before = ran(marks)
            assert done_before < count, "every action ran before the crash: the test is vacuous"
            await asyncio.to_thread(nats_cluster.kill, leader)
            killed = time.monotonic()
            try:  # all run, and every request acked (the runner's ack wait is 10 s)
                async with asyncio.timeout(60):
                    while await pending(bus, marks, count):  # noqa: ASYNC110  # other processes' work
                        await asyncio.sleep(0.2)
            except TimeoutError:
                tails = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs)
                raise AssertionError(
                    f"stuck: {await pending(bus, marks, count)}\n{tails}"
                ) from None
            finished = time.monotonic()
            await asyncio.to_thread(nats_cluster.restart, leader)
            await wait_current(bus, subjects.ACTIONS_STREAM, 3)
            runs = await task_runs(bus)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                await proc.wait()
        files = sorted(marks.iterdir())
        assert [f.name for f in files] == [f"a{i:04d}" for i in range(count)]
        lines = {f.name: f.read_text().split() for f in files}
        assert {name: len(ids) for name, ids in lines.items() if len(ids) != 1} == {}
        by_action = collections.Counter(r.action_key for r in runs)
        assert by_action == collections.Counter(r.idempotency_key for r in requests)
        assert [(r.action_key, r.message) for r in runs if r.phase != "Succeeded"] == []
        assert {r.id for r in runs} == {ids[0] for ids in lines.values()}
        claims = await bus.kv_keys(subjects.RUNS_BUCKET, kv_key("claim") + ".>")
        assert sorted(claims) == sorted(claim_key(r.idempotency_key) for r in requests)
        for req in requests[:5]:
            got = await bus.kv_get(subjects.RUNS_BUCKET, claim_key(req.idempotency_key))
            assert got is not None
            assert json.loads(got[0])["action_key"] == req.idempotency_key
    log.info(
        "cluster.failover_executors",
        actions=count,
        killed_node=f"n{leader}",
        done_before_kill=done_before,
        killed_after_s=round(killed - began, 2),
        rest_took_s=round(finished - killed, 2),
        executors={r.executor for r in runs}.__len__(),
    )
