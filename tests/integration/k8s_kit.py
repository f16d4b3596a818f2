"""kmock's KubernetesEmulator as a cluster for tests, and the moves a test makes to play one.

The real `kubernetes` client talks HTTP to the emulator; a test plays the cluster's controllers
(it sets Job and Deployment status, creates the pods a kubelet would report) and a second kmock
server plays the image registry. The emulator is given what a real API server adds on create
and update (uid, resourceVersion, creationTimestamp), so ownership and watch resumption see
realistic objects.

A test module imports the `env` fixture (one cluster per test, from `emulated_cluster()`) and
lists it in `__all__` so that pytest finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp.test_utils
import attrs
import kmock
import pytest
from kubernetes import client

from executors.backends import k8s_objects as k8s
from sensors.spec import Axon

COMPLETE = {"succeeded": 1, "active": 0, "conditions": [{"type": "Complete", "status": "True"}]}
RUNNING = {"active": 1, "ready": 1}
AVAILABLE = {"readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    """The emulator, plus the metadata a real API server stamps on writes: uid, creation time,
    resourceVersion, and `generation` (1 on create, +1 when a write outside the status
    subresource changes the spec)."""

    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = "2025-01-01T00:00:00Z"
                meta["generation"] = 1
            if request.action == kmock.action.UPDATE and request.subresource is None:
                key: Any = (request.resource, request.namespace, request.name)
                current = self.objects[key] if key in self.objects else None  # noqa: SIM401 - no .get
                if current is not None and not current.deleted and "spec" in request.data:
                    was = current.get("metadata", {}).get("generation") or 1
                    changed = current.get("spec") != {
                        **current.get("spec", {}),
                        **request.data["spec"],
                    }
                    meta["generation"] = was + 1 if changed else was
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE):
                meta["resourceVersion"] = str(next(self._versions))
        return await super()._handle(request)


class QuickServer(aiohttp.test_utils.RawTestServer):
    """aiohttp's test server, but stopping waits briefly: a watch stream never ends by itself."""

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        await super().start_server(loop=loop, **kwargs)
        assert self.runner is not None
        self.runner._shutdown_timeout = 0.1


@dataclass
class Env:
    """One emulated cluster and registry, with clients pointing at them."""

    cluster: Cluster
    server: kmock.Server
    api: client.ApiClient
    registry_url: str
    registry: kmock.RawHandler

    @property
    def api_url(self) -> str:
        """The emulated API server's URL."""
        return str(self.server.url).rstrip("/")

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """Live objects of a kind (as stored by the emulator)."""
        plural = {"Job": "jobs", "Deployment": "deployments", "Service": "services"}.get(
            kind, f"{kind.lower()}s"
        )
        return [
            dict(obj.raw)
            for (resource, _, _), obj in self.cluster.objects.items()
            if resource.plural == plural and not obj.deleted
        ]


@contextlib.asynccontextmanager
async def emulated_cluster() -> AsyncIterator[Env]:
    """An emulated API server (Jobs, Deployments, Pods, ...) and an image registry."""
    async with (
        kmock.RawHandler() as registry,
        kmock.Server(registry) as reg_server,
        Cluster() as cluster,
    ):
        for resource in ("batch/v1/jobs", "apps/v1/deployments"):
            cluster.resources[resource] = kmock.ResourceInfo()
        server = kmock.Server(cluster, server_cls=QuickServer)
        await server.__aenter__()
        configuration = client.Configuration()
        configuration.host = str(server.url).rstrip("/")
        api = client.ApiClient(configuration)
        env = Env(cluster, server, api, f"{reg_server.host}:{reg_server.port}", registry)
        try:
            yield env
        finally:
            await asyncio.to_thread(api.close)
            await env.server.__aexit__(None, None, None)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """An emulated cluster and registry for one test."""
    async with emulated_cluster() as cluster:
        yield cluster


async def eventually(check: Callable[[], Awaitable[Any] | Any], what: str) -> Any:
    """Poll `check` until it returns something truthy (the test's timeout bounds it)."""
    del what  # named for the reader: what the test is waiting for
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)


async def drop_connections(env: Env, while_down: Callable[[], None]) -> None:
    """Stop the API server (every connection drops), change things, start it on the same port."""
    port = env.server.port
    await env.server.__aexit__(None, None, None)
    while_down()
    env.server = kmock.Server(env.cluster, port=port, server_cls=QuickServer)
    await env.server.__aenter__()


def settings_for(env: Env) -> k8s.RenderSettings:
    """Render settings with the emulated registry."""
    return k8s.RenderSettings(registry=f"{env.registry_url}/ml", nats_url="nats://nats:4222")


def registry_has(env: Env, axon: Axon, *tasks: str) -> None:
    """The fake registry answers 200 for these tasks' images, 404 for everything else."""
    settings = settings_for(env)
    for name in tasks:
        task = axon.spec.task(name)
        assert task is not None
        image = k8s.image_ref(axon, task, settings)
        repo, tag = image.split("/", 1)[1].rsplit(":", 1)
        env.registry[f"head /v2/{repo}/manifests/{tag}"] << 200
    env.registry.fallback << 404


async def set_job_status(env: Env, name: str, status: dict[str, Any], ns: str = "default") -> None:
    """Play the Job controller: merge `status` into the Job's status."""
    await asyncio.to_thread(
        env.batch.patch_namespaced_job_status,
        name,
        ns,
        {"status": status},
        _preload_content=False,
        _content_type="application/merge-patch+json",
    )


async def set_deployment_status(
    env: Env, name: str, status: dict[str, Any], ns: str = "default"
) -> None:
    """Play the Deployment controller: merge `status` into the Deployment's status."""
    await asyncio.to_thread(
        env.apps.patch_namespaced_deployment_status,
        name,
        ns,
        {"status": status},
        _preload_content=False,
        _content_type="application/merge-patch+json",
    )


async def finished_pod(env: Env, job: dict[str, Any], message: str) -> None:
    """Play the kubelet: the Job's pod, its main container terminated with `message`."""
    meta = job["metadata"]
    pod: Any = {  # a plain body: the client sends dicts as they are
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-x1",
            "namespace": meta["namespace"],
            "labels": {"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"]},
        },
        "spec": job["spec"]["template"]["spec"],
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "main",
                    "image": job["spec"]["template"]["spec"]["containers"][0]["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "message": message}},
                }
            ],
        },
    }
    await asyncio.to_thread(
        env.core.create_namespaced_pod, meta["namespace"], pod, _preload_content=False
    )


AXON_GROUPS = ("ranvier.dev", "myelinproj.io", "myelin.io")


def install_axon_crds(env: Env, *groups: str) -> None:
    """Serve Axon objects of these API groups (as if their CRDs were installed)."""
    for group in groups:
        env.cluster.resources[f"{group}/v1alpha1/axons"] = kmock.ResourceInfo(
            namespaced=True, kind="Axon"
        )


def by_role(env: Env, role: str) -> list[dict[str, Any]]:
    """Jobs of one ranvier role (task, build)."""
    return [j for j in env.objects("Job") if j["metadata"]["labels"].get(k8s.L_ROLE) == role]
