"""The router: one stable URL per Axon deployer in front of its model servers.

Users and scripts keep one URL (`http://HOST:PORT/<axon>/predict`) while versions come and go
behind it. The decisions (who answers, DAG order, what a node receives) are the pure functions
of `routing.py`; this module only moves bytes: one shared `httpx.AsyncClient` (pooled
connections, timeouts) for every backend call, shadows mirrored as fire-and-forget tasks whose
errors are only counted, and feedback sent to the version named in the answer's
`meta.requestPath`, or, when the feedback carries no answer (Myelin's and Seldon's clients send
`request` + `reward`), to every version serving `/predict` now.

Every request is bounded before it costs much (`limits.py`): a body above the router's limit
gets 413 without being read, and with `RANVIER_ROUTER_TOKEN` set every POST needs the bearer
token. Seldon's v1 paths are aliases of `/predict` and `/send-feedback`; an Open Inference
Protocol v2 request for a model goes to one of its versions by the weights, as `/predict` does.
Each backend call waits the backend's own `timeout` from the table (its model's timeout and a
margin), else the router's default.

The table comes from a `TableSource` (a file, memory, or the `ranvier_models` KV bucket). A
new table is compiled first (a bad one is refused and the old one kept) and then swapped in by
one assignment: each request reads the table once when it starts, so in-flight requests finish
on the table they started with. Following changes never gives up while the router runs: when
the source fails (a NATS outage), the router keeps serving its last table, backs off, reads the
whole table again and follows from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from events.aio import checkpoint
from events.errors import RanvierError
from executors.serving import oip, protocol
from executors.serving.limits import (
    ENV_ROUTER_MAX_BODY_BYTES,
    BearerToken,
    BodyLimit,
    body_too_large,
    router_max_body_bytes,
    router_token,
)
from executors.serving.protocol import ErrorResponse, Feedback, ProtocolError, SeldonMessage
from executors.serving.routing import (
    DEFAULT_NODE_PATH,
    FEEDBACK_PATH,
    Backend,
    CompiledRoute,
    CompiledTable,
    DeployerTable,
    FeedbackError,
    ModelRoute,
    Node,
    RoutingError,
    RoutingTable,
    choose,
    compile_table,
    feedback_backends,
    feedback_url,
    node_input,
    node_url,
    route_output,
    select_backends,
    serving_feedback_backends,
    shadows,
)
from executors.serving.server import (
    ERROR_RESPONSES,
    error_response,
    install_openapi,
    json_response,
    request_body_spec,
    run_loop,
    serve_app,
)
from executors.serving.upstream import KeepAliveTransport, RawResponse

log = structlog.get_logger(__name__)

_FORWARDED_HEADERS = ("content-type",)
_ALIASES = {"/api/v1.0/predictions": DEFAULT_NODE_PATH, "/api/v1.0/feedback": FEEDBACK_PATH}
_BODY_HINT = f"raise the router's {ENV_ROUTER_MAX_BODY_BYTES}"


class _BodyTooLarge(Exception):
    """A streamed body crossed the router's limit while it was read."""


async def _read_body(request: Request) -> bytes:
    """The request's body, read up to the limit the body-limit middleware enforces."""
    try:
        return await request.body()
    except HTTPException as exc:
        if exc.status_code == 413:
            raise _BodyTooLarge from exc
        raise


class TableSource(Protocol):
    """Where the router's table comes from, and tells when it changes."""

    async def get(self) -> RoutingTable:
        """The current table."""
        ...

    def changes(self) -> AsyncIterator[RoutingTable]:
        """Every later table, as it changes (runs until cancelled)."""
        ...


class InMemoryTableSource:
    """A table held in memory; `set()` publishes a new one (tests, `ranvier up`)."""

    def __init__(self, table: RoutingTable | None = None) -> None:
        self._table = table or RoutingTable()
        self._changed = asyncio.Event()

    async def get(self) -> RoutingTable:
        """The current table."""
        return self._table

    def set(self, table: RoutingTable) -> None:
        """Replace the table and wake every `changes()` iterator (call it on the router's loop)."""
        self._table = table
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changes(self) -> AsyncGenerator[RoutingTable, None]:
        """Every later table."""
        while True:
            await self._changed.wait()
            yield self._table


