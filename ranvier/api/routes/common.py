"""What every route module shares: the limits, the path names, the bus and Axon dependencies,
the problem body, and the readers of an Axon's events and decisions."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Final

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from events import model
from events.bus import Bus
from events.errors import RanvierError
from ranvier.app import NotFoundError
from ranvier.commands.events import events_filter, parse_when
from ranvier.commands.explain import decision_records
from sensors.axons import AxonStore, StoredAxon
from sensors.loader import MAX_BYTES

API: Final = "/api/v1"
MAX_BODY: Final = MAX_BYTES  # an Axon file's limit; a webhook payload must also fit NATS
MAX_EVENTS: Final = 1000
POLL: Final = 1.0
DEFAULT_WINDOW: Final = timedelta(hours=6)

Name = Annotated[str, PathParam(min_length=1, max_length=253, pattern=r"^[^\s/]+$")]


class ApiError(RanvierError):
    """A request the API refuses; `status` is its HTTP status."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def problem(status: int, message: str, hint: str | None = None, **extra: Any) -> JSONResponse:
    """An error answer: `detail`, an optional `hint`, and any `extra` fields."""
    body: dict[str, Any] = {"detail": message}
    if hint:
        body["hint"] = hint
    return JSONResponse({**body, **extra}, status_code=status)


async def bus_of(request: Request) -> Bus:
    """The bus the app was created over."""
    bus: Bus = request.app.state.bus
    return bus


BusDep = Annotated[Bus, Depends(bus_of)]


async def stored_axon(bus: BusDep, namespace: Name, axon: Name) -> StoredAxon:
    """The Axon named in the path (deleted ones too), or 404."""
    stored = await AxonStore(bus).get(namespace, axon)
    if stored is None:
        raise NotFoundError(
            f"no Axon {namespace}/{axon} was submitted", hint=f"see GET {API}/axons"
        )
    return stored


Stored = Annotated[StoredAxon, Depends(stored_axon)]


def start_of(since: str | None) -> int | Any:
    """The start of a `since` query: the default window when absent."""
    now = model.utcnow()
    if since is None:
        return now - DEFAULT_WINDOW
    return parse_when(since, flag="since", now=now)


def event_json(event: model.Event) -> dict[str, Any]:
    """An event as the API answers it."""
    return {
        "id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time": model.format_time(event.time),
        "data": event.data,
    }


async def axon_events(
    bus: Bus, stored: StoredAxon, kind: str | None, start: Any, *, limit: int | None
) -> list[dict[str, Any]]:
    """The Axon's events (of one kind), oldest first."""
    out: list[dict[str, Any]] = []
    subject = events_filter(stored.name, kind)
    async for item in bus.replay(since=start, filter_subject=subject, idle=0.5):
        if item.event.data.get("namespace", "default") != stored.namespace:
            continue
        out.append(event_json(item.event))
        if limit is not None and len(out) > limit:
            out.pop(0)
    return out


async def axon_decisions(bus: Bus, stored: StoredAxon) -> list[dict[str, Any]]:
    """The Axon's decision records, in the order the engine made them."""
    return [
        d
        for d in await decision_records(bus, stored.name)
        if d.get("namespace", "default") == stored.namespace
    ]
