"""Feedback through the router: to the versions that answered, else to those serving now.

Feedback that carries the router's answer goes to the versions named in its
`meta.requestPath`. Feedback without one (Myelin's and Seldon's clients send `request` +
`reward`) goes to every version serving the `/predict` route next to the feedback path now.
Each target gets the caller's bytes; the worst of their answers is the router's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import structlog
from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import Headers

from executors.serving import protocol
from executors.serving.limits import ROUTER_BODY_HINT, BodyTooLarge, body_too_large, read_body
from executors.serving.protocol import Feedback, ProtocolError
from executors.serving.responses import error_response
from executors.serving.routing import (
    DEFAULT_NODE_PATH,
    FEEDBACK_PATH,
    Backend,
    CompiledTable,
    DeployerTable,
    FeedbackError,
    feedback_backends,
    feedback_url,
    serving_feedback_backends,
)

if TYPE_CHECKING:
    from executors.serving.router.routes import Router

log = structlog.get_logger(__name__)


async def forward(
    router: Router, compiled: CompiledTable, axon: str, path: str, request: Request
) -> Response:
    """POST `path` (`[/<deployer>]/send-feedback`) of `axon`: forwarded, the worst answer kept."""
    deployers = compiled.deployers.get(axon)
    if not deployers:
        return error_response(404, f"no axon {axon!r} is deployed on this router")
    prefix = path.removesuffix(FEEDBACK_PATH).strip("/")
    if prefix:
        deployers = [d for d in deployers if d.name == prefix]
    try:
        body = await read_body(request)
    except BodyTooLarge:
        reason = body_too_large(router.max_body_bytes, ROUTER_BODY_HINT)
        return _counted_error(router, axon, 413, reason)
    ctype = request.headers.get("content-type", "application/json")
    try:
        feedback = protocol.parse_feedback(body, ctype)
    except ProtocolError as exc:
        return error_response(400, str(exc))
    try:
        targets = _targets(
            compiled, deployers, axon, path, feedback=feedback, headers=request.headers
        )
    except FeedbackError as exc:
        return _counted_error(router, axon, exc.status, str(exc))
    return await _send(router, axon, targets, body, ctype)


def _targets(
    compiled: CompiledTable,
    deployers: list[DeployerTable],
    axon: str,
    path: str,
    *,
    feedback: Feedback,
    headers: Headers,
) -> list[Backend]:
    """Where `feedback` goes; `FeedbackError` when nowhere."""
    meta = feedback.response.meta if feedback.response is not None else None
    if meta is not None and meta.request_path:
        targets = feedback_backends(deployers, meta.request_path)
        if not targets:
            raise FeedbackError(
                "no version named in response.meta.requestPath is routed any more: "
                + ", ".join(f"{k}={v}" for k, v in sorted(meta.request_path.items())),
                status=404,
            )
        by = "requestPath"
    else:
        predict = path.removesuffix(FEEDBACK_PATH) + DEFAULT_NODE_PATH
        route = compiled.routes.get((axon, predict))
        if route is None:
            raise FeedbackError(
                f"feedback without response.meta.requestPath goes to the versions serving "
                f"{predict}, and axon {axon!r} has no route {predict} on this router; "
                "send the router's answer as 'response'",
                status=400,
            )
        targets = serving_feedback_backends(route, headers)
        by = "weights"
    log.debug("router.feedback_forwarded", axon=axon, by=by, backends=[b.key for b in targets])
    return targets


async def _send(
    router: Router, axon: str, targets: list[Backend], body: bytes, ctype: str
) -> Response:
    """The feedback posted to every target at once; the worst answer is the router's."""
    try:
        responses = await asyncio.gather(
            *(router.calls.post(feedback_url(b), body, ctype) for b in targets)
        )
    except httpx.HTTPError as exc:
        return error_response(502, f"forwarding feedback failed: {exc!r}")
    worst = max(responses, key=lambda r: r.status)
    router.stats.requests.labels(axon, FEEDBACK_PATH, str(worst.status)).inc()
    return Response(worst.content, status_code=worst.status, media_type=worst.content_type)


def _counted_error(router: Router, axon: str, status: int, reason: str) -> Response:
    router.stats.requests.labels(axon, FEEDBACK_PATH, str(status)).inc()
    return error_response(status, reason)
