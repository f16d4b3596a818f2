"""The HTTP API: FastAPI routes over the bus, the Rest webhook, and the console's files.

Every handler reads what it answers from the bus when it is asked (`axon_status`, the
decisions and events streams, the Axon store), through the same functions the CLI uses, so
the API and `ranvier get axon`, `explain`, `events tail` and `trigger` never disagree. Each
module holds the routes of one OpenAPI tag on an `APIRouter`; a route reads the bus through
the `BusDep` dependency (the app's `state.bus`).

Security: a bearer token (`RANVIER_API_TOKEN`) guards every write; when the API is not bound
to a loopback address it guards every request except the console's static files and the
health probes, which hold no data. Request bodies are limited to `MAX_BODY` bytes. Answers
carry no secrets: task runs' log paths stay on the server and env values are not returned.
"""

from __future__ import annotations

from fastapi import FastAPI

from events.bus import Bus
from ranvier.api.routes import axons, console, events, health, models, runs
from ranvier.api.routes.common import API, MAX_BODY, ApiError
from ranvier.api.routes.guard import add_error_handlers, add_token_guard

__all__ = ["API", "MAX_BODY", "ApiError", "create_app"]

ROUTERS = (health.router, axons.router, runs.router, models.router, events.router, console.router)


def create_app(bus: Bus, *, token: str, public: bool) -> FastAPI:
    """The API over `bus`. `token` guards writes (and, when `public`, every data request)."""
    if not token:
        raise ValueError("the API needs a token for its writes")
    app = FastAPI(
        title="ranvier",
        summary="Axons, runs, models, events and the Rest webhook, read from the bus.",
        version="1",
        docs_url="/docs",
        redoc_url=None,
        max_body_size=MAX_BODY,
    )
    app.state.bus = bus
    add_token_guard(app, token=token, public=public)
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    console.mount_static(app)
    return app
