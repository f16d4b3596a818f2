"""ExecutorRunner against a real nats-server and real processes: claims, lifecycles, failures.

Action requests are published the way the engine publishes them; what the runner reports is
read back from the bus (lifecycle events) and KV (task-run records, claims, model versions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from events import subjects
from events.bus import Bus, kv_key
from events.model import ActionRequest, LifecycleData, utcnow
from events.server import EmbeddedServer
from executors.backends.local import LocalBackend, group_members
from executors.kv import BusKeyValue
from executors.registry import KeyExistsError, ModelRegistry, RevisionMismatchError
from executors.runner import ExecutorRunner, TaskRun, claim_key, task_run_key
from sensors.axons import AxonStore
from sensors.loader import load_axon

pytestmark = pytest.mark.integration

AXON = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: %(name)s}
spec:
  tasks:
    - name: Ok
      container: {command: [%(py)s, -c, "print('ok')"]}
    - name: Exit3
      container: {command: [%(py)s, -c, "import sys; print('bad'); sys.exit(3)"]}
    - name: Slow
      container:
        command: [%(py)s, -c, "import time; time.sleep(60)"]
        timeout: 1s
    - name: Missing
      container: {command: [/no/such/ranvier-command]}
    - name: Long
      container: {command: [%(py)s, -c, "import time; time.sleep(60)"]}
    - name: Fit
      train:
        command:
          - %(py)s
          - -c
          - "import json, os; p = os.environ['MODEL_PATH'] + '/metrics.json';
            open(p, 'w').write(json.dumps({'loss': 0.25}))"
  sensors:
    - name: s
      triggers: [{name: r, type: Rest}]
      tasks: [{resourceExecutor: {task: Ok}}]
"""


def write_axon(tmp_path: Path, name: str = "runner") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(AXON % {"name": name, "py": json.dumps(sys.executable)}, encoding="utf-8")
    return path


def request(
    task: str, *, kind: str = "resourceExecutor", run: str = "r1", axon: str = "runner", **kw: Any
) -> ActionRequest:
    return ActionRequest.model_validate(
        {"axon": axon, "sensor": "s", "sensor_run_id": run, "step": 0, "kind": kind, "task": task}
        | kw
    )


async def finals(bus: Bus, count: int, axon: str = "runner") -> list[LifecycleData]:
    """The first `count` Succeeded/Failed lifecycle events of `axon`, in order."""
    out: list[LifecycleData] = []
    follow = bus.follow(since=1, filter_subject=subjects.events_filter(axon, "lifecycle"))
    async with contextlib.aclosing(follow) as items:
        async for item in items:
            data = item.event.payload()
            assert isinstance(data, LifecycleData)
            if data.phase in ("Succeeded", "Failed"):
                out.append(data)
                if len(out) == count:
                    return out
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.asynccontextmanager
async def running(bus: Bus, tmp_path: Path, **kw: Any) -> AsyncIterator[ExecutorRunner]:
    backend = LocalBackend(tmp_path / "state", grace=1.0)
    runner = ExecutorRunner(bus, backend=backend, state_dir=tmp_path / "state", **kw)
    task = asyncio.create_task(runner.run())
    await runner.ready.wait()
    try:
        yield runner
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def submitted(bus: Bus, tmp_path: Path) -> Path:
    path = write_axon(tmp_path)
    await AxonStore(bus).submit(load_axon(path), path)
    return path


async def test_bus_key_value_maps_create_and_cas_errors(bus: Bus) -> None:
    store = BusKeyValue(bus, subjects.MODELS_BUCKET)
    rev = await store.create("a.b", b"1")
    with pytest.raises(KeyExistsError):
        await store.create("a.b", b"2")
    with pytest.raises(RevisionMismatchError):
        await store.update("a.b", b"2", rev + 10)
    assert await store.update("a.b", b"3", rev) > rev
    entry = await store.get("a.b")
    assert entry is not None
    assert entry.value == b"3"
    assert await store.keys("a.") == ["a.b"]
    assert await store.keys("zz") == []


@pytest.mark.usefixtures("submitted")
async def test_success_reports_every_phase_and_records_the_run(bus: Bus, tmp_path: Path) -> None:
    async with running(bus, tmp_path):
        req = request("Ok")
        await bus.publish(req.to_event(source="test"))
        [done] = await finals(bus, 1)
    assert done.phase == "Succeeded"
    assert done.exit_code == 0
    assert done.action_key == req.idempotency_key
    phases = [
        item.event.data["phase"]
        async for item in bus.replay(filter_subject=subjects.events_filter("runner", "lifecycle"))
    ]
    assert phases == ["Pending", "Running", "Succeeded"]
    raw = await bus.kv_get(
        subjects.RUNS_BUCKET, task_run_key("default", "runner", "Ok", done.run_id)
    )
    assert raw is not None
    record = TaskRun.from_json(raw[0])
    assert (record.phase, record.exit_code, record.step) == ("Succeeded", 0, 0)
    assert record.started is not None
    assert record.finished is not None
    log_text = await asyncio.to_thread(Path(str(record.log_path)).read_text)
    assert log_text.strip() == "ok"
    claim = await bus.kv_get(subjects.RUNS_BUCKET, claim_key(req.idempotency_key))
    assert claim is not None
    assert json.loads(claim[0])["run_id"] == done.run_id


