"""`ranvier submit FILE --nats-url ...` against a control plane it did not start.

A cluster deployment is roles on a shared NATS (manifests/): here a separately started
nats-server (with a token, as a cluster's would have credentials) and the engine role on it.
The CLI runs as its own process, with nothing in its state dir; the engine picks the Axon up
and asks for its first action.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from events.bus import Bus, ConnectOptions
from sensors.axons import AxonStore
from sensors.loader import load_axon
from tests.conftest import MakeServer
from tests.integration.k8s_kit import eventually
from tests.integration.runtime_kit import as_action, running, stored_actions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "examples" / "gpt2-shakespeare" / "axon.yaml"
TOKEN = "s3cret-cluster-token"  # a test server's token, not a credential


def submit(url: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ranvier",
            "submit",
            str(GPT2),
            "--nats-url",
            url,
            "--token",
            TOKEN,
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def test_submit_to_a_separately_started_control_plane(
    make_nats_server: MakeServer, tmp_path: Path
) -> None:
    server = make_nats_server(token=TOKEN)
    options = ConnectOptions(servers=[server.url], token=TOKEN, connect_timeout=2.0)
    async with Bus.connect(options) as bus, running(bus):
        done = await asyncio.to_thread(submit, server.url, tmp_path / "client-state")
        assert done.returncode == 0, done.stderr
        stored = await AxonStore(bus).get("default", "ml-gpt2")
        assert stored is not None
        assert stored.generation == 1
        assert stored.axon == load_axon(GPT2)

        async def first_action() -> list[str]:
            return [as_action(event).task for _, event in await stored_actions(bus)]

        tasks = await eventually(first_action, "the engine's first action")
    # The sensor without triggers ran on submit: its first step, on the submitted Axon.
    assert tasks == ["DataPrepGPT2"]
    client_state = tmp_path / "client-state"  # submit started no server of its own there
    assert not client_state.exists() or not any(client_state.iterdir())
