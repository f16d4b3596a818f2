"""The Router: answers each deployer's routes from the current table, and its health.

The decisions (who answers, DAG order, what a node receives) are the pure functions of
`routing.py`; the Router only moves bytes. A route of one node forwards the caller's bytes
untouched; a DAG parses the request once and calls each level's nodes at once. Every answer
names the version that answered each model in `meta.requestPath`, which feedback follows back
(`feedback.py`). Open Inference Protocol v2 requests are answered by `v2.py`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from executors.serving import protocol
from executors.serving.limits import (
    ROUTER_BODY_HINT,
    BodyTooLarge,
    body_too_large,
    read_body,
    router_max_body_bytes,
)
from executors.serving.protocol import ProtocolError
from executors.serving.responses import error_response, json_response
from executors.serving.router import feedback
from executors.serving.router.calls import BackendCalls, passed_on
from executors.serving.router.following import FollowedTable
from executors.serving.router.metrics import RouterMetrics
from executors.serving.router.sources import TableSource
from executors.serving.routing import (
    DEFAULT_NODE_PATH,
    FEEDBACK_PATH,
    Backend,
    CompiledRoute,
    CompiledTable,
    DeployerTable,
    Node,
    RoutingError,
    choose,
    node_input,
    node_url,
    route_output,
    select_backends,
    shadows,
)

_ALIASES = {"/api/v1.0/predictions": DEFAULT_NODE_PATH, "/api/v1.0/feedback": FEEDBACK_PATH}
NO_TABLE = "the router has no table yet; retry shortly"


def no_axon(axon: str) -> str:
    """Why a request for an axon not in the table is refused."""
    return f"no axon {axon!r} is deployed on this router"


class NodeFailure(Exception):
    """A node's backend answered with an error; the router passes it on."""

    def __init__(self, response: Response) -> None:
        super().__init__("node failed")
        self.response = response


