"""The event routes: stored events, new events as they arrive, and an event's decisions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ranvier.api.routes.common import API, MAX_EVENTS, BusDep, Name, event_json, start_of
from ranvier.commands.events import events_filter
from ranvier.commands.explain import decisions_for

router = APIRouter(tags=["events"])


@router.get(f"{API}/events")
async def list_events(
    bus: BusDep,
    axon: Annotated[str | None, Query(max_length=253)] = None,
    type: Annotated[str | None, Query(description="lifecycle, metric, rest...")] = None,
    since: Annotated[str | None, Query(description="10m, 2h, RFC 3339 or a seq")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 200,
) -> list[dict[str, Any]]:
    """Stored events (newest last), filtered by Axon, type and time."""
    subject = events_filter(axon, type)
    found: list[dict[str, Any]] = []
    async for item in bus.replay(since=start_of(since), filter_subject=subject, idle=0.5):
        found.append({"seq": item.seq, **event_json(item.event)})
        if len(found) > limit:
            found.pop(0)
    return found


@router.get(f"{API}/events/stream", response_class=EventSourceResponse)
async def stream_events(
    bus: BusDep,
    axon: Annotated[str | None, Query(max_length=253)] = None,
    type: Annotated[str | None, Query()] = None,
) -> AsyncIterator[ServerSentEvent]:
    """New events as they arrive (server-sent events, one `event` per stored event)."""
    follow = bus.follow(filter_subject=events_filter(axon, type))
    async with contextlib.aclosing(follow) as items:
        async for item in items:
            yield ServerSentEvent(
                event="event", id=str(item.seq), data={"seq": item.seq, **event_json(item.event)}
            )


@router.get(f"{API}/events/{{event_id}}/decisions")
async def explain(
    event_id: Name, bus: BusDep, axon: Annotated[str | None, Query(max_length=253)] = None
) -> dict[str, Any]:
    """Why an event did or did not fire each sensor (the decisions the engine recorded)."""
    return {"event_id": event_id, "decisions": await decisions_for(bus, event_id, axon)}
