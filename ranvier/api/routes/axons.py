"""The Axon routes: list, submit, read, delete and follow Axons, and the Rest webhook."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from events import model
from events.bus import OUTAGE_ERRORS, BusError
from ranvier.api import views
from ranvier.api.routes.common import API, POLL, ApiError, BusDep, Name, Stored, problem
from ranvier.app import NotFoundError, axon_status, trigger_rest
from sensors.axons import AxonStore, AxonStoreError
from sensors.loader import SpecError, load_axon_bytes

router = APIRouter(tags=["axons"])


@router.get(f"{API}/axons")
async def list_axons(bus: BusDep) -> list[dict[str, Any]]:
    """Every submitted Axon with its phase, last run and endpoint."""
    rows = []
    for stored in await AxonStore(bus).list():
        status = await axon_status(bus, stored)
        rows.append(views.axon_summary(status, model.format_time(stored.submitted)))
    return rows


@router.post(
    f"{API}/axons",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/yaml": {"schema": {"type": "string"}}},
        }
    },
    responses={422: {"description": "the Axon is invalid: the validator's errors"}},
)
async def submit_axon(request: Request, bus: BusDep) -> JSONResponse:
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
        return problem(422, exc.message, errors=errors)
    stored = await AxonStore(bus).submit(axon)
    return JSONResponse(
        {"name": stored.name, "namespace": stored.namespace, "generation": stored.generation},
        status_code=201,
    )


@router.get(f"{API}/axons/{{namespace}}/{{axon}}")
async def get_axon(stored: Stored, bus: BusDep) -> dict[str, Any]:
    """An Axon in Myelin's shape: sensors -> sensor runs -> task runs, plus models and
    deployments."""
    return views.myelin_axon(await axon_status(bus, stored), stored.axon)


@router.delete(f"{API}/axons/{{namespace}}/{{axon}}")
async def delete_axon(namespace: Name, axon: Name, bus: BusDep) -> dict[str, Any]:
    """Delete an Axon: its sensors stop and its running tasks are stopped."""
    try:
        stored = await AxonStore(bus).delete(namespace, axon)
    except AxonStoreError as exc:
        raise NotFoundError(exc.message, hint=exc.hint) from None
    return {"name": stored.name, "namespace": stored.namespace, "deleted": True}


@router.get(f"{API}/axons/{{namespace}}/{{axon}}/stream")
async def stream_axon(stored: Stored, request: Request, bus: BusDep) -> StreamingResponse:
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


@router.post(
    f"{API}/axons/{{namespace}}/{{axon}}/sensors/{{sensor}}/trigger",
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
async def trigger(
    namespace: Name, axon: Name, sensor: Name, request: Request, bus: BusDep
) -> JSONResponse:
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
