"""Model servers no route needs any more are deleted after the grace period, on an emulated
cluster: the real `kubernetes` client, a real nats-server holding the router's table."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from events import subjects
from events.bus import Bus
from executors.backends import k8s_objects as k8s
from executors.cluster import KubernetesDeployer
from executors.deploy_flow import router_key
from executors.serving.routing import (
    Backend,
    DeployerTable,
    ModelRoute,
    Node,
    RouteTable,
    RoutingTable,
)
from sensors.loader import load_axon_text
from tests.integration.k8s_kit import Env, env, eventually, settings_for
from tests.integration.test_k8s_cluster import backend_for, request

__all__ = ["env"]  # the fixture, imported for pytest to find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

AXON = load_axon_text(
    """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: shop}
spec:
  tasks:
    - {name: Serve, deploy: {image: server:1, model: Model}}
""",
    "shop.yaml",
)


async def create_servers(env: Env, *versions: str) -> None:
    task = AXON.spec.task("Serve")
    assert task is not None
    for version in versions:
        run = k8s.Run(request(AXON, "d", 0, "deployer", "Serve"), f"run{version}", version)
        for obj in k8s.server_objects(
            AXON, task, run, "server:1", settings=settings_for(env), owner=None
        ):
            create: Any = (
                env.apps.create_namespaced_deployment
                if obj["kind"] == "Deployment"
                else env.core.create_namespaced_service
            )
            await asyncio.to_thread(create, "default", obj, _preload_content=False)


async def route_to(bus: Bus, *versions: str) -> None:
    backends = [
        Backend(
            name="m",
            version=v,
            url=f"http://{k8s.server_name('shop', 'Serve', v)}.default.svc:{k8s.SERVICE_PORT}",
            weight=100 / len(versions),
        )
        for v in versions
    ]
    table = RoutingTable(
        deployers=[
            DeployerTable(
                axon="shop",
                name="d",
                routes=[RouteTable(path="/predict", dag=[Node(model="m")])],
                models=[ModelRoute(name="m", backends=backends)],
            )
        ]
    )
    await bus.kv_put(
        subjects.MODELS_BUCKET, router_key("default", "shop"), table.model_dump_json().encode()
    )


def names(env: Env, kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in env.objects(kind)}


async def test_unrouted_servers_are_deleted_and_routed_ones_kept(bus: Bus, env: Env) -> None:
    await create_servers(env, "1", "2", "3")
    await route_to(bus, "2", "3")  # version 1 rolled out of the rolloutSpec
    deployer = KubernetesDeployer(bus, backend_for(env), scale_down_after=0.0)
    deleted = await deployer.collect_unrouted("default", "shop")
    kept = {k8s.server_name("shop", "Serve", v) for v in ("2", "3")}
    assert deleted == [k8s.server_name("shop", "Serve", "1")]
    assert names(env, "Deployment") == kept
    assert names(env, "Service") == kept


async def test_servers_younger_than_the_grace_period_are_kept(bus: Bus, env: Env) -> None:
    await create_servers(env, "1", "2")
    await route_to(bus, "2")
    # the emulator stamps every object as created in 2025: a grace of 100 years keeps them all
    deployer = KubernetesDeployer(bus, backend_for(env), scale_down_after=100 * 365 * 86400.0)
    assert await deployer.collect_unrouted("default", "shop") == []
    assert len(names(env, "Deployment")) == 2


async def test_a_deploy_schedules_the_collection_after_the_grace_period(bus: Bus, env: Env) -> None:
    await create_servers(env, "1", "2")
    await route_to(bus, "2")
    deployer = KubernetesDeployer(bus, backend_for(env), scale_down_after=0.05)
    deployer._collect_later("default", "shop")  # what a successful deploy calls
    one = k8s.server_name("shop", "Serve", "2")
    await eventually(lambda: names(env, "Deployment") == {one}, "version 1 collected")
