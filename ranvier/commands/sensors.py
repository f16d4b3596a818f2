"""`ranvier sensors test`: a dry-run of an Axon's sensors over recorded events.

The command only reads files and prints; the deciding is `sensors.replay` over the pure engine,
so what it prints is what the live engine would decide for the same events. Every line of the
events file is checked before anything is replayed: a bad line is reported as
`FILE:LINE: error: ...` and nothing else is printed, so a script never sees half an answer.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from events.errors import RanvierError
from events.model import DecisionData, Event, canonical_json
from ranvier.commands.common import read_event_lines
from sensors.loader import load_axon
from sensors.replay import decision_line, replay
from sensors.spec import parse_duration

sensors_app = typer.Typer(
    help="Work with an Axon's sensors without a bus: dry-run them over recorded events.",
    no_args_is_help=True,
)


class OutputFormat(enum.StrEnum):
    """Output formats of `sensors test`."""

    json = "json"
    text = "text"


def read_events(path: Path) -> list[Event]:
    """Every event of a JSON-lines file (blank lines skipped), or a RanvierError after printing
    each bad line as FILE:LINE: error: ..."""
    return read_event_lines(
        path,
        Event.from_json,
        refused="replayed",
        hint="each line must be one CloudEvents JSON object, as `ranvier events export` writes",
    )


def format_text(decision: DecisionData) -> str:
    """One decision as a readable line."""
    who = decision.sensor + (f"/{decision.trigger}" if decision.trigger else "")
    verdict = "FIRED" if decision.fired else "-"
    line = f"{decision.event_id}  {who}  {verdict}  {decision.reason}"
    if decision.actions:
        planned = ", ".join(f"{a.kind} {a.task} (step {a.step})" for a in decision.actions)
        line += f"  [run {decision.sensor_run_id}: {planned}]"
    return line


@sensors_app.command("test")
def dry_run(
    axon_file: Annotated[Path, typer.Argument(help="The Axon file.", show_default=False)],
    *,
    events: Annotated[
        Path,
        typer.Option("--events", "-e", help="JSON lines of events (`ranvier events export`)."),
    ],
    output: Annotated[
        OutputFormat,
        typer.Option("--output", "-o", help="json (one line per decision) or text."),
    ] = OutputFormat.json,
    tick: Annotated[
        str | None,
        typer.Option(
            "--tick",
            help="Advance the virtual clock in steps of this duration between events "
            "(e.g. 1s), so Alert `for`, keepFiringFor and cooldown can elapse.",
        ),
    ] = None,
) -> None:
    """Dry-run the Axon's sensors over recorded events; print one decision per line."""
    step = parse_duration(tick) if tick is not None else None
    if step is not None and step <= 0:
        raise RanvierError(f"--tick {tick}: must be longer than 0s", hint="use e.g. --tick 1s")
    axon = load_axon(axon_file)
    recorded = read_events(events)
    decisions = list(replay(axon, recorded, step))
    if output is OutputFormat.json:
        lines = [canonical_json(decision_line(d)).decode() for d in decisions]
    else:
        lines = [format_text(d) for d in decisions]
    if lines:
        typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add the `sensors` command group."""
    app.add_typer(sensors_app, name="sensors")
