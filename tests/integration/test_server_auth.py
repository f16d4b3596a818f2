"""The embedded server's credentials reach it through a private config file, never its argv
(`ps` shows every process's argv to every user), and it refuses clients without them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from events.bus import AuthError, Bus, ConnectOptions
from events.model import MetricData
from events.server import CONFIG_FILE, EmbeddedServer
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
