"""`ranvier server` and `ranvier events ...`: the bus from a shell.

These commands are thin: parsing flags, then one call into `events.bus`. What they add is the
user-facing contract: every command takes the same connection flags (falling back to
`RANVIER_*` and the state dir's `nats.url`), errors are one line, and `export` writes the stored
bytes exactly so that export -> import -> export is byte-identical.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, Final

import structlog
import typer
from pydantic import ValidationError

from events import model, subjects
from events.bus import Bus, ConnectOptions, Outgoing
from events.errors import RanvierError
from events.model import PAYLOAD_TYPES, Event, EventError
from events.server import EmbeddedServer, NatsCluster
from ranvier.commands.common import (
    Connection,
    Password,
    StateDir,
    Token,
    User,
    cli_logging,
    connect_or_start,
    read_event_lines,
    run_command,
    with_connection,
)
from ranvier.settings import (
    Credentials,
    Settings,
    is_loopback,
    remove_url_file,
    server_credentials,
    write_url_file,
)

log = structlog.get_logger(__name__)

SOURCE: Final = "ranvier/cli"
EVENT_KINDS: Final = ("lifecycle", "metric", "rest", "calendar", "axon", "tick")

events_app = typer.Typer(
    name="events",
    help="Publish, follow, export, import and replay events on the bus.",
    no_args_is_help=True,
)

Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Start at: a duration ago (10m, 2h, 1d) or RFC 3339 time (when stored), or a seq.",
    ),
]
Until = Annotated[
    str | None,
    typer.Option("--until", help="Stop at: a duration ago or RFC 3339 time (when stored)."),
]
Axon = Annotated[str | None, typer.Option("--axon", help="Only this Axon's events.")]
Kind = Annotated[
    str | None, typer.Option("--type", help="Only this event type (e.g. lifecycle, metric).")
]


# -- pure helpers (unit-tested) ------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta | None:
    """`90s`, `10m`, `1h30m`, `2d` as a timedelta; None if `text` is not a duration."""
    text = text.strip()
    if not text:
        return None
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return timedelta(seconds=total) if pos == len(text) else None


def parse_when(text: str, *, flag: str, now: datetime, allow_seq: bool = True) -> int | datetime:
    """A `--since`/`--until` value: a stream sequence, a duration ago, or an RFC 3339 time."""
    text = text.strip()
    if allow_seq and text.isdigit():
        return int(text)
    ago = parse_duration(text)
    if ago is not None:
        return now - ago
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        what = "a duration like 10m, an RFC 3339 time" + (" or a sequence" if allow_seq else "")
        raise RanvierError(f"{flag}: expected {what}, got {text!r}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def parse_until(text: str, *, now: datetime) -> datetime:
    """An `--until` value: a duration ago or an RFC 3339 time (never a sequence)."""
    when = parse_when(text, flag="--until", now=now, allow_seq=False)
    if not isinstance(when, datetime):  # pragma: no cover - allow_seq=False returns times
        raise RanvierError(f"--until: expected a time, got {text!r}")
    return when


def event_type(name: str) -> str:
    """`lifecycle` or `ranvier.lifecycle` -> `ranvier.lifecycle`; unknown types are errors."""
    full = name if name.startswith(f"{subjects.PREFIX}.") else f"{subjects.PREFIX}.{name}"
    if full not in PAYLOAD_TYPES:
        known = ", ".join(sorted(t.removeprefix(f"{subjects.PREFIX}.") for t in PAYLOAD_TYPES))
        raise RanvierError(f"unknown event type {name!r}", hint=f"known types: {known}")
    return full


def events_filter(axon: str | None, kind: str | None) -> str:
    """The subject filter over the events stream for `--axon` and `--type`."""
    if kind is not None:
        short = event_type(kind).removeprefix(f"{subjects.PREFIX}.")
        if short not in EVENT_KINDS:
            raise RanvierError(
                f"--type {kind}: {short} events are not in the events stream",
                hint=f"choose one of {', '.join(EVENT_KINDS)}",
            )
        kind = short
    return subjects.events_filter(axon, kind)


def build_event(type_: str, axon: str, data: str, event_id: str | None) -> Event:
    """An event from `events publish` flags, its data validated against the typed payload."""
    full = event_type(type_)
    try:
        fields = json.loads(data)
    except json.JSONDecodeError as exc:
        raise RanvierError(f"--data is not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(fields, dict):
        raise RanvierError("--data must be a JSON object")
    if fields.get("axon", axon) != axon:
        raise RanvierError(f"--data says axon {fields['axon']!r} but --axon is {axon!r}")
    try:
        payload = PAYLOAD_TYPES[full].model_validate({**fields, "axon": axon})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise RanvierError(f"--data for {full}: {where}: {err['msg']}") from None
    return payload.to_event(source=SOURCE, id=event_id)


def outgoing(line: bytes) -> Outgoing:
    """One line of an import file as what to publish (EventError if it is not an event)."""
    event = Event.from_json(line)
    return Outgoing(event.nats_subject, line, event.id)


def read_import_file(path: Path) -> list[Outgoing]:
    """Every event of a JSON-lines file, or a RanvierError naming the bad lines (all of them)."""
    return read_event_lines(path, outgoing, refused="imported")


def format_event(event: Event, seq: int, output: str) -> str:
    """One event for `tail`: compact JSON (`-o json`) or a readable line."""
    if output == "json":
        return event.to_json().decode("utf-8")
    data = json.dumps(event.data, separators=(",", ":"), sort_keys=True)
    return f"{seq:>8} {model.format_time(event.time)} {event.type} {event.subject or '-'} {data}"


# -- commands ------------------------------------------------------------------------------


def server(
    *,
    port: Annotated[int, typer.Option("--port", help="Client port (0: any free port).")] = 4222,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    store: Annotated[
        Path | None, typer.Option("--store", help="JetStream store (default <state-dir>/nats).")
    ] = None,
    state_dir: StateDir = None,
    user: User = None,
    password: Password = None,
    token: Token = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas",
            min=1,
            max=5,
            help="Run this many servers as one local NATS cluster (--port is the first one's) "
            "and keep ranvier's streams and buckets on all of them [RANVIER_REPLICAS].",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Accept clients without credentials (by default they need the token kept in "
            "the state dir, or the --token/--user given).",
        ),
    ] = False,
) -> None:
    """Run an embedded NATS server with JetStream in the foreground (Ctrl-C stops it)."""
    settings = Settings.from_flags(
        state_dir=state_dir, replicas=replicas, user=user, password=password, token=token
    )
    credentials = _server_credentials(settings, host=host, insecure=insecure)
    if (settings.replicas or 1) > 1:
        _serve_cluster(
            settings, store=store or settings.store_dir, port=port, host=host, auth=credentials
        )
        return
    srv = EmbeddedServer(
        store_dir=store or settings.store_dir,
        port=port,
        host=host,
        **credentials.server_kwargs(),
    )

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGTERM, previous)
        stack.callback(srv.stop)
        url = srv.start()
        stack.callback(remove_url_file, settings.url_file, url)
        write_url_file(settings.url_file, url)
        typer.echo(url)
        try:
            code = srv.wait()
        except KeyboardInterrupt:
            return
        if code != 0:  # 0: it got the terminal's Ctrl-C before we did, a clean stop
            last = " | ".join(srv.log_tail()[-2:])
            raise RanvierError(f"nats-server exited with code {code}: {last}")


def _server_credentials(settings: Settings, *, host: str, insecure: bool) -> Credentials:
    """What `ranvier server` makes clients present: the token or user given, else the state
    dir's token (made on the first start); nothing with `--insecure`. Beyond loopback it needs
    credentials given, or `--insecure`: the clients on other machines must be told them."""
    given = settings.given_credentials
    if insecure:
        if not given.empty:
            raise RanvierError(
                "--insecure accepts clients without credentials, yet credentials were given",
                hint="drop --insecure, or --token/--user (RANVIER_TOKEN, RANVIER_USER)",
            )
        log.warning("nats.insecure", host=host)
        return Credentials()
    if not is_loopback(host) and given.empty:
        raise RanvierError(
            f"refusing to listen on {host} without credentials: anyone who can reach it "
            "could run commands as you",
            hint="give --token (or --user and --password) and TLS in front of it, "
            "or --insecure to accept anyone",
        )
    return server_credentials(settings.state_dir, given)


def _serve_cluster(
    settings: Settings,
    *,
    store: Path,
    port: int,
    host: str,
    auth: Credentials,
) -> None:
    """`ranvier server --replicas N`: N servers as one local cluster, the topology at N copies.

    The streams and buckets are created here, before any client can create them with the
    one replica a client that does not say otherwise starts them with.
    """
    size = settings.replicas or 1
    cluster = NatsCluster(store_dir=store, size=size, host=host, port=port, **auth.server_kwargs())

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    async def topology() -> None:
        options = ConnectOptions(servers=cluster.urls, **auth.server_kwargs())
        async with Bus.connect(options, limits=settings.stream_limits()):
            pass

    previous = signal.signal(signal.SIGTERM, interrupt)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGTERM, previous)
        stack.callback(cluster.stop)
        url = cluster.start()
        run_command(topology())
        stack.callback(remove_url_file, settings.url_file, url)
        write_url_file(settings.url_file, url)
        typer.echo(url)
        try:
            name, code = cluster.wait()
        except KeyboardInterrupt:
            return
        if code != 0:  # 0: it got the terminal's Ctrl-C before we did, a clean stop
            node = cluster.nodes[cluster.node_named(name)]
            last = " | ".join(node.log_tail()[-2:])
            raise RanvierError(f"nats-server {name} exited with code {code}: {last}")


@events_app.command("publish")
@with_connection
def publish(
    *,
    type_: Annotated[str, typer.Option("--type", help="Event type, e.g. lifecycle or metric.")],
    axon: Annotated[str, typer.Option("--axon", help="The Axon the event belongs to.")],
    data: Annotated[str, typer.Option("--data", help="The payload as a JSON object.")] = "{}",
    event_id: Annotated[
        str | None, typer.Option("--id", help="Event id (default: a new ULID).")
    ] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
    connection: Connection,
) -> None:
    """Publish one event (its data is validated against the type's payload)."""
    event = build_event(type_, axon, data, event_id)
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            ack = await bus.publish(event)
        if output == "json":
            info = {"id": event.id, "stream": ack.stream, "seq": ack.seq}
            typer.echo(json.dumps({**info, "duplicate": ack.duplicate}))
        else:
            dup = " (duplicate, already stored)" if ack.duplicate else ""
            typer.echo(f"published {event.id} to {ack.stream} seq {ack.seq}{dup}")

    run_command(go())


@events_app.command("tail")
@with_connection
def tail(
    *,
    axon: Axon = None,
    kind: Kind = None,
    since: Since = None,
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
    count: Annotated[
        int | None, typer.Option("--count", "-n", help="Stop after this many events.")
    ] = None,
    connection: Connection,
) -> None:
    """Follow events as they arrive (from --since, else only new ones) until Ctrl-C."""
    if output not in ("text", "json"):
        raise RanvierError(f"-o {output}: choose text or json")
    start = parse_when(since, flag="--since", now=model.utcnow()) if since else None
    subject = events_filter(axon, kind)
    settings = connection.settings()

    async def go() -> None:
        seen = 0
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            if count is not None and count <= 0:
                return
            follow = bus.follow(since=start, filter_subject=subject)
            async with contextlib.aclosing(follow) as items:
                async for item in items:
                    typer.echo(format_event(item.event, item.seq, output))
                    sys.stdout.flush()
                    seen += 1
                    if count is not None and seen >= count:
                        return

    run_command(go())


@events_app.command("export")
@with_connection
def export(
    *,
    axon: Axon = None,
    kind: Kind = None,
    since: Since = None,
    until: Until = None,
    out: Annotated[
        Path | None, typer.Option("--file", "-f", help="Write here instead of stdout.")
    ] = None,
    connection: Connection,
) -> None:
    """Write stored events as JSON lines (the exact stored bytes), oldest first, then exit."""
    now = model.utcnow()
    start = parse_when(since, flag="--since", now=now) if since else None
    end = parse_until(until, now=now) if until else None
    subject = events_filter(axon, kind)
    settings = connection.settings()

    async def body(bus: Bus) -> None:
        sink: IO[bytes] = out.open("wb") if out else sys.stdout.buffer
        try:
            async for item in bus.replay(since=start, until=end, filter_subject=subject):
                sink.write(item.raw + b"\n")
        finally:
            if out:
                sink.close()
            else:
                sink.flush()

    run_command(connect_or_start(settings, body, read_only=True))


@events_app.command("import")
@with_connection
def import_(
    *,
    file: Annotated[Path, typer.Argument(help="JSON lines, e.g. from `events export`.")],
    connection: Connection,
) -> None:
    """Publish every event of FILE with its own id (all lines are checked first)."""
    items = read_import_file(file)
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            too_big = [i for i in items if len(i.data) > bus.max_payload]
            if too_big:
                raise EventError(
                    f"{file}: event {too_big[0].msg_id} is over the server's max payload of "
                    f"{bus.max_payload} bytes; nothing imported"
                )
            acks = await bus.publish_many_encoded(items)
        dups = sum(1 for a in acks if a.duplicate)
        typer.echo(f"imported {len(acks) - dups} events from {file} ({dups} already stored)")

    run_command(go())


@events_app.command("replay")
@with_connection
def replay(
    *,
    since: Annotated[
        str, typer.Option("--since", help="From: a duration ago (10m), RFC 3339, or a seq.")
    ],
    until: Until = None,
    axon: Axon = None,
    kind: Kind = None,
    connection: Connection,
) -> None:
    """Re-publish matching events as new events whose `replayof` names the original."""
    now = model.utcnow()
    start = parse_when(since, flag="--since", now=now)
    end = parse_until(until, now=now) if until else None
    subject = events_filter(axon, kind)
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            originals = [
                item.event
                async for item in bus.replay(since=start, until=end, filter_subject=subject)
            ]
            copies = [replay_of(ev) for ev in originals]
            await bus.publish_many(copies)
        typer.echo(f"replayed {len(copies)} events")

    run_command(go())


def replay_of(event: Event) -> Event:
    """A new event (fresh id) re-publishing `event`, with `replayof` naming it."""
    return event.model_copy(update={"id": model.new_id(), "replayof": event.id})


def register(app: typer.Typer) -> None:
    """Add `server` and the `events` group to the root CLI."""
    app.command("server")(server)
    app.add_typer(events_app, name="events")


__all__ = ["cli_logging", "register"]  # cli_logging: still importable from here
