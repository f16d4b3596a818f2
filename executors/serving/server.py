"""The model server: a user's class behind Seldon-style HTTP, as Myelin deploys it.

Users write a plain class (`predict(X, feature_names)`, optionally `send_feedback(features,
feature_names, reward, truth)`, `tags()`, `metrics()`) and never touch HTTP. The class is
loaded once (`loading.py`), before the port opens, so `GET /health` answering 200 means
"loaded". `predict` runs in a worker thread because it may be slow (a GPT-2 `generate` takes
seconds) and must not stall the event loop; an `async def predict` is awaited directly. A class
that raises gets a 500 with the reason and the server keeps serving; a malformed request gets a
400.

The server stays bounded under hostile load (`limits.py`): bodies above its limit get 413
unread, at most `max_in_flight` requests are worked on at once (503 + `Retry-After` beyond),
and a request that outlives its timeout gets 504. Besides its own paths it answers Seldon's
`/api/v1.0/predictions|feedback` and the Open Inference Protocol v2 (`/v2/...`, `oip.py`).

Each app owns a `CollectorRegistry`, so `/metrics` shows this server's numbers only: requests,
feedback, reward sum, latency, and what the class reports through `executors.serving.sdk`.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from executors.serving import oip, protocol, sdk
from executors.serving.limits import (
    ENV_MAX_BODY_BYTES,
    ENV_MAX_IN_FLIGHT,
    ENV_TIMEOUT,
    RETRY_AFTER_S,
    BodyLimit,
    Limits,
    body_too_large,
)
from executors.serving.protocol import (
    ErrorResponse,
    Feedback,
    Meta,
    ProtocolError,
    SeldonMessage,
)
from executors.serving.responses import (
    V2_INFER_SPEC,
    add_message_route,
    error_response,
    install_openapi,
    json_response,
    v2_error_response,
)

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


class _ModelMetrics:
    """The server's own Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        names = [*sdk.LABELS]
        self.labels = labels
        self.requests = Counter(
            "ranvier_model_requests",
            "Requests answered, by endpoint and HTTP code.",
            [*names, "endpoint", "code"],
            registry=registry,
        )
        self.feedback = Counter(
            "ranvier_model_feedback", "Feedback messages received.", names, registry=registry
        )
        self.reward = Gauge(
            "ranvier_model_feedback_reward_sum",
            "Sum of the rewards received (a gauge: rewards may be negative).",
            names,
            registry=registry,
        )
        self.latency = Histogram(
            "ranvier_model_predict_seconds",
            "Time spent in the model's predict().",
            names,
            registry=registry,
        )

    def count(self, endpoint: str, code: int) -> None:
        self.requests.labels(**self.labels, endpoint=endpoint, code=str(code)).inc()


def _apply_user_metrics(sink: sdk.MetricSink, reported: Any) -> list[protocol.Metric]:
    """Record what a class's `metrics()` returned (Seldon's list of {type, key, value})."""
    if not reported:
        return []
    out = [protocol.Metric.model_validate(item) for item in reported]
    for metric in out:
        if metric.type == "COUNTER":
            sink.counter(metric.key, metric.value)
        else:
            sink.gauge(metric.key, metric.value)
    return out


_THREADS: contextvars.ContextVar[list[asyncio.Future[Any]] | None] = contextvars.ContextVar(
    "ranvier_request_threads", default=None
)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a worker thread's error as seen (the caller may have stopped waiting for it)."""
    if not future.cancelled():
        future.exception()


