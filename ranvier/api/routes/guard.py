"""The token guard and the error answers, installed on an app by `create_app`.

A bearer token guards every write; when the API is public it guards every request except the
console's files and the health probes, which hold no data.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from events.bus import BusError
from events.errors import RanvierError
from ranvier.api.routes.common import problem
from ranvier.api.routes.console import STATIC
from ranvier.app import NoRestTriggerError, NotFoundError

OPEN_PATHS: Final = ("/", "/healthz", "/readyz", "/favicon.ico")
READS: Final = ("GET", "HEAD", "OPTIONS")
TOKEN_HINT: Final = (
    "send `Authorization: Bearer $RANVIER_API_TOKEN` (ranvier up writes a "
    "generated one to <state-dir>/api.token)"
)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _token_ok(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(f"{STATIC}/")


def add_token_guard(app: FastAPI, *, token: str, public: bool) -> None:
    """Refuse unauthenticated writes (and, when `public`, unauthenticated reads) with 401."""

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        needs = request.method not in READS or (public and not _open_path(request.url.path))
        if needs and not _token_ok(_bearer(request), token):
            what = "writes" if request.method not in READS else "requests to a non-loopback API"
            return problem(401, f"{what} need the API token", hint=TOKEN_HINT)
        return await call_next(request)


def status_of(exc: RanvierError) -> int:
    """The HTTP status of a refused request: an `ApiError`'s own, else by the error's kind."""
    status = getattr(exc, "status", None)
    if status is not None:
        return int(status)
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, NoRestTriggerError):
        return 409
    if isinstance(exc, BusError):
        return 503
    return 400


def add_error_handlers(app: FastAPI) -> None:
    """Answer every `RanvierError` as a problem body with its status, message and hint."""

    @app.exception_handler(RanvierError)
    async def user_error(request: Request, exc: RanvierError) -> JSONResponse:
        return problem(status_of(exc), exc.message, exc.hint)
