"""`ranvier run --role ... --backend kubernetes` as a process, against kmock's emulator.

The CLI's own wiring: the roles find the cluster from `--kube-api-url`, the executor creates the
Job of the submitted Axon's first task, and the watcher role's cluster lifecycle watcher reports
it (it writes the phase it reported back on the Job).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from events import subjects
from events.bus import Bus, ConnectOptions
from events.watchers.lifecycle import A_REPORTED
from executors.backends import k8s_objects as k8s
from sensors.loader import load_axon
from tests.conftest import MakeServer
from tests.integration.k8s_kit import (
    COMPLETE,
    Env,
    by_role,
    env,
    eventually,
    registry_has,
    set_job_status,
)

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "examples" / "gpt2-shakespeare" / "axon.yaml"


async def ranvier(*argv: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ranvier",
        *argv,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@contextlib.asynccontextmanager
async def roles(*argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await ranvier("run", *argv)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.communicate()


async def test_run_roles_with_the_kubernetes_backend(
    make_nats_server: MakeServer, env: Env, tmp_path: Path
) -> None:
    axon = load_axon(GPT2)
    registry_has(env, axon, "DataPrepGPT2", "TrainGPT2", "DeployGPT2")
    nats = make_nats_server()
    common = ("--nats-url", nats.url, "--state-dir", str(tmp_path / "state"))
    async with roles(
        "--role",
        "engine,executor,watcher",
        "--backend",
        "kubernetes",
        "--kube-api-url",
        env.api_url,
        "--registry",
        f"{env.registry_url}/ml",
        "--registry-insecure",
        *common,
    ) as proc:
        submit = await ranvier("submit", str(GPT2), *common)
        _, err = await submit.communicate()
        assert submit.returncode == 0, err.decode()

        def prep_job() -> list[dict[str, Any]]:
            assert proc.returncode is None, "the roles stopped"
            return by_role(env, k8s.ROLE_TASK)

        (job,) = await eventually(prep_job, "the DataPrepGPT2 Job")
        assert job["metadata"]["annotations"][k8s.A_TASK] == "DataPrepGPT2"
        await set_job_status(env, job["metadata"]["name"], COMPLETE)

        def reported() -> bool:
            (now,) = by_role(env, k8s.ROLE_TASK)
            return bool(now["metadata"]["annotations"].get(A_REPORTED) == "Succeeded")

        await eventually(reported, "the watcher's report")

    async with Bus.connect(ConnectOptions(servers=[nats.url])) as bus:
        phases = [
            item.event.data["phase"]
            async for item in bus.replay(filter_subject=subjects.events_filter(None, "lifecycle"))
            if item.event.data["task"] == "DataPrepGPT2"
        ]
    assert phases[-1] == "Succeeded"
    assert len(phases) == len(set(phases))
