"""`ranvier explain EVENT_ID`: why did (not) this event fire anything?

The engine publishes one decision record per (sensor, trigger) an event could concern, and one
per sensor run it advances, to RANVIER_DECISIONS. This command reads them back for one event:
the answer to "why did my retrain not run?" is on the bus, not in a log that rotated away.
Like `events export`, it is read-only, so on a stopped `ranvier up` it starts the embedded
server on the state dir's store by itself.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any

import typer

from events import subjects
from events.bus import Bus
from events.errors import RanvierError
from events.model import DECISION
from ranvier.commands.common import (
    Connection,
    connect_or_start,
    run_command,
    with_connection,
)


class OutputFormat(enum.StrEnum):
    """Output formats of `explain`."""

    text = "text"
    json = "json"


async def decisions_for(bus: Bus, event_id: str, axon: str | None = None) -> list[dict[str, Any]]:
    """The decision records stored for `event_id`, in the order the engine made them."""
    return await decision_records(bus, axon, event_id=event_id)


async def decision_records(
    bus: Bus, axon: str | None = None, *, event_id: str | None = None
) -> list[dict[str, Any]]:
    """The decision records of one Axon (or all), of one event (or all), in stored order."""
    filter_subject = (
        f"{subjects.PREFIX}.dec.{subjects.token(axon)}.*" if axon else subjects.DECISIONS_SUBJECTS
    )
    found: list[dict[str, Any]] = []
    async for item in bus.replay(stream=subjects.DECISIONS_STREAM, filter_subject=filter_subject):
        if item.event.type != DECISION:
            continue
        if event_id is None or item.event.data.get("event_id") == event_id:
            found.append({"time": item.event.time.isoformat(), **item.event.data})
    return found


def format_decision(decision: dict[str, Any]) -> str:
    """One decision as a readable line."""
    verdict = "FIRED" if decision.get("fired") else ("matched" if decision.get("matched") else "-")
    trigger = decision.get("trigger") or "-"
    where = f"{decision.get('namespace', 'default')}/{decision.get('axon')}"
    line = f"{where} {decision.get('sensor')} [{trigger}] {verdict}: {decision.get('reason')}"
    run = decision.get("sensor_run_id")
    if run:
        line += f" (run {run})"
    actions = decision.get("actions") or []
    if actions:
        shown = ", ".join(f"{a['kind']}:{a['task']}@step{a['step']}" for a in actions)
        line += f" -> {shown}"
    return line


@with_connection
def explain(
    event_id: Annotated[str, typer.Argument(help="The event's id (see `events tail`).")],
    *,
    axon: Annotated[
        str | None, typer.Option("--axon", help="Only this Axon's decisions (faster).")
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("-o", "--output", help="text or json.")
    ] = OutputFormat.text,
    connection: Connection,
) -> None:
    """Print the decisions the engine recorded for EVENT_ID (why it did or did not fire)."""
    settings = connection.settings()
    found: list[dict[str, Any]] = []

    async def body(bus: Bus) -> None:
        found.extend(await decisions_for(bus, event_id, axon))

    run_command(connect_or_start(settings, body, read_only=True))
    if output == OutputFormat.json:
        typer.echo(json.dumps({"event_id": event_id, "decisions": found}, sort_keys=True))
        return
    if not found:
        raise RanvierError(
            f"no decisions recorded for event {event_id}",
            hint="it concerned no sensor, the engine has not processed it yet, "
            "or it is older than the decisions' retention",
        )
    for decision in found:
        typer.echo(format_decision(decision))


def register(app: typer.Typer) -> None:
    """Add `explain` to the root CLI."""
    app.command("explain")(explain)


__all__ = ["decision_records", "decisions_for", "format_decision", "register"]