@pytest.mark.usefixtures("submitted")
async def test_failures_end_failed_with_a_clear_message_and_no_orphans(
    bus: Bus, tmp_path: Path
) -> None:
    async with running(bus, tmp_path):
        for i, task in enumerate(("Exit3", "Slow", "Missing")):
            await bus.publish(request(task, run=f"f{i}").to_event(source="test"))
        got = {d.task: d for d in await finals(bus, 3)}
    assert {d.phase for d in got.values()} == {"Failed"}
    assert got["Exit3"].exit_code == 3
    assert got["Exit3"].message == "exited with code 3: bad"
    assert got["Slow"].message == "timed out after 1s"
    assert got["Missing"].message == "command not found: /no/such/ranvier-command"
    assert got["Missing"].exit_code == 127
    pids = [
        int(item.event.data["outputs"]["pid"])
        async for item in bus.replay(filter_subject=subjects.events_filter("runner", "lifecycle"))
        if item.event.data["phase"] == "Running"
    ]
    assert len(pids) == 2  # Exit3 and Slow started; Missing never did
    assert [group_members(pid) for pid in pids] == [[], []]


async def test_deleting_the_axon_stops_its_running_task(
    bus: Bus, tmp_path: Path, submitted: Path
) -> None:
    async with running(bus, tmp_path):
        await bus.publish(request("Long").to_event(source="test"))
        pid = await _running_pid(bus)
        assert group_members(pid)
        await AxonStore(bus).delete("default", "runner")
        [done] = await finals(bus, 1)
    assert done.phase == "Failed"
    assert done.message == "cancelled: axon deleted"
    assert group_members(pid) == []
    del submitted


async def test_deleting_the_axon_after_a_server_restart_stops_its_running_task(
    bus: Bus, nats_server: EmbeddedServer, tmp_path: Path, submitted: Path
) -> None:
    async with running(bus, tmp_path):
        await bus.publish(request("Long").to_event(source="test"))
        pid = await _running_pid(bus)
        # A crash and a restart on the same port and store forget the runner's watch of Axon
        # events (an ordered consumer); it must watch again, from where it was.
        nats_server.requested_port = nats_server.port or 0
        reconnected = asyncio.ensure_future(bus.next_reconnect())
        nats_server.kill()
        nats_server.start()
        async with asyncio.timeout(20):
            await reconnected
        await AxonStore(bus).delete("default", "runner")
        async with asyncio.timeout(8):  # promptly: a watch left to nats-py recovers ~20 s later
            [done] = await finals(bus, 1)
    assert done.phase == "Failed"
    assert done.message == "cancelled: axon deleted"
    assert group_members(pid) == []
    del submitted


async def _running_pid(bus: Bus) -> int:
    follow = bus.follow(since=1, filter_subject=subjects.events_filter("runner", "lifecycle"))
    async with contextlib.aclosing(follow) as items:
        async for item in items:
            if item.event.data["phase"] == "Running":
                return int(item.event.data["outputs"]["pid"])
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.mark.usefixtures("submitted")
async def test_trainer_version_is_registered_with_its_metrics(bus: Bus, tmp_path: Path) -> None:
    async with running(bus, tmp_path):
        await bus.publish(request("Fit", kind="trainer").to_event(source="test"))
        [done] = await finals(bus, 1)
    assert done.phase == "Succeeded"
    versions = await ModelRegistry(BusKeyValue(bus, subjects.MODELS_BUCKET)).versions("runner")
    assert [(v.version, v.run_id, v.metrics) for v in versions] == [
        (1, done.run_id, {"loss": 0.25})
    ]


@pytest.mark.usefixtures("submitted")
async def test_deployer_without_a_deployer_fails_clearly(bus: Bus, tmp_path: Path) -> None:
    async with running(bus, tmp_path):
        await bus.publish(request("web", kind="deployer").to_event(source="test"))
        [done] = await finals(bus, 1)
    assert done.phase == "Failed"
    assert done.message.startswith("no deployer in this executor")


