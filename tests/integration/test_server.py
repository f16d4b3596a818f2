"""The embedded nats-server: starts on a free port, reports a taken port, stops without zombies;
supervised, it is started again on its port and store after a crash, and given up on (with a
one-line reason) after too many."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from events import subjects
from events.bus import OUTAGE_ERRORS, Bus, ConnectOptions
from events.server import EmbeddedServer, ServerError, ServerGaveUp, Supervisor, find_nats_server
from tests.conftest import MakeServer

T = TypeVar("T")


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


async def _until(check: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _retry(read: Callable[[], Awaitable[T]], limit: float = 15.0) -> T:
    """`read()` once the server answers again (a request sent while it was away times out)."""
    async with asyncio.timeout(limit):
        while True:
            try:
                return await read()
            except OUTAGE_ERRORS:
                await asyncio.sleep(0.1)


async def test_supervisor_restarts_a_killed_server_on_its_port_and_store(
    nats_server: EmbeddedServer, nats_options: ConnectOptions
) -> None:
    supervisor = Supervisor(nats_server, backoff=0.05)
    watching = asyncio.create_task(supervisor.run())
    try:
        async with Bus.connect(nats_options) as bus:
            await bus.kv_put(subjects.RUNS_BUCKET, "before", b"kept")
            for restart in (1, 2):
                pid, port = nats_server.pid, nats_server.port
                assert pid is not None
                os.kill(pid, signal.SIGKILL)  # a crash: nobody reaps it but the supervisor
                await _until(lambda: supervisor.restarts == restart, "a restart")  # noqa: B023
                assert (nats_server.port, nats_server.running) == (port, True)
                assert nats_server.pid != pid
                # the client reconnects to the URL it knows; the store kept what was written
                got = await _retry(lambda: bus.kv_get(subjects.RUNS_BUCKET, "before"))
                assert got is not None
                assert got[0] == b"kept"
            assert len(supervisor.crashes) == 2
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    assert nats_server.running  # cancelling the supervisor leaves the server to its owner


async def test_supervisor_gives_up_after_repeated_crashes(nats_server: EmbeddedServer) -> None:
    supervisor = Supervisor(nats_server, max_crashes=3, window=60.0, backoff=0.05)
    watching = asyncio.create_task(supervisor.run())
    for restart in (1, 2, 3):
        await _until(lambda: nats_server.running or watching.done(), "a running server")
        if watching.done():
            break
        assert nats_server.pid is not None
        os.kill(nats_server.pid, signal.SIGKILL)
        await _until(lambda: supervisor.restarts == restart or watching.done(), "restart")  # noqa: B023
    with pytest.raises(ServerGaveUp) as failed:
        await watching
    message = str(failed.value)
    assert message.startswith("nats-server crashed 3 times in 60 s: killed by SIGKILL")
    assert "\n" not in message
    assert supervisor.restarts == 2
    assert not nats_server.running


def test_supervisor_backoff_doubles_up_to_its_cap(tmp_path: Path) -> None:
    now = [0.0]
    supervisor = Supervisor(
        EmbeddedServer(store_dir=tmp_path),
        max_crashes=10,
        window=60.0,
        backoff=0.5,
        backoff_cap=3.0,
        clock=lambda: now[0],
    )
    delays = []
    for _ in range(5):
        supervisor.crashed("killed")
        delays.append(supervisor.delay())
        now[0] += 10.0
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    now[0] += 60.0  # the crashes age out of the window: back to the first delay
    supervisor.crashed("killed")
    assert supervisor.delay() == 0.5
    assert supervisor.crashes == [now[0]]
