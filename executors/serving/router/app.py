"""The router's ASGI app: middleware, documented routes, start-up and shutdown; its server.

Every request is bounded before it costs much (`limits.py`): with `RANVIER_ROUTER_TOKEN` set
every POST needs the bearer token, and a body above the router's limit gets 413 without being
read. POSTs to a route in the table then take a fast path past FastAPI's routing; everything
else (feedback, health, OIP v2, OpenAPI, unknown routes) goes through the documented routes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from executors.serving import oip
from executors.serving.hosting import serve_app
from executors.serving.limits import ROUTER_BODY_HINT, BearerToken, BodyLimit, router_token
from executors.serving.protocol import ErrorResponse, Feedback, SeldonMessage
from executors.serving.responses import add_message_route, install_openapi
from executors.serving.router.routes import Router
from executors.serving.router.sources import TableSource
from executors.serving.router.v2 import add_v2_routes


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
    app = FastAPI(
        title="ranvier router",
        version="1",
        description="One stable URL per Axon deployer: /<axon>/<route path>.",
        lifespan=_lifespan(router),
        separate_input_output_schemas=False,
    )
    app.state.router = router
    _add_middleware(app, router, token if token is not None else router_token())
    install_openapi(app, [SeldonMessage, Feedback, ErrorResponse, oip.InferenceRequest])
    _add_health_routes(app, router)
    _add_feedback_route(app, router)
    add_v2_routes(app, router)
    _add_route_endpoint(app, router)  # last: it matches every other POST path
    return app


def _lifespan(router: Router) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The router runs (its table loaded and followed, its client open) while the app does."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    return lifespan


def _add_middleware(app: FastAPI, router: Router, token: str | None) -> None:
    """Outermost last: the token is checked first, then the body's size, then the fast path."""
    app.add_middleware(_FastPath, router=router)
    app.add_middleware(BodyLimit, max_bytes=router.max_body_bytes, hint=ROUTER_BODY_HINT)
    if token:
        app.add_middleware(BearerToken, token=token)


def _add_health_routes(app: FastAPI, router: Router) -> None:
    app.add_api_route("/health", router.health, summary="200 once a routing table is loaded")
    app.add_api_route(
        "/metrics", router.metrics, summary="Prometheus metrics", response_class=Response
    )
    app.add_api_route(
        "/{axon}/health", router.axon_health, summary="Health of an axon's model servers"
    )


def _add_feedback_route(app: FastAPI, router: Router) -> None:
    add_message_route(
        app,
        "/{axon}/send-feedback",
        router.feedback,
        body=Feedback,
        answer="The model's ack.",
        summary=(
            "Feedback, forwarded to the version that answered (response.meta.requestPath), "
            "else to every version serving /predict now"
        ),
        name="feedback",
    )


def _add_route_endpoint(app: FastAPI, router: Router) -> None:
    """`/<axon>/<path>`: every deployer's routes (what `_FastPath` does not answer first)."""
    add_message_route(
        app,
        "/{axon}/{path:path}",
        router.handle,
        body=SeldonMessage,
        answer="The answer.",
        errors={
            404: {"model": ErrorResponse, "description": "No such axon or route."},
            502: {"model": ErrorResponse, "description": "A model server is unreachable."},
        },
        summary="A deployer's route, e.g. /quickstart/predict",
    )


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
