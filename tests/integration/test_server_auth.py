"""The embedded server's credentials reach it through a private config file, never its argv
(`ps` shows every process's argv to every user), and it refuses clients without them; a
cluster's nodes refuse a stranger that tries to join as a route."""

from __future__ import annotations

import json
import stat
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from events.bus import AuthError, Bus, ConnectOptions
from events.model import MetricData
from events.server import CONFIG_FILE, EmbeddedServer, NatsCluster, free_ports
from tests.conftest import MakeServer

pytestmark = pytest.mark.integration

SECRET = 'to"k\\en $x'  # quotes, a backslash, a space and a `$` reach the server intact


def cmdline(server: EmbeddedServer) -> str:
    return Path(f"/proc/{server.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize(
    ("auth", "client"),
    [
        ({"token": SECRET}, {"token": SECRET}),
        ({"user": "ana", "password": SECRET}, {"user": "ana", "password": SECRET}),
    ],
)
async def test_credentials_stay_out_of_argv_and_are_required(
    make_nats_server: MakeServer, tmp_path: Path, auth: dict[str, str], client: dict[str, str]
) -> None:
    srv = make_nats_server(store_dir=tmp_path / "store", **auth)
    assert srv.authenticated
    assert SECRET not in cmdline(srv)
    assert "--config" in cmdline(srv)
    conf = tmp_path / "store" / CONFIG_FILE
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    async with Bus.connect(ConnectOptions.model_validate({"servers": [srv.url], **client})) as bus:
        ack = await bus.publish(MetricData(axon="a", name="m", value=1).to_event(source="t"))
        assert ack.seq == 1
    for wrong in ({}, {"token": "nope"}, {"user": "ana", "password": "nope"}):
        with pytest.raises(AuthError, match="authorization failed at nats://127") as caught:
            async with Bus.connect(ConnectOptions.model_validate({"servers": [srv.url], **wrong})):
                pass
        assert SECRET not in str(caught.value)


def test_an_open_server_says_so(tmp_path: Path) -> None:
    srv = EmbeddedServer(store_dir=tmp_path)
    assert not srv.authenticated
    assert "--config" not in srv.command()


def test_a_clusters_routes_need_its_credentials(tmp_path: Path) -> None:
    with NatsCluster(store_dir=tmp_path / "c", size=2, token=SECRET) as cluster:
        for node in cluster.nodes:
            assert node.pid is not None
            assert SECRET not in cmdline(node)
        first = cluster.nodes[0]
        assert first.cluster_port is not None
        [port] = free_ports(1)
        stranger = EmbeddedServer(
            store_dir=tmp_path / "stranger",
            name="stranger",
            cluster_name=cluster.name,
            cluster_port=port,
            routes=[f"nats://127.0.0.1:{first.cluster_port}"],
        )
        with stranger:
            deadline = time.monotonic() + 10
            while not any("Authorization Violation" in ln for ln in stranger.log_tail()):
                assert time.monotonic() < deadline, stranger.log_tail()
                time.sleep(0.1)
            assert monitored(first, "routez")["num_routes"] >= 1
            names = {r.get("remote_name") for r in monitored(first, "routez")["routes"]}
            assert names == {"n1"}


def monitored(node: EmbeddedServer, page: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/{page}") as reply:
        found: dict[str, Any] = json.loads(reply.read())
    return found
