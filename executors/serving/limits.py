"""Limits that keep a model server and the router bounded under hostile load.

A server that reads whatever it is sent grows without bound: one 50 MB prompt made a GPT-2
server grow by gigabytes while its caller waited. So every request body has a maximum size,
refused with 413 before it is read in full: a declared `Content-Length` above the limit is
answered at once without touching the body, and a body without one (chunked) is counted as it
streams in by Starlette's `RequestBodyLimitMiddleware`, which stops reading at the limit.
The model server also bounds the requests it works on at once (its slots, answered 503 with
`Retry-After` when all are busy, so a flood is refused cheaply instead of queued in memory) and
the time one request may take (504). The router may require a bearer token.

The values come from flags, else the environment (`RANVIER_MAX_BODY_BYTES`,
`RANVIER_MAX_IN_FLIGHT`, `RANVIER_PREDICT_TIMEOUT` for a model server; a deploy task's or a
deployer's `env` sets them per model), else the defaults below.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from events.errors import RanvierError
from executors.serving import protocol

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 32
DEFAULT_TIMEOUT_S = 25.0  # below the router's 30 s wait, so the model's own 504 says why
RETRY_AFTER_S = 1

ENV_MAX_BODY_BYTES = "RANVIER_MAX_BODY_BYTES"
ENV_MAX_IN_FLIGHT = "RANVIER_MAX_IN_FLIGHT"
ENV_TIMEOUT = "RANVIER_PREDICT_TIMEOUT"
ENV_ROUTER_MAX_BODY_BYTES = "RANVIER_ROUTER_MAX_BODY_BYTES"
ENV_ROUTER_TOKEN = "RANVIER_ROUTER_TOKEN"
ROUTER_BODY_HINT = f"raise the router's {ENV_ROUTER_MAX_BODY_BYTES}"


class LimitError(RanvierError, ValueError):
    """A limit setting that is not a valid value."""


@dataclass(frozen=True)
class Limits:
    """How much one model server accepts: body size, requests at once, seconds per request."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise LimitError(
                f"maximum body size {self.max_body_bytes} is not positive",
                hint="give a number of bytes, e.g. 10485760 for 10 MB",
            )
        if self.max_in_flight < 1:
            raise LimitError(
                f"maximum requests in flight {self.max_in_flight} is not positive",
                hint="give at least 1",
            )
        if not self.timeout_s > 0:
            raise LimitError(f"timeout {self.timeout_s} s is not positive", hint="give seconds > 0")


def _env_number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise LimitError(
            f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number",
            hint=f"set {name} to a {'whole ' if kind is int else ''}number or unset it",
        ) from None


def limits_from(
    env: Mapping[str, str] | None = None,
    *,
    max_body_bytes: int | None = None,
    max_in_flight: int | None = None,
    timeout_s: float | None = None,
) -> Limits:
    """A model server's limits: the given values, else the environment's, else the defaults."""
    values = os.environ if env is None else env
    body = (
        max_body_bytes
        if max_body_bytes is not None
        else _env_number(values, ENV_MAX_BODY_BYTES, int)
    )
    slots = (
        max_in_flight if max_in_flight is not None else _env_number(values, ENV_MAX_IN_FLIGHT, int)
    )
    timeout = timeout_s if timeout_s is not None else _env_number(values, ENV_TIMEOUT, float)
    return Limits(
        max_body_bytes=int(body) if body is not None else DEFAULT_MAX_BODY_BYTES,
        max_in_flight=int(slots) if slots is not None else DEFAULT_MAX_IN_FLIGHT,
        timeout_s=float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S,
    )


def router_max_body_bytes(env: Mapping[str, str] | None = None) -> int:
    """The router's body limit: `RANVIER_ROUTER_MAX_BODY_BYTES`, else the default."""
    value = _env_number(os.environ if env is None else env, ENV_ROUTER_MAX_BODY_BYTES, int)
    limit = int(value) if value is not None else DEFAULT_MAX_BODY_BYTES
    if limit < 1:
        raise LimitError(
            f"{ENV_ROUTER_MAX_BODY_BYTES}={limit} is not positive", hint="give a number of bytes"
        )
    return limit


def router_token(env: Mapping[str, str] | None = None) -> str | None:
    """The bearer token the router requires, or None (`RANVIER_ROUTER_TOKEN`, empty = none)."""
    return (os.environ if env is None else env).get(ENV_ROUTER_TOKEN) or None


def _content_length(scope: Scope) -> int | None:
    raw = Headers(scope=scope).get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def body_too_large(max_bytes: int, hint: str, declared: int | None = None) -> str:
    """The reason of a 413 answer."""
    size = f" ({declared} bytes)" if declared is not None else ""
    return (
        f"the request body{size} is larger than this server accepts ({max_bytes} bytes); "
        f"send a smaller body, or {hint}"
    )


class BodyTooLarge(Exception):
    """A streamed body crossed the limit while it was read."""


async def read_body(request: Request) -> bytes:
    """The request's body, read up to the limit `BodyLimit` enforces (`BodyTooLarge` beyond)."""
    try:
        return await request.body()
    except HTTPException as exc:
        if exc.status_code == 413:
            raise BodyTooLarge from exc
        raise


class BodyLimit:
    """ASGI middleware: bodies above `max_bytes` get 413, never read in full.

    A declared length above the limit is refused before the app runs (the body is never
    read; the server closes the connection after answering). A body of unknown length is
    counted while it streams by Starlette's middleware, which raises at the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, hint: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.hint = hint
        self.counted = RequestBodyLimitMiddleware(app, max_body_size=max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = JSONResponse(
                protocol.error_body(413, body_too_large(self.max_bytes, self.hint, declared)),
                status_code=413,
                headers={"connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.counted(scope, receive, send)


class BearerToken:
    """ASGI middleware: POSTs need `Authorization: Bearer <token>` (compared in constant time).

    Reading answers stays open (health, metrics, model metadata): only requests that make a
    model work, or feed it rewards, carry the token.
    """

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            given = Headers(scope=scope).get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(
                    protocol.error_body(
                        401,
                        "this router requires a bearer token: send 'Authorization: Bearer "
                        f"<token>' with the value of {ENV_ROUTER_TOKEN}",
                    ),
                    status_code=401,
                    headers={"www-authenticate": 'Bearer realm="ranvier"', "connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