class ModelService:
    """One loaded model: calls it off the event loop and keeps its metrics."""

    def __init__(
        self,
        model: object,
        *,
        name: str,
        version: str,
        labels: dict[str, str] | None,
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.limits = limits or Limits()
        self.in_flight = 0
        self.registry = CollectorRegistry(auto_describe=True)
        values = labels if labels is not None else sdk.default_labels()
        self.labels = {**values, "model": values.get("model") or name}
        self.sink = sdk.MetricSink(self.registry, self.labels)
        sdk.install(self.sink)
        self.stats = _ModelMetrics(self.registry, self.labels)
        self._predict: Callable[..., Any] = model.predict  # type: ignore[attr-defined]  # checked on load
        self._send_feedback: Callable[..., Any] | None = getattr(model, "send_feedback", None)
        self._tags: Callable[[], Any] | None = getattr(model, "tags", None)
        self._metrics: Callable[[], Any] | None = getattr(model, "metrics", None)
        self._is_async = inspect.iscoroutinefunction(self._predict)
        self._in_flight_gauge = Gauge(
            "ranvier_model_in_flight",
            "Requests being worked on now (bounded by the server's slots).",
            [*sdk.LABELS],
            registry=self.registry,
        ).labels(**self.labels)

    async def guarded(
        self,
        endpoint: str,
        work: Callable[[], Coroutine[Any, Any, Response]],
        error: Callable[[int, str], Response] = error_response,
    ) -> Response:
        """Run `work` in a free slot within the timeout; 503 when every slot is busy, 504 late.

        The slot is taken before the body is read, so a flood is refused without reading it,
        and given back only when the work has really ended: a synchronous `predict` that
        overruns its timeout keeps its worker thread (threads cannot be stopped) and its slot
        until it returns, so stuck calls never pile up beyond the slots.
        """
        limits = self.limits
        if self.full:
            return self.refuse(endpoint, error)
        self.in_flight += 1
        self._in_flight_gauge.inc()
        threads: list[asyncio.Future[Any]] = []
        context = contextvars.copy_context()
        context.run(_THREADS.set, threads)
        task = asyncio.get_running_loop().create_task(work(), context=context)
        task.add_done_callback(lambda _: self._release_after(threads))
        try:
            async with asyncio.timeout(limits.timeout_s):
                return await asyncio.shield(task)
        except TimeoutError:
            task.cancel()  # an async predict stops here; a thread finishes first (see above)
            self.stats.count(endpoint, 504)
            log.warning("model.timed_out", model=self.name, timeout_s=limits.timeout_s)
            return error(
                504,
                f"model {self.name!r} did not answer within {limits.timeout_s:g} s (the "
                f"server's limit is {ENV_TIMEOUT} or --timeout)",
            )

    @property
    def full(self) -> bool:
        """Every slot is taken."""
        return self.in_flight >= self.limits.max_in_flight

    def refuse(
        self, endpoint: str, error: Callable[[int, str], Response] = error_response
    ) -> Response:
        """503 with `Retry-After`: every slot is busy."""
        self.stats.count(endpoint, 503)
        response = error(
            503,
            f"all {self.limits.max_in_flight} request slots of model {self.name!r} are busy; "
            f"retry after {RETRY_AFTER_S} s (the server's limit is {ENV_MAX_IN_FLIGHT} "
            "or --max-in-flight)",
        )
        response.headers["retry-after"] = str(RETRY_AFTER_S)
        return response

    def _release_after(self, threads: list[asyncio.Future[Any]]) -> None:
        """Give the slot back once the request's worker threads have all returned."""
        for thread in threads:
            if not thread.done():
                thread.add_done_callback(lambda _: self._release_after(threads))
                return
        self.in_flight -= 1
        self._in_flight_gauge.dec()

    def meta(self, puid: str | None) -> Meta:
        """The `meta` of an answer: tags, reported metrics, who answered."""
        reported = _apply_user_metrics(self.sink, self._metrics()) if self._metrics else []
        tag_values = protocol.to_plain(self._tags()) if self._tags else {}
        return Meta(
            puid=puid,
            tags=tag_values if isinstance(tag_values, dict) else {"tags": tag_values},
            metrics=reported,
            model_name=self.name,
            model_version=self.version or None,
            request_path={self.name: self.version},
        )

    def _timed_predict(self, x: Any, names: list[str]) -> Any:
        """A synchronous predict(), its time observed (runs in a worker thread)."""
        started = time.perf_counter()
        output = self._predict(x, names)
        self.stats.latency.labels(**self.labels).observe(time.perf_counter() - started)
        return output

    async def _awaited_predict(self, x: Any, names: list[str]) -> Any:
        """An `async def predict()`, awaited on the loop, its time observed."""
        started = time.perf_counter()
        output = await self._predict(x, names)
        self.stats.latency.labels(**self.labels).observe(time.perf_counter() - started)
        return output

    def _predict_and_answer(
        self, x: Any, names: list[str], form: protocol.Form, puid: str | None
    ) -> dict[str, Any]:
        """predict() and the answer's meta in one worker-thread hop."""
        return self._answer(self._timed_predict(x, names), form, puid)

    def _answer(self, output: Any, form: protocol.Form, puid: str | None) -> dict[str, Any]:
        return protocol.answer(output, form, meta=self.meta(puid))

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        token = sdk.bind(self.sink)
        try:
            call = asyncio.ensure_future(run_in_threadpool(func, *args))
        finally:
            sdk.unbind(token)
        call.add_done_callback(_retrieve)
        threads = _THREADS.get()
        if threads is not None:
            threads.append(call)  # the request's slot is held until this thread returns
        # shielded: a request cancelled at its timeout stops waiting, the thread runs on
        return await asyncio.shield(call)

    async def predict(self, request: Request) -> Response:
        """POST /predict (and Seldon's /api/v1.0/predictions)."""
        return await self.guarded("predict", lambda: self._predict_now(request))

    async def _parsed(
        self,
        endpoint: str,
        request: Request,
        parse: Callable[[bytes, str], _T],
        error: Callable[[int, str], Response] = error_response,
    ) -> _T | Response:
        """The request's body read by `parse`, or a 400 (counted) saying what is wrong."""
        try:
            return parse(await request.body(), request.headers.get("content-type", ""))
        except ProtocolError as exc:
            self.stats.count(endpoint, 400)
            return error(400, str(exc))

    async def _predict_now(self, request: Request) -> Response:
        message = await self._parsed("predict", request, protocol.parse_message)
        if isinstance(message, Response):
            return message
        x, names = protocol.features(message)
        puid = message.meta.puid if message.meta else None
        try:
            if self._is_async:
                output = await self._awaited_predict(x, names)
                body = await self._in_thread(self._answer, output, message.form(), puid)
            else:
                body = await self._in_thread(
                    self._predict_and_answer, x, names, message.form(), puid
                )
            response = json_response(body)
        except Exception as exc:
            log.exception("model.predict_failed", model=self.name, version=self.version)
            self.stats.count("predict", 500)
            return error_response(500, f"predict failed: {type(exc).__name__}: {exc}")
        self.stats.count("predict", 200)
        return response

    async def feedback(self, request: Request) -> Response:
        """POST /send-feedback (and Seldon's /api/v1.0/feedback)."""
        return await self.guarded("send-feedback", lambda: self._feedback_now(request))

    async def _feedback_now(self, request: Request) -> Response:
        feedback = await self._parsed("send-feedback", request, protocol.parse_feedback)
        if isinstance(feedback, Response):
            return feedback
        self.stats.feedback.labels(**self.labels).inc()
        if feedback.reward is not None:
            self.stats.reward.labels(**self.labels).inc(feedback.reward)
        result: Any = None
        if self._send_feedback is not None:
            x, names = protocol.features(feedback.request) if feedback.request else (None, [])
            truth = protocol.features(feedback.truth)[0] if feedback.truth else None
            try:
                result = await self._in_thread(
                    self._send_feedback, x, names, feedback.reward, truth
                )
                response = json_response(
                    protocol.answer(result if result is not None else [], "ndarray")
                )
            except Exception as exc:
                log.exception("model.feedback_failed", model=self.name, version=self.version)
                self.stats.count("send-feedback", 500)
                return error_response(500, f"send_feedback failed: {type(exc).__name__}: {exc}")
        else:
            response = json_response(protocol.answer([], "ndarray"))
        self.stats.count("send-feedback", 200)
        return response

    # -- Open Inference Protocol v2 --------------------------------------------------------

    def _v2_unknown(self, name: str, version: str | None) -> Response | None:
        """404 for a model name (or version) this server does not serve, else None."""
        if name != self.name:
            return v2_error_response(
                404, f"no model {name!r} on this server; it serves {self.name!r}"
            )
        if version is not None and version != self.version:
            return v2_error_response(
                404, f"model {name!r} has no version {version!r}; it serves {self.version!r}"
            )
        return None

    async def v2_infer(self, request: Request) -> Response:
        """POST /v2/models/{name}[/versions/{version}]/infer."""
        unknown = self._v2_unknown(request.path_params["name"], request.path_params.get("version"))
        if unknown is not None:
            return unknown
        return await self.guarded(
            "v2-infer", lambda: self._v2_infer_now(request), error=v2_error_response
        )

    async def _v2_infer_now(self, request: Request) -> Response:
        def parse(body: bytes, content_type: str) -> tuple[oip.InferenceRequest, Any, list[str]]:
            message = oip.parse_request(body, content_type)
            return (message, *oip.features(message))

        parsed = await self._parsed("v2-infer", request, parse, v2_error_response)
        if isinstance(parsed, Response):
            return parsed
        message, x, names = parsed
        try:
            if self._is_async:
                output = await self._awaited_predict(x, names)
            else:
                output = await self._in_thread(self._timed_predict, x, names)
        except Exception as exc:
            log.exception("model.predict_failed", model=self.name, version=self.version)
            self.stats.count("v2-infer", 500)
            return v2_error_response(500, f"predict failed: {type(exc).__name__}: {exc}")
        try:
            body = oip.answer(output, message, model_name=self.name, model_version=self.version)
            response = json_response(body)
        except (TypeError, ValueError) as exc:
            self.stats.count("v2-infer", 500)
            return v2_error_response(500, f"the model's output is not a v2 tensor: {exc}")
        self.stats.count("v2-infer", 200)
        return response

    async def v2_live(self) -> dict[str, bool]:
        """GET /v2/health/live."""
        return {"live": True}

    async def v2_ready(self) -> dict[str, bool]:
        """GET /v2/health/ready: the class is loaded before the port opens."""
        return {"ready": True}

    async def v2_server(self) -> dict[str, Any]:
        """GET /v2: server metadata."""
        return {"name": "ranvier", "version": self.version or "0", "extensions": []}

    async def v2_model(self, request: Request) -> Response:
        """GET /v2/models/{name}[/versions/{version}]: model metadata."""
        name = request.path_params["name"]
        unknown = self._v2_unknown(name, request.path_params.get("version"))
        return unknown or json_response(oip.model_metadata(self.name, self.version))

    async def v2_model_ready(self, request: Request) -> Response:
        """GET /v2/models/{name}[/versions/{version}]/ready."""
        name = request.path_params["name"]
        unknown = self._v2_unknown(name, request.path_params.get("version"))
        return unknown or json_response({"name": self.name, "ready": True})

    async def health(self) -> dict[str, str]:
        """GET /health: answering at all means loaded."""
        return {"status": "ok", "model": self.name, "version": self.version}

    async def metrics(self) -> Response:
        """GET /metrics."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


_WORK_PATHS = {
    "/predict": "predict",
    "/api/v1.0/predictions": "predict",
    "/send-feedback": "send-feedback",
    "/api/v1.0/feedback": "send-feedback",
}


class _SlotGate:
    """ASGI middleware: while every slot is busy, refuse work before FastAPI sees it.

    Under a flood most requests are refusals, and answering them here costs a fraction of a
    routed request, which leaves the CPU to the requests in the slots. `guarded` still makes
    the decision that counts (a slot may fill between this check and the endpoint).
    """

    def __init__(self, app: ASGIApp, service: ModelService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.service.full:
            path = str(scope["path"])
            endpoint = _WORK_PATHS.get(path)
            if endpoint is not None:
                await self.service.refuse(endpoint)(scope, receive, send)
                return
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                await self.service.refuse("v2-infer", v2_error_response)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_model_app(
    model: object,
    *,
    name: str,
    version: str = "",
    labels: dict[str, str] | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The HTTP app serving `model` (already constructed); metrics in its own registry."""
    limits = limits or Limits()
    service = ModelService(model, name=name, version=version, labels=labels, limits=limits)
    app = FastAPI(
        title="ranvier model server",
        version=version or "0",
        description=f"Seldon-style REST API around the model class {name}.",
        separate_input_output_schemas=False,
    )
    install_openapi(app, [SeldonMessage, Feedback, ErrorResponse, oip.InferenceRequest])
    add_seldon_routes(app, service)
    app.add_api_route("/health", service.health, summary="Health: 200 once the model is loaded")
    app.add_api_route(
        "/metrics", service.metrics, summary="Prometheus metrics", response_class=Response
    )
    add_v2_routes(app, service)
    _bound(app, service, limits)
    return app


def add_seldon_routes(app: FastAPI, service: ModelService) -> None:
    """The Seldon-style endpoints of a model server, and Seldon's v1 paths as aliases."""
    add_message_route(
        app,
        "/predict",
        service.predict,
        body=SeldonMessage,
        answer="The answer.",
        summary="Predict",
    )
    add_message_route(
        app,
        "/send-feedback",
        service.feedback,
        body=Feedback,
        answer="Acknowledged.",
        summary="Send feedback",
    )
    for path, endpoint, body, of in (
        ("/api/v1.0/predictions", service.predict, SeldonMessage, "/predict"),
        ("/api/v1.0/feedback", service.feedback, Feedback, "/send-feedback"),
    ):
        add_message_route(app, path, endpoint, body=body, summary=f"Seldon v1 alias of {of}")


def add_v2_routes(app: FastAPI, service: ModelService) -> None:
    """The Open Inference Protocol v2 endpoints of a model server."""
    app.add_api_route("/v2", service.v2_server, summary="OIP v2: server metadata")
    app.add_api_route("/v2/health/live", service.v2_live, summary="OIP v2: live")
    app.add_api_route("/v2/health/ready", service.v2_ready, summary="OIP v2: ready")
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(
            prefix, service.v2_model, response_model=None, summary="OIP v2: model metadata"
        )
        app.add_api_route(
            prefix + "/ready",
            service.v2_model_ready,
            response_model=None,
            summary="OIP v2: model ready",
        )
        app.add_api_route(
            prefix + "/infer",
            service.v2_infer,
            methods=["POST"],
            response_model=None,
            openapi_extra=V2_INFER_SPEC,
            summary="OIP v2: infer",
        )


def _bound(app: FastAPI, service: ModelService, limits: Limits) -> None:
    """The limits around the endpoints: bodies above the maximum, work beyond the slots."""
    body_hint = f"raise the model server's {ENV_MAX_BODY_BYTES} (or --max-body-bytes)"

    async def too_large(request: Request, exc: Exception) -> Response:
        # a streamed (chunked) body that crossed the limit while it was being read
        return error_response(413, body_too_large(limits.max_body_bytes, body_hint))

    app.add_exception_handler(413, too_large)
    app.add_middleware(_SlotGate, service=service)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, hint=body_hint)
