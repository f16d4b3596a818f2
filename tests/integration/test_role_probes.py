"""Every role answers Kubernetes' httpGet probes; the router starts as the manifests start it.

The router's container is run with the manifest's own args and env (ports swapped for free ones,
NATS pointed at a test server): it listens on 0.0.0.0, answers `/readyz` and `/healthz` on its
metrics port, and records the Service's URL, which `ranvier endpoint` then prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from events.bus import Bus
from events.server import EmbeddedServer, free_ports
from events.subjects import MODELS_BUCKET
from executors.serving.kv_table import ROUTER_URL_KEY, RouterRole

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLANE = REPO / "manifests" / "base" / "control-plane.yaml"


def container(name: str) -> dict[str, Any]:
    (deployment,) = [
        d
        for d in yaml.safe_load_all(PLANE.read_text(encoding="utf-8"))
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == name
    ]
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(found, dict)
    return found


def probe_port(spec: dict[str, Any], probe: str) -> int:
    """The container port number an httpGet probe names."""
    port = spec[probe]["httpGet"]["port"]
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    return int(ports.get(port, port))


@pytest.fixture
def started(
    tmp_path: Path, nats_server: EmbeddedServer
) -> Iterator[tuple[dict[str, Any], dict[int, int]]]:
    """The router Deployment's container, run locally; yields it and {manifest port: local}."""
    spec = container("ranvier-router")
    ports = {
        p["containerPort"]: free
        for p, free in zip(spec["ports"], free_ports(2, "0.0.0.0"), strict=True)
    }
    args = [str(ports.get(int(a), a)) if a.isdigit() else a for a in spec["args"]]
    env = {e["name"]: e["value"] for e in spec["env"] if "value" in e}
    env.pop("RANVIER_REPLICAS")  # one test server cannot hold three copies
    env["RANVIER_NATS_URL"] = nats_server.url
    proc = subprocess.Popen(
        [sys.executable, "-m", "ranvier", *args, "--state-dir", str(tmp_path / "state")],
        env={**os.environ, **env},
        cwd=tmp_path,
        stderr=subprocess.PIPE,
    )
    try:
        yield spec, ports
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()


def get_until(url: str, status: int, within: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(url, timeout=2.0)
            if answer.status_code == status:
                return answer
            last = answer
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url}: no {status} within {within}s, last {last!r}")


def test_the_router_started_as_the_manifests_start_it_answers_probes_and_its_public_url(
    started: tuple[dict[str, Any], dict[int, int]], nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    spec, ports = started
    assert "0.0.0.0" in spec["args"]
    ready = ports[probe_port(spec, "readinessProbe")]
    alive = ports[probe_port(spec, "livenessProbe")]
    body = get_until(f"http://127.0.0.1:{ready}{spec['readinessProbe']['httpGet']['path']}", 200)
    assert body.json()["status"] == "ok"
    assert body.json()["checks"] == ["nats", "router"]
    alive_body = get_until(
        f"http://127.0.0.1:{alive}{spec['livenessProbe']['httpGet']['path']}", 200
    )
    assert alive_body.json()["checks"] == ["loop"]
    # the router itself serves on every address, at the manifests' container port
    serving = ports[next(p["containerPort"] for p in spec["ports"] if p["name"] == "http")]
    assert httpx.get(f"http://127.0.0.1:{serving}/health", timeout=2.0).status_code == 200

    public = spec["args"][spec["args"].index("--public-url") + 1]
    record = {"deployer": "serve", "url": "http://127.0.0.1:1/demo/", "models": []}
    subprocess.run(
        [sys.executable, "-c", _PUT_RECORD, nats_server.url, json.dumps(record)],
        check=True,
        cwd=REPO,
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ranvier",
            "endpoint",
            "demo",
            "-o",
            "json",
            "--nats-url",
            nats_server.url,
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert json.loads(out.stdout)["fixedUrl"] == f"{public}/demo/"


_PUT_RECORD = """
import asyncio, sys
from events.bus import Bus, ConnectOptions, kv_key
from events.subjects import MODELS_BUCKET

async def main() -> None:
    async with Bus.connect(ConnectOptions(servers=[sys.argv[1]])) as bus:
        key = kv_key("deploy", "default", "demo", "serve")
        await bus.kv_put(MODELS_BUCKET, key, sys.argv[2].encode())

asyncio.run(main())
"""


def test_readyz_fails_with_the_reason_when_nats_is_gone(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server = make_nats_server()
    (metrics,) = free_ports(1)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "ranvier", "run", "--role", "engine,executor,watcher"),
            *("--nats-url", server.url, "--metrics-port", str(metrics)),
            *("--state-dir", str(tmp_path / "state")),
        ],
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = get_until(f"http://127.0.0.1:{metrics}/readyz", 200).json()
        assert set(body["checks"]) == {"nats", "engine", "executor", "watcher"}
        server.stop()
        failing = get_until(f"http://127.0.0.1:{metrics}/readyz", 503).json()
        assert failing["failed"]["nats"] == "not connected to NATS"
        # alive all the same: its loop turns, so Kubernetes takes it out of service, not down
        assert httpx.get(f"http://127.0.0.1:{metrics}/healthz", timeout=2.0).status_code == 200
        assert "ranvier_" in httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=2.0).text
    finally:
        proc.kill()
        proc.wait()


async def test_a_router_with_a_public_url_records_it_and_leaves_it_when_it_stops(
    bus: Bus,
) -> None:
    router = RouterRole(bus, "127.0.0.1", 0, public_url="http://ranvier-router.ns.svc/")
    task = asyncio.create_task(router.run())
    async with asyncio.timeout(30):
        await router.listening.wait()
    found = await bus.kv_get(MODELS_BUCKET, ROUTER_URL_KEY)
    assert found is not None
    assert json.loads(found[0]) == {"url": "http://ranvier-router.ns.svc"}
    assert router.table_loaded
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # the other replicas still serve the Service: its URL stays recorded
    after = await bus.kv_get(MODELS_BUCKET, ROUTER_URL_KEY)
    assert after is not None
    assert json.loads(after[0]) == {"url": "http://ranvier-router.ns.svc"}
