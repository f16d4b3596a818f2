"""Shared fixtures. Real servers (nats-server, prometheus) start on free ports, never fixed ones.

NATS, for any test that needs the bus:

- `nats_server`: a fresh `EmbeddedServer` (the real nats-server binary, JetStream on, a store
  under the test's tmp dir, port chosen by the server). Use `nats_server.url`; tests that need
  to crash it can call `nats_server.kill()` and `nats_server.start()` again (same store, and
  pass `port=` to a new `EmbeddedServer` to reuse the port).
- `nats_options`: `ConnectOptions` pointing at that server, with short timeouts for tests.
- `bus`: a connected `Bus` with ranvier's streams and buckets created; drained after the test.
- `make_nats_server`: a factory for extra servers (auth, a second store, ...); every server it
  made is stopped after the test, even when the test fails.
- `nats_cluster`: three nats-servers clustered over loopback routes (`NatsCluster`), JetStream
  on each, a meta leader elected; `tests/integration/cluster_kit.py` has what tests do with it
  (options for all its URLs, which node leads a stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from events.bus import Bus, ConnectOptions
from events.server import EmbeddedServer, NatsCluster

MakeServer = Callable[..., EmbeddedServer]


@pytest.fixture
def make_nats_server(tmp_path: Path) -> Iterator[MakeServer]:
    """Start nats-servers on free ports (kwargs go to `EmbeddedServer`); all stopped afterwards."""
    started: list[EmbeddedServer] = []

    def make(**kwargs: Any) -> EmbeddedServer:
        kwargs.setdefault("store_dir", tmp_path / f"nats-{len(started)}")
        server = EmbeddedServer(**kwargs)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def nats_server(make_nats_server: MakeServer) -> EmbeddedServer:
    """A running nats-server with JetStream and an empty store, for this test only."""
    return make_nats_server()


@pytest.fixture
def nats_options(nats_server: EmbeddedServer) -> ConnectOptions:
    """Connection options for `nats_server`, with timeouts short enough for tests."""
    return ConnectOptions(
        servers=[nats_server.url],
        connect_timeout=2.0,
        request_timeout=2.0,
        reconnect_wait=0.1,
        publish_retry_for=30.0,
        name="ranvier-tests",
    )


@pytest.fixture
async def bus(nats_options: ConnectOptions) -> AsyncIterator[Bus]:
    """A `Bus` connected to `nats_server`, streams and KV buckets ensured."""
    async with Bus.connect(nats_options) as connected:
        yield connected


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A running three-node NATS cluster with JetStream and empty stores, for this test only."""
    cluster = NatsCluster(store_dir=tmp_path / "cluster", size=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