@pytest.mark.usefixtures("submitted")
async def test_a_claimed_request_is_not_run_again(bus: Bus, tmp_path: Path) -> None:
    req = request("Ok")
    async with running(bus, tmp_path):
        await bus.publish(req.to_event(source="test"))
        [first] = await finals(bus, 1)
        # The same request again (a new message id, as a redelivery after a lost ack would be).
        await bus.publish(req.to_event(source="test", id="again"))
        while (await bus.stream_info(subjects.ACTIONS_STREAM)).state.messages:  # noqa: ASYNC110  # polling the server's count: nothing local to wait on
            await asyncio.sleep(0.05)
    keys = await bus.kv_keys(subjects.RUNS_BUCKET, "task.>")
    assert keys == [task_run_key("default", "runner", "Ok", first.run_id)]


@pytest.mark.usefixtures("submitted")
async def test_backoff_waits_without_holding_a_slot(bus: Bus, tmp_path: Path) -> None:
    later = request("Ok", run="later", attempt=2, not_before=utcnow().replace(year=2100))
    async with running(bus, tmp_path, concurrency=1):
        await bus.publish(later.to_event(source="test"))
        await bus.publish(request("Ok", run="now").to_event(source="test"))
        [done] = await finals(bus, 1)
        assert done.sensor_run_id == "now"
    claims = await bus.kv_keys(subjects.RUNS_BUCKET, "claim.>")
    assert claims == [claim_key(request("Ok", run="now").idempotency_key)]


@pytest.mark.usefixtures("submitted")
async def test_unknown_axon_fails_with_a_message(bus: Bus, tmp_path: Path) -> None:
    async with running(bus, tmp_path):
        await bus.publish(request("Ok", axon="ghost").to_event(source="test"))
        [done] = await finals(bus, 1, axon="ghost")
    assert done.message == "axon default/ghost is not submitted"


def executor_cmd(state: Path, url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ranvier",
        "run",
        "--role",
        "executor",
        "--state-dir",
        str(state),
        "--nats-url",
        url,
        "--concurrency",
        "32",
    ]


@pytest.mark.slow
async def test_two_executor_processes_run_each_of_500_requests_exactly_once(
    bus: Bus, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    path = tmp_path / "many.yaml"
    path.write_text(
        "apiVersion: ranvier.dev/v1alpha1\nkind: Axon\nmetadata: {name: many}\nspec:\n"
        "  tasks:\n    - name: Touch\n      container:\n"
        f'        command: [/bin/sh, -c, \'echo "$TASK_ID" >> {marks}/"$TASK_ID"\']\n',
        encoding="utf-8",
    )
    await AxonStore(bus).submit(load_axon(path), path)
    count = 500
    requests = [request("Touch", axon="many", run=f"run-{i}") for i in range(count)]
    await bus.publish_many([r.to_event(source="test") for r in requests])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")}
    procs = [
        await asyncio.create_subprocess_exec(
            *executor_cmd(tmp_path / "state", bus.url),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        done = await finals(bus, count, axon="many")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await proc.wait()
    assert sorted(d.action_key or "" for d in done) == sorted(r.idempotency_key for r in requests)
    assert {d.phase for d in done} == {"Succeeded"}
    files = sorted(marks.iterdir())
    assert len(files) == count  # one run per request, each wrote its own file once
    assert all(len(f.read_text().splitlines()) == 1 for f in files)
    assert len(await bus.kv_keys(subjects.RUNS_BUCKET, kv_key("claim") + ".>")) == count


@pytest.mark.usefixtures("submitted")
async def test_redelivered_request_of_a_vanished_executor_is_reported_failed(
    bus: Bus, tmp_path: Path
) -> None:
    req = request("Ok", run="orphaned")
    # What an executor that died mid-run leaves: its claim and a Running record, no process.
    gone = TaskRun.new(req, "RUN-OF-A-DEAD-EXECUTOR", "host/1/dead")
    gone.phase = "Running"
    await bus.kv_put(subjects.RUNS_BUCKET, gone.key, gone.to_json())
    claim = {"run_id": gone.id, "action_key": req.idempotency_key, "executor": gone.executor}
    await bus.kv_create(
        subjects.RUNS_BUCKET, claim_key(req.idempotency_key), json.dumps(claim).encode()
    )
    async with running(bus, tmp_path):
        await bus.publish(req.to_event(source="test"))
        [done] = await finals(bus, 1)
    assert (done.run_id, done.phase) == (gone.id, "Failed")
    assert done.message == (
        "lost: the executor that claimed it (host/1/dead) stopped before the run finished"
    )
    raw = await bus.kv_get(subjects.RUNS_BUCKET, gone.key)
    assert raw is not None
    assert TaskRun.from_json(raw[0]).phase == "Failed"
    assert await bus.kv_keys(subjects.RUNS_BUCKET, "task.>") == [gone.key]
