"""`ranvier logs AXON TASK` for a run on Kubernetes prints its pod's log, read from the API
server (kmock's emulator plays it: the pod exists, its `/log` answers with the output)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from events import subjects
from events.bus import Bus
from events.server import EmbeddedServer
from executors.runner import TaskRun
from tests.integration.k8s_kit import Env, env, finished_pod

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def ranvier(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ranvier",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def record(outputs: dict[str, object], log_path: str | None = None) -> TaskRun:
    return TaskRun(
        id="01RUN",
        task="Train",
        kind="trainer",
        axon="logs",
        namespace="default",
        phase="Succeeded",
        sensor="go",
        sensor_run_id="s1",
        step=0,
        index=0,
        attempt=1,
        action_key="logs/go/s1/0/1",
        outputs=outputs,
        log_path=log_path,
    )


async def test_logs_of_a_cluster_run_come_from_its_pod(
    bus: Bus, nats_server: EmbeddedServer, env: Env, tmp_path: Path
) -> None:
    job = {
        "metadata": {"name": "logs-train-01run", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "t:1"}]}}},
    }
    await finished_pod(env, job, "{}")
    env.cluster["get /api/v1/namespaces/default/pods/logs-train-01run-x1/log"] << (
        b"epoch 1 loss 0.9\nepoch 2 loss 0.5\n"
    )
    run = record({"job": "logs-train-01run", "version": 1})
    await bus.kv_put(subjects.RUNS_BUCKET, run.key, run.to_json())

    code, out, err = await ranvier(
        *("logs", "logs", "Train", "--nats-url", nats_server.url, "--kube-api-url", env.api_url),
        cwd=tmp_path,
    )
    assert code == 0, err
    assert out == "epoch 1 loss 0.9\nepoch 2 loss 0.5\n"
    assert "==> pod logs-train-01run-x1 <==" in err


async def test_a_cluster_run_whose_pods_are_gone_says_why(
    bus: Bus, nats_server: EmbeddedServer, env: Env, tmp_path: Path
) -> None:
    run = record({"job": ["logs-train-gone"]})
    await bus.kv_put(subjects.RUNS_BUCKET, run.key, run.to_json())
    code, _, err = await ranvier(
        *("logs", "logs", "Train", "--nats-url", nats_server.url, "--kube-api-url", env.api_url),
        cwd=tmp_path,
    )
    assert code == 1
    assert "no pods of logs-train-gone in namespace default are left" in err
    assert "Traceback" not in err
