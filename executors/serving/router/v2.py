"""The router's Open Inference Protocol v2 endpoints, under `/<axon>/v2/...`.

An infer request for a model goes to one of its versions by the deployer's weights, as
`/predict` does, and its shadows get a copy. Metadata and readiness speak for the versions
taking traffic now. Errors are the protocol's own `{"error": reason}`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from executors.serving import oip
from executors.serving.limits import ROUTER_BODY_HINT, BodyTooLarge, body_too_large, read_body
from executors.serving.responses import V2_INFER_SPEC, json_response, v2_error_response
from executors.serving.router.calls import passed_on
from executors.serving.routing import (
    Backend,
    DeployerTable,
    ModelRoute,
    RoutingError,
    choose,
    select_backends,
    shadows,
)

if TYPE_CHECKING:
    from executors.serving.router.routes import Router

_ModelAnswer = Callable[[Request, DeployerTable, ModelRoute], Awaitable[Response]]


def _infer_url(backend: Backend) -> str:
    return backend.url.rstrip("/") + f"/v2/models/{backend.name}/infer"


def _routed(model: ModelRoute) -> list[Backend]:
    """The versions of `model` taking traffic (no shadows, weight above 0)."""
    return [b for b in model.backends if not b.shadow and b.weight > 0]


class V2Endpoints:
    """OIP v2 for every axon of a router's table (method names are the routes' names)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def _model(self, request: Request) -> tuple[DeployerTable, ModelRoute] | Response:
        """The deployer model a v2 path names (the first deployer of the axon serving it)."""
        axon = request.path_params["axon"]
        name = request.path_params["name"]
        deployers = self.router.deployers_of(axon)
        if not deployers:
            return v2_error_response(404, f"no axon {axon!r} is deployed on this router")
        for deployer in deployers:
            for model in deployer.models:
                if model.name == name:
                    return deployer, model
        known = ", ".join(sorted({m.name for d in deployers for m in d.models}))
        return v2_error_response(404, f"axon {axon!r} has no model {name!r}; it serves {known}")

    async def _ready(self, urls: list[str]) -> bool:
        return bool(urls) and all((await self.router.calls.healthy(urls)).values())

    async def _for_model(self, request: Request, answer: _ModelAnswer) -> Response:
        """`answer` for the deployer model a v2 path names, else the protocol's 404."""
        found = self._model(request)
        if isinstance(found, Response):
            return found
        return await answer(request, *found)

    async def v2_infer(self, request: Request) -> Response:
        """POST /<axon>/v2/models/<model>/infer: one version by weight, shadows get a copy."""
        return await self._for_model(request, self._infer)

    async def v2_model(self, request: Request) -> Response:
        """GET /<axon>/v2/models/<model>: its metadata (the versions taking traffic now)."""
        return await self._for_model(request, self._metadata)

    async def v2_model_ready(self, request: Request) -> Response:
        """GET /<axon>/v2/models/<model>/ready: 200 when every version taking traffic is."""
        return await self._for_model(request, self._model_ready)

    async def _infer(
        self, request: Request, deployer: DeployerTable, model: ModelRoute
    ) -> Response:
        started = time.perf_counter()
        try:
            body = await read_body(request)
        except BodyTooLarge:
            return v2_error_response(
                413, body_too_large(self.router.max_body_bytes, ROUTER_BODY_HINT)
            )
        ctype = request.headers.get("content-type", "application/json")
        backends = select_backends(model, request.headers)
        try:
            backend = choose(backends, self.router.rand)
        except RoutingError as exc:
            return v2_error_response(503, str(exc))
        for shadow in shadows(backends):
            self.router.calls.mirror(
                deployer.axon, model.name, shadow, _infer_url(shadow), body=body, ctype=ctype
            )
        response = await self._call(deployer.axon, model, backend, body, ctype)
        self.router.stats.latency.labels(deployer.axon).observe(time.perf_counter() - started)
        self.router.stats.requests.labels(
            deployer.axon, "/v2/infer", str(response.status_code)
        ).inc()
        return response

    async def _call(
        self, axon: str, model: ModelRoute, backend: Backend, body: bytes, ctype: str
    ) -> Response:
        """The chosen version's answer, passed on (504 late, 502 unreachable)."""
        url = _infer_url(backend)
        try:
            answer = await self.router.calls.post(url, body, ctype, backend.timeout)
        except httpx.TimeoutException as exc:
            return v2_error_response(504, f"model {model.name!r} at {url} timed out: {exc!r}")
        except httpx.HTTPError as exc:
            return v2_error_response(502, f"model {model.name!r} at {url} is unreachable: {exc!r}")
        self.router.stats.backend.labels(
            axon, model.name, backend.name, backend.version, str(answer.status)
        ).inc()
        return passed_on(answer)

    async def _metadata(
        self, request: Request, deployer: DeployerTable, model: ModelRoute
    ) -> Response:
        metadata = oip.model_metadata(model.name, "")
        metadata["versions"] = [b.version for b in _routed(model)]
        return json_response(metadata)

    async def _model_ready(
        self, request: Request, deployer: DeployerTable, model: ModelRoute
    ) -> Response:
        urls = [b.url.rstrip("/") + f"/v2/models/{b.name}/ready" for b in _routed(model)]
        ready = await self._ready(urls)
        return json_response({"name": model.name, "ready": ready}, 200 if ready else 503)

    async def v2_live(self) -> Response:
        """GET /<axon>/v2/health/live: the router answers."""
        return json_response({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        """GET /<axon>/v2/health/ready: 200 when every model server of the axon is ready."""
        axon = request.path_params["axon"]
        deployers = self.router.deployers_of(axon)
        if not deployers:
            return v2_error_response(404, f"no axon {axon!r} is deployed on this router")
        urls = sorted(
            {
                b.url.rstrip("/") + "/v2/health/ready"
                for d in deployers
                for m in d.models
                for b in _routed(m)
            }
        )
        ready = await self._ready(urls)
        return json_response({"ready": ready}, 200 if ready else 503)


def add_v2_routes(app: FastAPI, router: Router) -> None:
    """The OIP v2 endpoints of the router, under each axon's prefix."""
    v2 = V2Endpoints(router)
    app.add_api_route("/{axon}/v2/health/live", v2.v2_live, summary="OIP v2: live")
    app.add_api_route(
        "/{axon}/v2/health/ready", v2.v2_ready, summary="OIP v2: every model server ready"
    )
    app.add_api_route("/{axon}/v2/models/{name}", v2.v2_model, summary="OIP v2: model metadata")
    app.add_api_route(
        "/{axon}/v2/models/{name}/ready", v2.v2_model_ready, summary="OIP v2: model ready"
    )
    app.add_api_route(
        "/{axon}/v2/models/{name}/infer",
        v2.v2_infer,
        methods=["POST"],
        response_model=None,
        openapi_extra=V2_INFER_SPEC,
        summary="OIP v2: infer, routed by the deployer's weights",
    )
