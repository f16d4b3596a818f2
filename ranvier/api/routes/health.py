"""The health probes: the process answers (`/healthz`), the bus answers (`/readyz`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from events import subjects
from events.bus import OUTAGE_ERRORS, BusError
from ranvier.api.routes.common import BusDep, problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "bus unreachable"}})
async def readyz(bus: BusDep) -> JSONResponse:
    """The bus answers (the API can read what it serves)."""
    try:
        async with asyncio.timeout(2.0):
            await bus.stream_info(subjects.EVENTS_STREAM)
    except (TimeoutError, BusError, *OUTAGE_ERRORS) as exc:
        return problem(503, f"the bus does not answer: {exc!r}")
    return JSONResponse({"status": "ready"})