class TableFileError(RanvierError):
    """A routing table file that is missing or not a valid table."""


def read_table_file(path: Path) -> RoutingTable:
    """A routing table from a JSON file."""
    try:
        return RoutingTable.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise TableFileError(f"routing table {path} does not exist") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TableFileError(
            f"routing table {path} is invalid: {where}: {first['msg']}",
            hint="fix the file; the router keeps its previous table",
        ) from exc


class FileTableSource:
    """A table in a JSON file, polled for changes (a bad edit is logged and skipped)."""

    def __init__(self, path: Path, *, interval: float = 0.5) -> None:
        self.path = path
        self.interval = interval

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    async def get(self) -> RoutingTable:
        """The table in the file now."""
        return await asyncio.to_thread(read_table_file, self.path)

    async def changes(self) -> AsyncGenerator[RoutingTable, None]:
        """A new table each time the file changes to a valid one."""
        seen = await asyncio.to_thread(self._stamp)
        while True:
            await asyncio.sleep(self.interval)
            stamp = await asyncio.to_thread(self._stamp)
            if stamp == seen or stamp is None:
                continue
            seen = stamp
            try:
                yield await self.get()
            except TableFileError as exc:
                log.error("router.table_rejected", path=str(self.path), reason=str(exc))


class _RouterMetrics:
    """The router's Prometheus metrics, in its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "ranvier_router_requests",
            "Requests answered by the router.",
            ["axon", "route", "code"],
            registry=registry,
        )
        self.backend = Counter(
            "ranvier_router_backend_requests",
            "Calls to model servers, by the version that answered.",
            ["axon", "model", "backend", "version", "code"],
            registry=registry,
        )
        self.shadow = Counter(
            "ranvier_router_shadow_requests",
            "Mirrored calls to shadows, by outcome (ok, http_error, error, dropped).",
            ["axon", "model", "backend", "version", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "ranvier_router_request_seconds",
            "Time to answer a routed request.",
            ["axon"],
            registry=registry,
        )
        self.swaps = Counter(
            "ranvier_router_table_swaps", "Routing tables swapped in.", registry=registry
        )


class _NodeFailure(Exception):
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
        self.source = source
        self.max_body_bytes = (
            max_body_bytes if max_body_bytes is not None else router_max_body_bytes()
        )
        self.max_shadows = max_shadows
        self.retry = retry
        self.timeout = timeout
        self.rand = rand or random.Random().random
        self.max_connections = max_connections
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = _RouterMetrics(self.registry)
        self.compiled: CompiledTable | None = None
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._timeouts: dict[str, float | None] = {}
        self._transport = KeepAliveTransport(max_idle_per_host=max_connections)

    @property
    def client(self) -> httpx.AsyncClient:
        """The shared HTTP client (exists between start and stop)."""
        if self._client is None:
            raise RuntimeError("Router.start() first")
        return self._client

    def swap(self, table: RoutingTable) -> None:
        """Compile and install `table`; a table that does not compile is refused."""
        compiled = compile_table(table)
        self.compiled = compiled
        self.stats.swaps.inc()
        log.info("router.table_swapped", revision=table.revision, deployers=len(table.deployers))

    async def start(self) -> None:
        """Open the client, load the first table, follow changes."""
        timeout = httpx.Timeout(self.timeout, connect=5.0)
        self._timeouts = timeout.as_dict()
        self._client = httpx.AsyncClient(
            timeout=timeout,
            transport=self._transport,
        )
        self.swap(await self.source.get())
        self._watcher = asyncio.create_task(self._follow())

    def _install(self, table: RoutingTable) -> None:
        try:
            self.swap(table)
        except RoutingError as exc:
            log.error("router.table_rejected", revision=table.revision, reason=str(exc))

    async def _follow(self) -> None:
        """Follow the source until cancelled; after a failure, back off, reload, follow again."""
        first, longest = self.retry
        delay = first
        while True:
            checkpoint()
            try:
                async for table in self.source.changes():
                    self._install(table)
                    delay = first
                reason = "the source's changes ended"
            except Exception as exc:  # any source, any outage: the router must keep following
                reason = str(exc) or repr(exc)
            log.warning("router.follow_interrupted", reason=reason, retry_in=delay)
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
                try:
                    self._install(await self.source.get())  # what changed while not following
                    break
                except Exception as exc:  # still down: wait longer (logged, never fatal)
                    log.warning(
                        "router.reload_failed", reason=str(exc) or repr(exc), retry_in=delay
                    )
            log.info("router.follow_resumed")

    async def stop(self) -> None:
        """Stop following changes, let shadows finish briefly, close the client."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)
        for task in self._background:
            task.cancel()
        if self._client is not None:
            await self._client.aclose()

    # -- calls ------------------------------------------------------------------------------

    async def _post(
        self, url: str, content: bytes, content_type: str, read_s: float | None = None
    ) -> RawResponse:
        """POST to a backend; `read_s` (a backend's own wait) replaces the router's default."""
        timeouts = self._timeouts if read_s is None else {**self._timeouts, "read": read_s}
        if url.startswith("http://"):
            # The hot path: our own model servers over plain HTTP/1.1, without building httpx
            # request and response objects (they cost a third of the router's time).
            return await self._transport.post(url, content, content_type, timeouts)
        response = await self.client.post(
            url,
            content=content,
            headers={"content-type": content_type},
            timeout=httpx.Timeout(**timeouts) if read_s is not None else httpx.USE_CLIENT_DEFAULT,
        )
        return RawResponse(
            response.status_code,
            response.headers.get("content-type", "application/json"),
            response.content,
            response.headers.get("retry-after"),
        )

    def _mirror(
        self, axon: str, model: str, backend: Backend, url: str, *, body: bytes, ctype: str
    ) -> None:
        if len(self._background) >= self.max_shadows:
            self.stats.shadow.labels(axon, model, backend.name, backend.version, "dropped").inc()
            return

        async def send() -> None:
            try:
                response = await self._post(url, body, ctype, backend.timeout)
                outcome = "ok" if response.status < 400 else "http_error"
            except Exception:  # a shadow's failure never reaches the caller: it is counted
                outcome = "error"
            self.stats.shadow.labels(axon, model, backend.name, backend.version, outcome).inc()

        task = asyncio.create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                self._mirror(
                    axon, node.model, shadow, node_url(node, shadow), body=body, ctype=ctype
                )
        url = node_url(node, backend)
        try:
            response = await self._post(
                url, body, ctype, backend.timeout if backend is not None else None
            )
        except httpx.TimeoutException as exc:
            raise _NodeFailure(
                error_response(504, f"model {node.model!r} at {url} timed out: {exc!r}")
            ) from exc
        except httpx.HTTPError as exc:
            raise _NodeFailure(
                error_response(502, f"model {node.model!r} at {url} is unreachable: {exc!r}")
            ) from exc
        if backend is not None:
            self.stats.backend.labels(
                axon, node.model, backend.name, backend.version, str(response.status)
            ).inc()
        if response.status != 200:
            raise _NodeFailure(_passed_on(response))
        return response.content, backend.key if backend is not None else None

    async def _run_route(
        self, route: CompiledRoute, body: bytes, ctype: str, headers: Mapping[str, str]
    ) -> Response:
        levels = route.levels
        request_path: dict[str, str] = {}
        if len(levels) == 1 and len(levels[0]) == 1:
            # One node: forward the caller's bytes untouched (no parse on the way in).
            node = levels[0][0]
            content, key = await self._call_node(route, node, body, ctype, headers)
            if key is None:
                return Response(content, media_type="application/json")
            request_path[node.model] = key
            return json_response(protocol.merge_request_path(json.loads(content), request_path))
        try:
            route_input = protocol.parse_json_body(body, ctype)
        except ProtocolError as exc:
            return error_response(400, str(exc))
        outputs: dict[str, Any] = {}
        for level in levels:
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
            return error_response(503, "the router has no table yet; retry shortly")
        for alias, target in _ALIASES.items():  # Seldon v1 paths name /predict, /send-feedback
            if path.endswith(alias):
                path = path.removesuffix(alias) + target
        route = compiled.routes.get((axon, path))
        if route is None and path.endswith(FEEDBACK_PATH):
            return await self._feedback(compiled, axon, path, request)
        if route is None:
            status = 404
            reason = (
                f"no route {path} for axon {axon!r}"
                if axon in compiled.deployers
                else f"no axon {axon!r} is deployed on this router"
            )
            # unknown names are not labels: random paths must not grow the metric without bound
            known = axon if axon in compiled.deployers else "unknown"
            self.stats.requests.labels(known, "unknown", str(status)).inc()
            return error_response(status, reason)
        return await self.serve_route(route, axon, path, request)

    async def serve_route(
        self, route: CompiledRoute, axon: str, path: str, request: Request
    ) -> Response:
        """Answer a request for a route found in the table."""
        started = time.perf_counter()
        ctype = request.headers.get("content-type", "application/json")
        headers = request.headers  # a case-insensitive mapping; read only by header matches
        try:
            body = await _read_body(request)
            response = await self._run_route(route, body, ctype, headers)
        except _BodyTooLarge:
            response = error_response(413, body_too_large(self.max_body_bytes, _BODY_HINT))
        except _NodeFailure as failure:
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
            return error_response(503, "the router has no table yet; retry shortly")
        return await self._feedback(compiled, request.path_params["axon"], FEEDBACK_PATH, request)

    async def _feedback(
        self, compiled: CompiledTable, axon: str, path: str, request: Request
    ) -> Response:
        deployers = compiled.deployers.get(axon)
        if not deployers:
            return error_response(404, f"no axon {axon!r} is deployed on this router")
        prefix = path.removesuffix(FEEDBACK_PATH).strip("/")
        if prefix:
            deployers = [d for d in deployers if d.name == prefix]
        try:
            body = await _read_body(request)
        except _BodyTooLarge:
            return self._feedback_error(axon, 413, body_too_large(self.max_body_bytes, _BODY_HINT))
        ctype = request.headers.get("content-type", "application/json")
        try:
            feedback = protocol.parse_feedback(body, ctype)
        except ProtocolError as exc:
            return error_response(400, str(exc))
        meta = feedback.response.meta if feedback.response is not None else None
        if meta is not None and meta.request_path:
            targets = feedback_backends(deployers, meta.request_path)
            if not targets:
                return self._feedback_error(
                    axon,
                    404,
                    "no version named in response.meta.requestPath is routed any more: "
                    + ", ".join(f"{k}={v}" for k, v in sorted(meta.request_path.items())),
                )
        else:
            # No answer to follow back (Myelin's and Seldon's clients send request + reward):
            # the versions serving the /predict route next to this feedback path now.
            predict = path.removesuffix(FEEDBACK_PATH) + DEFAULT_NODE_PATH
            route = compiled.routes.get((axon, predict))
            if route is None:
                return self._feedback_error(
                    axon,
                    400,
                    f"feedback without response.meta.requestPath goes to the versions serving "
                    f"{predict}, and axon {axon!r} has no route {predict} on this router; "
                    "send the router's answer as 'response'",
                )
            try:
                targets = serving_feedback_backends(route, request.headers)
            except FeedbackError as exc:
                return self._feedback_error(axon, exc.status, str(exc))
        log.debug(
            "router.feedback_forwarded",
            axon=axon,
            by="requestPath" if meta is not None and meta.request_path else "weights",
            backends=[b.key for b in targets],
        )
        try:
            responses = await asyncio.gather(
                *(self._post(feedback_url(b), body, ctype) for b in targets)
            )
        except httpx.HTTPError as exc:
            return error_response(502, f"forwarding feedback failed: {exc!r}")
        worst = max(responses, key=lambda r: r.status)
        self.stats.requests.labels(axon, FEEDBACK_PATH, str(worst.status)).inc()
        return Response(worst.content, status_code=worst.status, media_type=worst.content_type)

    def _feedback_error(self, axon: str, status: int, reason: str) -> Response:
        self.stats.requests.labels(axon, FEEDBACK_PATH, str(status)).inc()
        return error_response(status, reason)

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
        compiled = self.compiled
        axon = request.path_params["axon"]
        deployers = compiled.deployers.get(axon) if compiled is not None else None
        if not deployers:
            return error_response(404, f"no axon {axon!r} is deployed on this router")
        urls = sorted(
            {b.url.rstrip("/") + "/health" for d in deployers for m in d.models for b in m.backends}
            | {n.health_path for d in deployers for r in d.routes for n in r.dag if n.health_path}
        )

        async def probe(url: str) -> tuple[str, bool]:
            try:
                response = await self.client.get(url, timeout=5.0)
            except httpx.HTTPError:
                return url, False
            return url, response.status_code == 200

        results = dict(await asyncio.gather(*(probe(u) for u in urls)))
        healthy = all(results.values())
        return json_response(
            {"status": "ok" if healthy else "unhealthy", "checks": results},
            200 if healthy else 503,
        )

    # -- Open Inference Protocol v2 --------------------------------------------------------

    def _v2_model(self, request: Request) -> tuple[DeployerTable, ModelRoute] | Response:
        """The deployer model a v2 path names (the first deployer of the axon serving it)."""
        compiled = self.compiled
        axon = request.path_params["axon"]
        name = request.path_params["name"]
        deployers = compiled.deployers.get(axon) if compiled is not None else None
        if not deployers:
            return _v2_error(404, f"no axon {axon!r} is deployed on this router")
        for deployer in deployers:
            for model in deployer.models:
                if model.name == name:
                    return deployer, model
        known = ", ".join(sorted({m.name for d in deployers for m in d.models}))
        return _v2_error(404, f"axon {axon!r} has no model {name!r}; it serves {known}")

    async def v2_infer(self, request: Request) -> Response:
        """POST /<axon>/v2/models/<model>/infer: one version by weight, shadows get a copy."""
        found = self._v2_model(request)
        if isinstance(found, Response):
            return found
        deployer, model = found
        axon = deployer.axon
        started = time.perf_counter()
        try:
            body = await _read_body(request)
        except _BodyTooLarge:
            return _v2_error(413, body_too_large(self.max_body_bytes, _BODY_HINT))
        ctype = request.headers.get("content-type", "application/json")
        backends = select_backends(model, request.headers)
        try:
            backend = choose(backends, self.rand)
        except RoutingError as exc:
            return _v2_error(503, str(exc))
        for shadow in shadows(backends):
            self._mirror(axon, model.name, shadow, _v2_infer_url(shadow), body=body, ctype=ctype)
        url = _v2_infer_url(backend)
        try:
            answer = await self._post(url, body, ctype, backend.timeout)
        except httpx.TimeoutException as exc:
            response = _v2_error(504, f"model {model.name!r} at {url} timed out: {exc!r}")
        except httpx.HTTPError as exc:
            response = _v2_error(502, f"model {model.name!r} at {url} is unreachable: {exc!r}")
        else:
            self.stats.backend.labels(
                axon, model.name, backend.name, backend.version, str(answer.status)
            ).inc()
            response = _passed_on(answer)
        self.stats.latency.labels(axon).observe(time.perf_counter() - started)
        self.stats.requests.labels(axon, "/v2/infer", str(response.status_code)).inc()
        return response

    def _routed(self, model: ModelRoute) -> list[Backend]:
        return [b for b in model.backends if not b.shadow and b.weight > 0]

    async def _ready(self, urls: list[str]) -> bool:
        async def probe(url: str) -> bool:
            try:
                response = await self.client.get(url, timeout=5.0)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        return bool(urls) and all(await asyncio.gather(*(probe(u) for u in urls)))

    async def v2_model(self, request: Request) -> Response:
        """GET /<axon>/v2/models/<model>: its metadata (the versions taking traffic now)."""
        found = self._v2_model(request)
        if isinstance(found, Response):
            return found
        _, model = found
        metadata = oip.model_metadata(model.name, "")
        metadata["versions"] = [b.version for b in self._routed(model)]
        return json_response(metadata)

    async def v2_model_ready(self, request: Request) -> Response:
        """GET /<axon>/v2/models/<model>/ready: 200 when every version taking traffic is."""
        found = self._v2_model(request)
        if isinstance(found, Response):
            return found
        _, model = found
        urls = [b.url.rstrip("/") + f"/v2/models/{b.name}/ready" for b in self._routed(model)]
        ready = await self._ready(urls)
        return json_response({"name": model.name, "ready": ready}, 200 if ready else 503)

    async def v2_live(self) -> Response:
        """GET /<axon>/v2/health/live: the router answers."""
        return json_response({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        """GET /<axon>/v2/health/ready: 200 when every model server of the axon is ready."""
        compiled = self.compiled
        axon = request.path_params["axon"]
        deployers = compiled.deployers.get(axon) if compiled is not None else None
        if not deployers:
            return _v2_error(404, f"no axon {axon!r} is deployed on this router")
        urls = sorted(
            {
                b.url.rstrip("/") + "/v2/health/ready"
                for d in deployers
                for m in d.models
                for b in self._routed(m)
            }
        )
        ready = await self._ready(urls)
        return json_response({"ready": ready}, 200 if ready else 503)

    async def metrics(self) -> Response:
        """GET /metrics."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _passed_on(answer: RawResponse) -> Response:
    """A backend's answer as the router's own (a full server's `Retry-After` kept)."""
    headers = {"retry-after": answer.retry_after} if answer.retry_after else None
    return Response(
        answer.content,
        status_code=answer.status,
        media_type=answer.content_type,
        headers=headers,
    )


def _v2_error(status: int, reason: str) -> Response:
    return json_response(oip.error_body(reason), status)


def _v2_infer_url(backend: Backend) -> str:
    return backend.url.rstrip("/") + f"/v2/models/{backend.name}/infer"


class _FastPath:
    """ASGI middleware: POSTs to a route in the table skip FastAPI's routing and endpoint layers.

    Those layers cost about a third of the router's time per request (bench/router.py). The
    answers are the same as through the documented `/{axon}/{path}` endpoint, which still
    serves everything else (unknown routes, feedback, OpenAPI).
    """

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        compiled = self.router.compiled
        if scope["type"] == "http" and scope["method"] == "POST" and compiled is not None:
            axon, _, rest = str(scope["path"]).lstrip("/").partition("/")
            path = "/" + rest.strip("/")
            route = compiled.routes.get((axon, path))
            if route is not None:
                response = await self.router.serve_route(route, axon, path, Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_router_app(
    source: TableSource,
    *,
    timeout: float = 30.0,
    rand: Callable[[], float] | None = None,
    max_body_bytes: int | None = None,
    token: str | None = None,
) -> FastAPI:
    """The router's ASGI app; the table is loaded at start-up and followed while it runs.

    `max_body_bytes` defaults to `RANVIER_ROUTER_MAX_BODY_BYTES` (else 10 MB); `token`, to
    `RANVIER_ROUTER_TOKEN` (unset: no token is asked for).
    """
    router = Router(source, timeout=timeout, rand=rand, max_body_bytes=max_body_bytes)
    token = token if token is not None else router_token()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    app = FastAPI(
        title="ranvier router",
        version="1",
        description="One stable URL per Axon deployer: /<axon>/<route path>.",
        lifespan=lifespan,
        separate_input_output_schemas=False,
    )
    app.state.router = router
    # outermost last: the token is checked first, then the body's size, then the fast path
    app.add_middleware(_FastPath, router=router)
    app.add_middleware(BodyLimit, max_bytes=router.max_body_bytes, hint=_BODY_HINT)
    if token:
        app.add_middleware(BearerToken, token=token)
    install_openapi(app, [SeldonMessage, Feedback, ErrorResponse, oip.InferenceRequest])
    app.add_api_route("/health", router.health, summary="200 once a routing table is loaded")
    app.add_api_route(
        "/metrics", router.metrics, summary="Prometheus metrics", response_class=Response
    )
    app.add_api_route(
        "/{axon}/health", router.axon_health, summary="Health of an axon's model servers"
    )
    app.add_api_route(
        "/{axon}/send-feedback",
        router.feedback,
        methods=["POST"],
        response_model=None,
        responses={
            200: {"model": SeldonMessage, "description": "The model's ack."},
            **ERROR_RESPONSES,
        },
        openapi_extra=request_body_spec(Feedback),
        summary=(
            "Feedback, forwarded to the version that answered (response.meta.requestPath), "
            "else to every version serving /predict now"
        ),
        name="feedback",
    )
    app.add_api_route("/{axon}/v2/health/live", router.v2_live, summary="OIP v2: live")
    app.add_api_route(
        "/{axon}/v2/health/ready", router.v2_ready, summary="OIP v2: every model server ready"
    )
    app.add_api_route("/{axon}/v2/models/{name}", router.v2_model, summary="OIP v2: model metadata")
    app.add_api_route(
        "/{axon}/v2/models/{name}/ready", router.v2_model_ready, summary="OIP v2: model ready"
    )
    app.add_api_route(
        "/{axon}/v2/models/{name}/infer",
        router.v2_infer,
        methods=["POST"],
        response_model=None,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/InferenceRequest"}
                    }
                },
            }
        },
        summary="OIP v2: infer, routed by the deployer's weights",
    )
    app.add_api_route(
        "/{axon}/{path:path}",
        router.handle,
        methods=["POST"],
        response_model=None,
        responses={
            200: {"model": SeldonMessage, "description": "The answer."},
            404: {"model": ErrorResponse, "description": "No such axon or route."},
            502: {"model": ErrorResponse, "description": "A model server is unreachable."},
            **ERROR_RESPONSES,
        },
        openapi_extra=request_body_spec(SeldonMessage),
        summary="A deployer's route, e.g. /quickstart/predict",
    )
    return app


async def serve_router(
    source: TableSource,
    host: str,
    port: int,
    *,
    on_listening: Callable[[str], Awaitable[None] | None] | None = None,
    backend_timeout_s: float = 30.0,
    rand: Callable[[], float] | None = None,
) -> None:
    """Serve the router until stopped (what `ranvier run --role router` runs)."""
    app = create_router_app(source, timeout=backend_timeout_s, rand=rand)
    await serve_app(app, host, port, on_listening=on_listening)


def _main(argv: list[str] | None = None) -> None:
    """`python -m executors.serving.router TABLE.json --port N`: the router alone (bench, tests)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m executors.serving.router")
    parser.add_argument("table", type=Path, help="routing table JSON file (followed live)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between file checks")
    parser.add_argument("--seed", type=int, default=None, help="seed the weighted choice")
    args = parser.parse_args(argv)

    def announce(url: str) -> None:
        print(f"ranvier: listening on {url}", flush=True)

    source = FileTableSource(args.table, interval=args.interval)
    rand = random.Random(args.seed).random
    run_loop(serve_router(source, args.host, args.port, on_listening=announce, rand=rand))


if __name__ == "__main__":
    _main()
