"""An executor SIGKILLed (or SIGTERMed) while its Job runs: the next executor adopts the Job,
the run finishes once, and the Job is not deleted.

Real processes: `ranvier run --role executor --backend kubernetes` twice (the first one killed
with SIGKILL while its trainer Job runs), the engine and watcher roles in the test process, a
real nats-server, and kmock's emulator as the cluster (`k8s_kit`); the test plays the Job
controller and the kubelet.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from events import subjects
from events.bus import Bus
from events.model import LIFECYCLE
from events.server import EmbeddedServer
from executors.kv import BusKeyValue
from executors.registry import ModelRegistry
from executors.runner import TaskRun
from ranvier.app import RoleOptions, build_roles, run_roles
from sensors.axons import AxonStore
from sensors.loader import load_axon_text
from tests.integration.k8s_kit import (
    COMPLETE,
    RUNNING,
    Env,
    env,
    eventually,
    finished_pod,
    set_job_status,
)
from tests.integration.test_k8s_pipeline import task_jobs

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

AXON = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata:
  name: adopt
spec:
  tasks:
    - name: Train
      train:
        image: registry.example/adopt-train:1
        lossMetric: loss
        command: [python, train.py]
  sensors:
    - name: TrainOnStart
      tasks:
        - trainer:
            task: Train
"""


class Executor:
    """`ranvier run --role executor --backend kubernetes` as a process; its log lines kept."""

    def __init__(self, nats: str, env: Env, state: Path) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "ranvier", "run", "--role", "executor"),
                *("--backend", "kubernetes", "--kube-api-url", env.api_url),
                *("--nats-url", nats, "--state-dir", str(state)),
            ],
            stderr=subprocess.PIPE,
            env={"RANVIER_LOG_LEVEL": "info", **_environ()},
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.append(line.decode(errors="replace"))

    def logged(self, what: str) -> bool:
        return any(what in line for line in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def _environ() -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture
def executors() -> Iterator[list[Executor]]:
    started: list[Executor] = []
    yield started
    for one in started:
        one.stop()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_a_stopped_executors_job_is_adopted_and_its_run_finishes_once(  # noqa: PLR0917 - fixtures
    how: str,
    bus: Bus,
    nats_server: EmbeddedServer,
    env: Env,
    tmp_path: Path,
    executors: list[Executor],
) -> None:
    """SIGKILL: a crash. SIGTERM: a rolling update; the Job is left running, not deleted."""
    options = RoleOptions(
        tmp_path / "plane",
        backend="kubernetes",
        nats_url=nats_server.url,
        kube_api_url=env.api_url,
        kube_poll_interval=0.05,
    )
    roles = build_roles(bus, ["engine", "watcher"], options)
    stop = asyncio.Event()
    plane = asyncio.create_task(run_roles(roles, stop))
    try:
        first = Executor(nats_server.url, env, tmp_path / "a")
        executors.append(first)
        await AxonStore(bus).submit(load_axon_text(AXON, "adopt.yaml"))
        (job,) = await eventually(lambda: task_jobs(env, "Train"), "the trainer Job")
        await set_job_status(env, job["metadata"]["name"], RUNNING)
        await eventually(lambda: _phases(bus, "Running"), "the first executor reported Running")

        if how == "SIGKILL":
            first.proc.kill()  # no hand-over, nothing cleaned up
        else:
            first.proc.terminate()
        code = await asyncio.to_thread(first.proc.wait, 60)
        assert code in (0, -9), "".join(first.lines)
        second = Executor(nats_server.url, env, tmp_path / "b")
        executors.append(second)
        # the action is redelivered after its ack wait; the second executor takes the Job over
        await eventually(lambda: second.logged("k8s.adopted"), "the Job adopted")

        await finished_pod(env, job, json.dumps({"loss": 0.125}))
        await set_job_status(env, job["metadata"]["name"], COMPLETE)
        runs = await eventually(lambda: _finished_runs(bus), "the run finished")
        # the watcher may record the end first; the adopting executor reports it too, once
        await eventually(lambda: second.logged("executor.adopted"), "the adopter's report")
    finally:
        stop.set()
        await plane

    (run,) = runs
    assert run.phase == "Succeeded"
    assert [j["metadata"]["name"] for j in env.objects("Job")] == [job["metadata"]["name"]]
    events = [e async for e in _lifecycle(bus)]
    phases = Counter((e["run_id"], e["phase"]) for e in events if e["task"] == "Train")
    assert phases == {(run.id, "Pending"): 1, (run.id, "Running"): 1, (run.id, "Succeeded"): 1}
    (version,) = await ModelRegistry(BusKeyValue(bus, subjects.MODELS_BUCKET)).versions(
        "adopt", namespace="default"
    )
    assert (version.run_id, version.phase, version.metrics) == (
        run.id,
        "Succeeded",
        {"loss": 0.125},
    )


async def _phases(bus: Bus, phase: str) -> bool:
    for key in await bus.kv_keys(subjects.RUNS_BUCKET, "task.>"):
        got = await bus.kv_get(subjects.RUNS_BUCKET, key)
        if got is not None and TaskRun.from_json(got[0]).phase == phase:
            return True
    return False


async def _finished_runs(bus: Bus) -> list[TaskRun] | None:
    runs = []
    for key in await bus.kv_keys(subjects.RUNS_BUCKET, "task.>"):
        got = await bus.kv_get(subjects.RUNS_BUCKET, key)
        if got is not None:
            runs.append(TaskRun.from_json(got[0]))
    done = [r for r in runs if r.phase in ("Succeeded", "Failed")]
    return runs if runs and len(done) == len(runs) else None


async def _lifecycle(bus: Bus) -> Any:
    async for item in bus.replay(filter_subject=subjects.events_filter(None, "lifecycle")):
        if item.event.type == LIFECYCLE:
            yield item.event.data
