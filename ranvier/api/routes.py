"""The HTTP API: FastAPI routes over the bus, the Rest webhook, and the console's files.

Every handler reads what it answers from the bus when it is asked (`axon_status`, the
decisions and events streams, the Axon store), through the same functions the CLI uses, so
the API and `ranvier get axon`, `explain`, `events tail` and `trigger` never disagree.

Security: a bearer token (`RANVIER_API_TOKEN`) guards every write; when the API is not bound
to a loopback address it guards every request except the console's static files and the
health probes, which hold no data. Request bodies are limited to `MAX_BODY` bytes. Answers
carry no secrets: task runs' log paths stay on the server and env values are not returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final

import structlog
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles

from events import model, subjects
from events.bus import OUTAGE_ERRORS, Bus, BusError
from events.errors import RanvierError
from ranvier.api import views
from ranvier.app import (
    NoRestTriggerError,
    NotFoundError,
    axon_status,
    task_runs,
    trigger_rest,
)
from ranvier.commands.events import events_filter, parse_when
from ranvier.commands.explain import decision_records, decisions_for
from sensors.axons import AxonStore, AxonStoreError, StoredAxon
from sensors.loader import MAX_BYTES, SpecError, load_axon_bytes

log = structlog.get_logger(__name__)

API: Final = "/api/v1"
MAX_BODY: Final = MAX_BYTES  # an Axon file's limit; a webhook payload must also fit NATS
MAX_EVENTS: Final = 1000
POLL: Final = 1.0
DEFAULT_WINDOW: Final = timedelta(hours=6)
OPEN_PATHS: Final = ("/", "/healthz", "/readyz", "/favicon.ico")
STATIC: Final = "/static"
READS: Final = ("GET", "HEAD", "OPTIONS")

Name = Annotated[str, PathParam(min_length=1, max_length=253, pattern=r"^[^\s/]+$")]


class ApiError(RanvierError):
    """A request the API refuses; `status` is its HTTP status."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def _problem(status: int, message: str, hint: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"detail": message}
    if hint:
        body["hint"] = hint
    return JSONResponse({**body, **extra}, status_code=status)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _token_ok(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


async def stored_axon(request: Request, namespace: Name, axon: Name) -> StoredAxon:
    """The Axon named in the path (deleted ones too), or 404."""
    stored = await AxonStore(request.app.state.bus).get(namespace, axon)
    if stored is None:
        raise NotFoundError(
            f"no Axon {namespace}/{axon} was submitted", hint=f"see GET {API}/axons"
        )
    return stored


Stored = Annotated[StoredAxon, Depends(stored_axon)]


def _open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(f"{STATIC}/")


# one closure per route over `bus`: the routes read as one list
def create_app(bus: Bus, *, token: str, public: bool) -> FastAPI:  # noqa: PLR0915
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

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Refuse unauthenticated writes (and, when public, unauthenticated reads)."""
        needs = request.method not in READS or (public and not _open_path(request.url.path))
        if needs and not _token_ok(_bearer(request), token):
            what = "writes" if request.method not in READS else "requests to a non-loopback API"
            return _problem(
                401,
                f"{what} need the API token",
                hint="send `Authorization: Bearer $RANVIER_API_TOKEN` (ranvier up writes a "
                "generated one to <state-dir>/api.token)",
            )
        return await call_next(request)

    @app.exception_handler(RanvierError)
    async def user_error(request: Request, exc: RanvierError) -> JSONResponse:
        status = getattr(exc, "status", None)
        if status is None:
            status = (
                404
                if isinstance(exc, NotFoundError)
                else 409
                if isinstance(exc, NoRestTriggerError)
                else 503
                if isinstance(exc, BusError)
                else 400
            )
        return _problem(status, exc.message, exc.hint)

    # -- health -------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "bus unreachable"}})
    async def readyz() -> JSONResponse:
        """The bus answers (the API can read what it serves)."""
        try:
            async with asyncio.timeout(2.0):
                await bus.stream_info(subjects.EVENTS_STREAM)
        except (TimeoutError, BusError, *OUTAGE_ERRORS) as exc:
            return _problem(503, f"the bus does not answer: {exc!r}")
        return JSONResponse({"status": "ready"})

    # -- Axons --------------------------------------------------------------------------------

    @app.get(f"{API}/axons", tags=["axons"])
    async def list_axons() -> list[dict[str, Any]]:
        """Every submitted Axon with its phase, last run and endpoint."""
        rows = []
        for stored in await AxonStore(bus).list():
            status = await axon_status(bus, stored)
            rows.append(views.axon_summary(status, model.format_time(stored.submitted)))
        return rows

    @app.post(
        f"{API}/axons",
        tags=["axons"],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/yaml": {"schema": {"type": "string"}}},
            }
        },
        responses={422: {"description": "the Axon is invalid: the validator's errors"}},
    )
    async def submit_axon(request: Request) -> JSONResponse:
        """Submit an Axon file (YAML body): the same checks and errors as `ranvier validate`."""
        data = await request.body()
        try:
            axon = load_axon_bytes(data, "request")
        except SpecError as exc:
            errors = [
                {
                    "line": i.line,
                    "column": i.column,
                    "path": i.path,
                    "message": i.message,
                    "text": str(i),
                }
                for i in exc.issues
            ]
            return _problem(422, exc.message, errors=errors)
        stored = await AxonStore(bus).submit(axon)
        return JSONResponse(
            {"name": stored.name, "namespace": stored.namespace, "generation": stored.generation},
            status_code=201,
        )

    @app.get(f"{API}/axons/{{namespace}}/{{axon}}", tags=["axons"])
    async def get_axon(stored: Stored) -> dict[str, Any]:
        """An Axon in Myelin's shape: sensors -> sensor runs -> task runs, plus models and
        deployments."""
        return views.myelin_axon(await axon_status(bus, stored), stored.axon)

    @app.delete(f"{API}/axons/{{namespace}}/{{axon}}", tags=["axons"])
    async def delete_axon(namespace: Name, axon: Name) -> dict[str, Any]:
        """Delete an Axon: its sensors stop and its running tasks are stopped."""
        try:
            stored = await AxonStore(bus).delete(namespace, axon)
        except AxonStoreError as exc:
            raise NotFoundError(exc.message, hint=exc.hint) from None
        return {"name": stored.name, "namespace": stored.namespace, "deleted": True}

    @app.get(f"{API}/axons/{{namespace}}/{{axon}}/stream", tags=["axons"])
    async def stream_axon(stored: Stored, request: Request) -> StreamingResponse:
        """The Axon document again (server-sent events) each time it changes."""

        async def changes() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                with contextlib.suppress(*OUTAGE_ERRORS, BusError):
                    doc = views.myelin_axon(await axon_status(bus, stored), stored.axon)
                    text = json.dumps(doc, sort_keys=True)
                    if text != last:
                        last = text
                        yield f"event: axon\ndata: {text}\n\n"
                    else:
                        yield ": keep-alive\n\n"
                await asyncio.sleep(POLL)

        return StreamingResponse(changes(), media_type="text/event-stream")

    @app.get(f"{API}/axons/{{namespace}}/{{axon}}/runs", tags=["runs"])
    async def list_runs(stored: Stored) -> list[dict[str, Any]]:
        """Every sensor run of the Axon with its task runs (Myelin's children), oldest first."""
        doc = views.myelin_axon(await axon_status(bus, stored), stored.axon)
        runs = [{"sensor": s["name"], **run} for s in doc["sensors"] for run in s["children"]]
        return sorted(runs, key=lambda r: r.get("startedAtTs") or 0)

    @app.get(
        f"{API}/axons/{{namespace}}/{{axon}}/tasks/{{task}}/runs/{{run_id}}/log",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def task_log(
        namespace: Name,
        axon: Name,
        task: Name,
        run_id: Name,
        follow: Annotated[bool, Query(description="Stream until the run ends.")] = False,
    ) -> StreamingResponse:
        """A task run's output (stdout and stderr); with `follow`, streamed until it ends."""
        runs = [r for r in await task_runs(bus, namespace, axon, task) if r.id == run_id]
        if not runs:
            raise NotFoundError(f"task {task!r} of Axon {namespace}/{axon} has no run {run_id}")
        run = runs[0]
        if not run.log_path:
            raise NotFoundError(f"run {run.id} of {task} has no log ({run.phase}: {run.message})")
        path = Path(run.log_path)
        try:
            source = path.open("rb")  # noqa: ASYNC230  # a local file, read in small pieces
        except OSError as exc:
            raise NotFoundError(f"the log of run {run.id} is unreadable: {exc.strerror}") from None

        async def chunks() -> AsyncIterator[bytes]:
            current = run
            with source:
                while True:
                    data = source.read(65536)
                    if data:
                        yield data
                        continue
                    if not follow or current.phase in views.TERMINAL:
                        return
                    await asyncio.sleep(POLL / 2)
                    got = await bus.kv_get(subjects.RUNS_BUCKET, current.key)
                    current = type(run).from_json(got[0]) if got is not None else current

        return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")

    @app.get(f"{API}/axons/{{namespace}}/{{axon}}/models", tags=["models"])
    async def models(stored: Stored) -> list[dict[str, Any]]:
        """Model versions of each train task, with their metrics."""
        status = await axon_status(bus, stored)
        return [
            {
                "task": m["task"],
                "versions": [
                    {k: v for k, v in ver.items() if k != "path"} for ver in m["versions"]
                ],
                "lossMetric": _loss_metric(stored, m["task"]),
            }
            for m in status["models"]
        ]

    @app.get(f"{API}/axons/{{namespace}}/{{axon}}/deployments", tags=["models"])
    async def deployments(stored: Stored) -> list[dict[str, Any]]:
        """Deployments with their models, backends (versions) and traffic weights."""
        return list((await axon_status(bus, stored))["deployments"])

    @app.get(f"{API}/axons/{{namespace}}/{{axon}}/alerts", tags=["models"])
    async def alerts(
        stored: Stored,
        since: Annotated[str | None, Query(description="10m, 2h, 1d or RFC 3339")] = None,
    ) -> list[dict[str, Any]]:
        """Each Alert trigger's metric values over time, its threshold and when it fired."""
        start = _since(since)
        metrics = [
            {"time": e["time"], **e["data"]}
            for e in await _events(bus, stored, "metric", start, limit=None)
        ]
        decided = await _decisions(bus, stored)
        return views.alert_series(stored.axon, metrics, decided)

    @app.get(f"{API}/axons/{{namespace}}/{{axon}}/runs/{{run_id}}/trace", tags=["runs"])
    async def run_trace(stored: Stored, run_id: Name) -> dict[str, Any]:
        """The chain from the event that started the run to the deployment it led to."""
        status = await axon_status(bus, stored)
        if not any(r["id"] == run_id for s in status["sensors"] for r in s["runs"]):
            raise NotFoundError(f"Axon {stored.name} has no sensor run {run_id}")
        found = await _events(bus, stored, None, None, limit=None)
        links = views.trace(
            run_id, status, await _decisions(bus, stored), {e["id"]: e for e in found}
        )
        return {"run": run_id, "links": links}

    # -- the Rest webhook ---------------------------------------------------------------------

    @app.post(
        f"{API}/axons/{{namespace}}/{{axon}}/sensors/{{sensor}}/trigger",
        tags=["axons"],
        status_code=202,
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
        responses={
            404: {"description": "no such Axon or sensor"},
            409: {"description": "the sensor has no Rest trigger"},
        },
    )
    async def trigger(namespace: Name, axon: Name, sensor: Name, request: Request) -> JSONResponse:
        """Fire a sensor's Rest trigger once; the JSON body becomes the trigger's payload."""
        raw = await request.body()
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "the body must be a JSON object (the trigger's payload)")
        event_id = await trigger_rest(bus, namespace, axon, sensor, payload)
        return JSONResponse(
            {"event_id": event_id, "namespace": namespace, "axon": axon, "sensor": sensor},
            status_code=202,
        )

    # -- events, decisions --------------------------------------------------------------------

    @app.get(f"{API}/events", tags=["events"])
    async def list_events(
        axon: Annotated[str | None, Query(max_length=253)] = None,
        type: Annotated[str | None, Query(description="lifecycle, metric, rest...")] = None,
        since: Annotated[str | None, Query(description="10m, 2h, RFC 3339 or a seq")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 200,
    ) -> list[dict[str, Any]]:
        """Stored events (newest last), filtered by Axon, type and time."""
        subject = events_filter(axon, type)
        start = _since(since)
        found: list[dict[str, Any]] = []
        async for item in bus.replay(since=start, filter_subject=subject, idle=0.5):
            found.append({"seq": item.seq, **_event_json(item.event)})
            if len(found) > limit:
                found.pop(0)
        return found

    @app.get(f"{API}/events/stream", tags=["events"], response_class=EventSourceResponse)
    async def stream_events(
        axon: Annotated[str | None, Query(max_length=253)] = None,
        type: Annotated[str | None, Query()] = None,
    ) -> AsyncIterator[ServerSentEvent]:
        """New events as they arrive (server-sent events, one `event` per stored event)."""
        subject = events_filter(axon, type)
        follow = bus.follow(filter_subject=subject)
        async with contextlib.aclosing(follow) as items:
            async for item in items:
                yield ServerSentEvent(
                    event="event",
                    id=str(item.seq),
                    data={"seq": item.seq, **_event_json(item.event)},
                )

    @app.get(f"{API}/events/{{event_id}}/decisions", tags=["events"])
    async def explain(
        event_id: Name, axon: Annotated[str | None, Query(max_length=253)] = None
    ) -> dict[str, Any]:
        """Why an event did or did not fire each sensor (the decisions the engine recorded)."""
        return {"event_id": event_id, "decisions": await decisions_for(bus, event_id, axon)}

    # -- the console --------------------------------------------------------------------------

    static = resources.files("ranvier.api") / "static"
    index = Path(str(static / "index.html"))

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    app.mount(STATIC, StaticFiles(directory=str(static)), name="static")
    return app


def _since(text: str | None) -> int | Any:
    now = model.utcnow()
    if text is None:
        return now - DEFAULT_WINDOW
    return parse_when(text, flag="since", now=now)


def _event_json(event: model.Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time": model.format_time(event.time),
        "data": event.data,
    }


async def _events(
    bus: Bus, stored: StoredAxon, kind: str | None, since: Any, *, limit: int | None
) -> list[dict[str, Any]]:
    """The Axon's events (of one kind), oldest first."""
    out: list[dict[str, Any]] = []
    subject = events_filter(stored.name, kind)
    async for item in bus.replay(since=since, filter_subject=subject, idle=0.5):
        if item.event.data.get("namespace", "default") != stored.namespace:
            continue
        out.append(_event_json(item.event))
        if limit is not None and len(out) > limit:
            out.pop(0)
    return out


async def _decisions(bus: Bus, stored: StoredAxon) -> list[dict[str, Any]]:
    """The Axon's decision records, in the order the engine made them."""
    return [
        d
        for d in await decision_records(bus, stored.name)
        if d.get("namespace", "default") == stored.namespace
    ]


def _loss_metric(stored: StoredAxon, task: str) -> str | None:
    for spec in stored.axon.spec.tasks:
        if spec.name == task and spec.train is not None:
            return spec.train.loss_metric
    return None
