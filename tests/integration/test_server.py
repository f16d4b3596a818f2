"""The embedded nats-server: starts on a free port, reports a taken port, stops without zombies."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from events.server import EmbeddedServer, ServerError, find_nats_server
from tests.conftest import MakeServer


def _accepts_connections(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.split(") ", 1)[1].startswith("Z")


def test_binary_is_found_beside_the_interpreter() -> None:
    path = find_nats_server()
    assert path.name == "nats-server"
    assert os.access(path, os.X_OK)


def test_starts_on_a_free_port_and_stops_cleanly(make_nats_server: MakeServer) -> None:
    srv = make_nats_server()
    assert srv.port is not None
    assert srv.port > 0
    assert srv.url == f"nats://127.0.0.1:{srv.port}"
    assert _accepts_connections("127.0.0.1", srv.port)
    pid = srv.pid
    assert pid is not None
    srv.stop()
    assert not srv.running
    assert not _accepts_connections("127.0.0.1", srv.port)
    # Reaped: no zombie left behind, and the pid is gone from the process table.
    assert _is_zombie_or_gone(pid)
    assert not Path(f"/proc/{pid}").exists()


def test_a_taken_port_is_a_clear_error(make_nats_server: MakeServer, tmp_path: Path) -> None:
    first = make_nats_server()
    second = EmbeddedServer(store_dir=tmp_path / "other", port=first.port or 0)
    with pytest.raises(ServerError, match=rf"port {first.port} on 127.0.0.1 is taken"):
        second.start()
    assert not second.running


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    srv = EmbeddedServer(store_dir=tmp_path, binary=tmp_path / "no-such-nats-server")
    with pytest.raises(ServerError, match="cannot run"):
        srv.start()


def test_conflicting_auth_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="choose one of"):
        EmbeddedServer(store_dir=tmp_path, user="u", password="p", token="t")


async def test_async_context_manager_keeps_the_store(tmp_path: Path) -> None:
    async with EmbeddedServer(store_dir=tmp_path / "store") as srv:
        assert srv.running
        port = srv.port
    assert not srv.running
    assert (tmp_path / "store" / "jetstream").is_dir()
    assert port is not None
    assert not _accepts_connections("127.0.0.1", port)


def test_kill_then_restart_on_the_same_port_and_store(make_nats_server: MakeServer) -> None:
    srv = make_nats_server()
    port = srv.port
    srv.kill()
    assert not srv.running
    again = make_nats_server(store_dir=srv.store_dir, port=port)
    assert again.port == port
    assert _accepts_connections("127.0.0.1", port or 0)