class Router:
    """Serves every deployer in the current table; swaps tables atomically."""

    def __init__(
        self,
        source: TableSource,
        *,
        timeout: float = 30.0,
        rand: Callable[[], float] | None = None,
        max_connections: int = 512,
        retry: tuple[float, float] = (0.1, 5.0),
        max_body_bytes: int | None = None,
        max_shadows: int = 256,
    ) -> None:
        """`retry`: first and longest wait before following a failed source again.

        `max_shadows`: mirrored calls in flight at most; more are dropped (and counted), so a
        slow shadow can neither delay answers nor hold unbounded copies of request bodies.
        """
        self.max_body_bytes = (
            max_body_bytes if max_body_bytes is not None else router_max_body_bytes()
        )
        self.rand = rand or random.Random().random
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = RouterMetrics(self.registry)
        self.table = FollowedTable(source, retry=retry, swaps=self.stats.swaps)
        self.calls = BackendCalls(
            timeout=timeout,
            max_connections=max_connections,
            max_shadows=max_shadows,
            shadows=self.stats.shadow,
        )

    @property
    def compiled(self) -> CompiledTable | None:
        """The table requests start on now (None before the first is loaded)."""
        return self.table.compiled

    def deployers_of(self, axon: str) -> list[DeployerTable]:
        """The deployers of `axon` in the current table (none before a table is loaded)."""
        compiled = self.compiled
        return compiled.deployers.get(axon, []) if compiled is not None else []

    async def start(self) -> None:
        """Open the client, load the first table, follow changes."""
        self.calls.open()
        await self.table.start()

    async def stop(self) -> None:
        """Stop following changes, let shadows finish briefly, close the client."""
        await self.table.stop()
        await self.calls.close()

    # -- running a route --------------------------------------------------------------------

    async def _call_node(
        self,
        route: CompiledRoute,
        node: Node,
        body: bytes,
        ctype: str,
        headers: Mapping[str, str],
    ) -> tuple[bytes, str | None]:
        """Call one node; returns its answer body and the backend key that answered."""
        axon = route.deployer.axon
        model = route.models.get(node.model)
        backend: Backend | None = None
        if node.full_path is None and model is not None:
            backends = select_backends(model, headers)
            backend = choose(backends, self.rand)
            for shadow in shadows(backends):
                self.calls.mirror(
                    axon, node.model, shadow, node_url(node, shadow), body=body, ctype=ctype
                )
        url = node_url(node, backend)
        try:
            response = await self.calls.post(
                url, body, ctype, backend.timeout if backend is not None else None
            )
        except httpx.TimeoutException as exc:
            raise NodeFailure(
                error_response(504, f"model {node.model!r} at {url} timed out: {exc!r}")
            ) from exc
        except httpx.HTTPError as exc:
            raise NodeFailure(
                error_response(502, f"model {node.model!r} at {url} is unreachable: {exc!r}")
            ) from exc
        if backend is not None:
            self.stats.backend.labels(
                axon, node.model, backend.name, backend.version, str(response.status)
            ).inc()
        if response.status != 200:
            raise NodeFailure(passed_on(response))
        return response.content, backend.key if backend is not None else None

    async def _run_one(
        self, route: CompiledRoute, node: Node, body: bytes, ctype: str, headers: Mapping[str, str]
    ) -> Response:
        """A route of one node: the caller's bytes forwarded untouched (no parse on the way in)."""
        content, key = await self._call_node(route, node, body, ctype, headers)
        if key is None:
            return Response(content, media_type="application/json")
        return json_response(protocol.merge_request_path(json.loads(content), {node.model: key}))

    async def _run_dag(
        self, route: CompiledRoute, body: bytes, ctype: str, headers: Mapping[str, str]
    ) -> Response:
        """A route of several nodes: level by level, each level's nodes at once."""
        try:
            route_input = protocol.parse_json_body(body, ctype)
        except ProtocolError as exc:
            return error_response(400, str(exc))
        outputs: dict[str, Any] = {}
        request_path: dict[str, str] = {}
        for level in route.levels:
            inputs = [
                json.dumps(node_input(n, route_input, outputs)).encode("utf-8") for n in level
            ]
            results = await asyncio.gather(
                *(
                    self._call_node(route, n, data, "application/json", headers)
                    for n, data in zip(level, inputs, strict=True)
                )
            )
            for node, (content, key) in zip(level, results, strict=True):
                outputs[node.model] = json.loads(content)
                if key is not None:
                    request_path[node.model] = key
        answer = route_output(route.route.dag, outputs)
        if isinstance(answer, dict):
            answer = protocol.merge_request_path(answer, request_path)
        return json_response(answer)

    # -- endpoints --------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """POST /<axon>/<path>: a route, or `.../send-feedback`."""
        compiled = self.compiled  # read once: this request finishes on this table
        axon = request.path_params["axon"]
        path = "/" + str(request.path_params["path"]).strip("/")
        if compiled is None:
            return error_response(503, NO_TABLE)
        for alias, target in _ALIASES.items():  # Seldon v1 paths name /predict, /send-feedback
            if path.endswith(alias):
                path = path.removesuffix(alias) + target
        route = compiled.routes.get((axon, path))
        if route is None and path.endswith(FEEDBACK_PATH):
            return await feedback.forward(self, compiled, axon, path, request)
        if route is None:
            status = 404
            known = axon in compiled.deployers
            reason = f"no route {path} for axon {axon!r}" if known else no_axon(axon)
            # unknown names are not labels: random paths must not grow the metric without bound
            self.stats.requests.labels(axon if known else "unknown", "unknown", str(status)).inc()
            return error_response(status, reason)
        return await self.serve_route(route, axon, path, request)

    async def serve_route(
        self, route: CompiledRoute, axon: str, path: str, request: Request
    ) -> Response:
        """Answer a request for a route found in the table."""
        started = time.perf_counter()
        ctype = request.headers.get("content-type", "application/json")
        headers = request.headers  # a case-insensitive mapping; read only by header matches
        levels = route.levels
        try:
            body = await read_body(request)
            if len(levels) == 1 and len(levels[0]) == 1:
                response = await self._run_one(route, levels[0][0], body, ctype, headers)
            else:
                response = await self._run_dag(route, body, ctype, headers)
        except BodyTooLarge:
            response = error_response(413, body_too_large(self.max_body_bytes, ROUTER_BODY_HINT))
        except NodeFailure as failure:
            response = failure.response
        except RoutingError as exc:
            response = error_response(503, str(exc))
        except (ValueError, UnicodeDecodeError) as exc:
            response = error_response(502, f"a model answered with invalid JSON: {exc}")
        self.stats.latency.labels(axon).observe(time.perf_counter() - started)
        self.stats.requests.labels(axon, path, str(response.status_code)).inc()
        return response

    async def feedback(self, request: Request) -> Response:
        """POST /<axon>/send-feedback."""
        compiled = self.compiled
        if compiled is None:
            return error_response(503, NO_TABLE)
        axon = request.path_params["axon"]
        return await feedback.forward(self, compiled, axon, FEEDBACK_PATH, request)

    async def health(self) -> Response:
        """GET /health: 200 once a table is loaded."""
        compiled = self.compiled
        if compiled is None:
            return error_response(503, "no routing table loaded yet")
        return json_response(
            {
                "status": "ok",
                "revision": compiled.table.revision,
                "deployers": [f"{d.axon}/{d.name}" for d in compiled.table.deployers],
            }
        )

    async def axon_health(self, request: Request) -> Response:
        """GET /<axon>/health: every backend's /health and every external healthPath."""
        axon = request.path_params["axon"]
        deployers = self.deployers_of(axon)
        if not deployers:
            return error_response(404, no_axon(axon))
        urls = sorted(
            {b.url.rstrip("/") + "/health" for d in deployers for m in d.models for b in m.backends}
            | {n.health_path for d in deployers for r in d.routes for n in r.dag if n.health_path}
        )
        results = await self.calls.healthy(urls)
        healthy = all(results.values())
        return json_response(
            {"status": "ok" if healthy else "unhealthy", "checks": results},
            200 if healthy else 503,
        )

    async def metrics(self) -> Response:
        """GET /metrics."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
