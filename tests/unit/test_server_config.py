"""What an embedded nats-server is told: credentials and an authenticated cluster's routes go in
the private config file, never in argv; an open server needs no config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from events.server import ROUTE_USER, ServerConfig, ServerError

BINARY = Path("/bin/nats-server")
STORE = Path("/store")


def test_an_open_server_is_all_flags() -> None:
    config = ServerConfig(store_dir=STORE, name="n0", cluster=("c", 6222), routes=("nats://h:1",))
    assert config.config_text() == ""
    assert config.argv(BINARY, 0, 0, None) == [
        *(str(BINARY), "--jetstream", "--store_dir", "/store"),
        *("--addr", "127.0.0.1", "--port", "-1", "--server_name", "n0"),
        *("--cluster_name", "c", "--cluster", "nats://127.0.0.1:6222", "--routes", "nats://h:1"),
        *("--http_port", "-1"),
    ]


@pytest.mark.parametrize(
    "auth", [{"token": 'to"k en'}, {"user": "ana", "password": 'to"k en'}, {"nkey_users": ("U1",)}]
)
def test_credentials_and_routes_go_in_the_config_file(auth: dict[str, Any]) -> None:
    config = ServerConfig(store_dir=STORE, cluster=("c", 6222), routes=("nats://h:1",), **auth)
    argv = config.argv(BINARY, 4222, None, Path("/store/conf"))
    assert argv[-2:] == ["--config", "/store/conf"]
    assert not any("cluster" in arg or "route" in arg for arg in argv)
    text = config.config_text()
    assert "authorization" in text
    assert 'cluster { name: "c", listen: "127.0.0.1:6222"' in text
    assert f"{ROUTE_USER}:" in text  # routes present credentials too


def test_one_way_to_authenticate_and_tls_needs_both_files() -> None:
    with pytest.raises(ServerError, match="choose one"):
        ServerConfig(store_dir=STORE, token="t", user="u")
    with pytest.raises(ServerError, match="both a certificate and its key"):
        ServerConfig(store_dir=STORE, tls_cert=Path("cert.pem"))
