"""What the tests on a three-node NATS cluster share: connecting to it, and finding leaders.

The `nats_cluster` fixture (tests/conftest.py) starts the cluster; `NatsCluster` kills and
restarts its nodes. JetStream names a stream's leader by server name (`n0`, `n1`, ...), which
`NatsCluster.node_named` maps to the node to kill.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import nats.errors

from events import subjects
from events.bus import Bus, ConnectOptions
from events.server import NatsCluster
from executors.runner import TaskRun

LEADER_TIMEOUT = 20.0


def cluster_options(cluster: NatsCluster, **changes: object) -> ConnectOptions:
    """Options for every node of `cluster`, with timeouts short enough for tests."""
    base = ConnectOptions(
        servers=cluster.urls,
        connect_timeout=2.0,
        request_timeout=5.0,  # creating a three-replica stream on a busy machine takes seconds
        reconnect_wait=0.1,
        publish_retry_for=30.0,
        name="ranvier-cluster-tests",
    )
    return base.model_copy(update=changes)


async def stream_leader(
    bus: Bus, cluster: NatsCluster, stream: str, *, not_node: int | None = None
) -> int:
    """The node leading `stream`, once it has a leader (other than `not_node`, if given)."""
    deadline = time.monotonic() + LEADER_TIMEOUT
    while True:
        try:
            info = await bus.js.stream_info(stream)
        except (TimeoutError, nats.errors.Error):  # no leader yet: no answer, or a 503
            info = None
        leader = info.cluster.leader if info is not None and info.cluster else None
        if leader:
            node = cluster.node_named(leader)
            if node != not_node:
                return node
        if time.monotonic() >= deadline:
            raise AssertionError(f"{stream} has no leader after {LEADER_TIMEOUT}s (last {leader})")
        await asyncio.sleep(0.1)


async def wait_current(bus: Bus, stream: str, replicas: int) -> None:
    """Wait until `stream` has `replicas` copies, all of them current (caught up)."""
    deadline = time.monotonic() + LEADER_TIMEOUT
    while True:
        info = await bus.js.stream_info(stream)
        peers = (info.cluster.replicas or []) if info.cluster else []
        leader = info.cluster.leader if info.cluster else None
        if (
            leader
            and len(peers) == replicas - 1
            and all(p.current and not p.offline for p in peers)
        ):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{stream}: replicas not current after {LEADER_TIMEOUT}s: {peers}")
        await asyncio.sleep(0.1)


def executor(state: Path, url: str, *options: str) -> list[str]:
    """The argv of an executor process on every node's URL, with three-replica streams."""
    return [
        *(sys.executable, "-m", "ranvier", "run", "--role", "executor"),
        *("--state-dir", str(state), "--nats-url", url, "--replicas", "3", *options),
    ]


async def task_runs(bus: Bus) -> list[TaskRun]:
    """Every task-run record in `ranvier_runs`."""
    runs = []
    for key in await bus.kv_keys(subjects.RUNS_BUCKET, "task.>"):
        got = await bus.kv_get(subjects.RUNS_BUCKET, key)
        if got is not None:
            runs.append(TaskRun.from_json(got[0]))
    return runs
