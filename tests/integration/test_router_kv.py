"""The router over the KV table keeps following it across NATS outages.

A nats-server restart (same store) forgets the ordered consumer behind the router's KV watch;
the router must notice, read the whole table again and follow it from there, so a deploy after
the outage is routed without restarting the router.
"""

from __future__ import annotations

import asyncio

import pytest
import structlog

from events.bus import Bus, ConnectOptions
from events.subjects import MODELS_BUCKET
from executors.deploy_flow import router_key
from executors.serving.kv_table import KvTableSource
from executors.serving.router import Router
from executors.serving.routing import Endpoint, RoutingTable, build_deployer_table
from sensors.spec import Deployer
from tests.conftest import MakeServer

pytestmark = pytest.mark.integration

DEPLOYER = Deployer.model_validate(
    {
        "name": "d",
        "models": [
            {"name": "m", "backendModels": [{"name": "m", "trainer": "T", "deployer": "S"}]}
        ],
        "routes": [{"path": "/predict", "dag": [{"model": "m", "path": "/predict"}]}],
    }
)


def part(axon: str) -> bytes:
    """An axon's router part with one backend (the router only compiles it here)."""
    endpoint = Endpoint(version="1", url=f"http://127.0.0.1:9/{axon}")
    table = build_deployer_table(axon, DEPLOYER, {"m": [endpoint]})
    return RoutingTable(revision=1, deployers=[table]).model_dump_json(by_alias=True).encode()


def served(router: Router) -> set[str]:
    assert router.compiled is not None
    return {d.axon for d in router.compiled.table.deployers}


async def until_served(router: Router, axons: set[str]) -> None:
    while served(router) != axons:  # noqa: ASYNC110  # the router has no change event to await
        await asyncio.sleep(0.02)


async def test_the_router_follows_the_table_across_a_nats_restart(
    make_nats_server: MakeServer,
) -> None:
    srv = make_nats_server()
    options = ConnectOptions(
        servers=[srv.url], connect_timeout=2.0, request_timeout=1.0, reconnect_wait=0.05
    )
    async with Bus.connect(options) as bus:
        router = Router(KvTableSource(bus), retry=(0.05, 0.5))
        await router.start()
        try:
            await bus.kv_put(MODELS_BUCKET, router_key("default", "before"), part("before"))
            await until_served(router, {"before"})
            with structlog.testing.capture_logs() as logs:
                srv.kill()
                await asyncio.to_thread(make_nats_server, store_dir=srv.store_dir, port=srv.port)
                await bus.kv_put(MODELS_BUCKET, router_key("default", "after"), part("after"))
                await until_served(router, {"before", "after"})
                await bus.kv_delete(MODELS_BUCKET, router_key("default", "before"))
                await until_served(router, {"after"})
            events = [e["event"] for e in logs]
            assert "router.follow_interrupted" in events
            assert "router.follow_resumed" in events
        finally:
            await router.stop()
