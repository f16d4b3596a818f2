"""What the commands that talk to the control plane share, so that they behave the same.

Every such command takes the same connection flags (falling back to `RANVIER_*` and the state
dir's `nats.url`), runs its work as one coroutine whose Ctrl-C is a quiet exit 130, and logs on
stderr only: stdout carries what scripts read (`-o json`, `events export`). `ranvier.cli.main`
applies `cli_logging` once around every command.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import structlog
import typer

from events.bus import Bus, ConnectError
from events.errors import RanvierError
from events.model import EventError
from events.server import EmbeddedServer
from ranvier.settings import Settings, server_credentials
from sensors.axons import AxonStore

T = TypeVar("T")

MAX_REPORTED: Final = 20  # bad lines of an events file reported before "... and N more"

# -- connection flags, shared by every command that connects -------------------------------

NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", help="NATS URL(s), comma-separated [RANVIER_NATS_URL].")
]
User = Annotated[str | None, typer.Option("--user", help="NATS user [RANVIER_USER].")]
Password = Annotated[
    str | None, typer.Option("--password", help="NATS password [RANVIER_PASSWORD].")
]
Token = Annotated[str | None, typer.Option("--token", help="NATS token [RANVIER_TOKEN].")]
Creds = Annotated[
    Path | None, typer.Option("--creds", help="NATS .creds file [RANVIER_CREDS_FILE].")
]
NkeySeed = Annotated[
    Path | None, typer.Option("--nkey", help="File with an nkey seed [RANVIER_NKEY_SEED].")
]
TlsCa = Annotated[
    Path | None, typer.Option("--tls-ca", help="CA bundle for TLS [RANVIER_TLS_CA_FILE].")
]
Replicas = Annotated[
    int | None,
    typer.Option(
        "--replicas",
        min=1,
        max=5,
        help="Copies of each stream and KV bucket on a NATS cluster (1 on a single server; "
        "unset: existing ones keep theirs) [RANVIER_REPLICAS].",
    ),
]
StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="State directory (default ./.ranvier) [RANVIER_STATE_DIR]."),
]


def settings_from_flags(
    *,
    nats_url: str | None,
    user: str | None,
    password: str | None,
    token: str | None,
    creds: Path | None,
    nkey: Path | None,
    tls_ca: Path | None,
    state_dir: Path | None,
    replicas: int | None = None,
) -> Settings:
    """The settings of a command from its connection flags (then `RANVIER_*`, then defaults)."""
    return Settings.from_flags(
        replicas=replicas,
        nats_url=nats_url,
        user=user,
        password=password,
        token=token,
        creds_file=creds,
        nkey_seed=nkey,
        tls_ca_file=tls_ca,
        state_dir=state_dir,
    )


@dataclass(frozen=True)
class Connection:
    """A command's connection flags as given; `settings()` resolves them (it may fail)."""

    nats_url: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: Path | None = None
    nkey: Path | None = None
    tls_ca: Path | None = None
    state_dir: Path | None = None

    def settings(self, *, replicas: int | None = None) -> Settings:
        """The command's settings: these flags (and `--replicas` where a command has it), then
        `RANVIER_*`, then defaults."""
        return settings_from_flags(
            replicas=replicas,
            nats_url=self.nats_url,
            user=self.user,
            password=self.password,
            token=self.token,
            creds=self.creds,
            nkey=self.nkey,
            tls_ca=self.tls_ca,
            state_dir=self.state_dir,
        )


_FLAGS: tuple[inspect.Parameter, ...] = tuple(
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
    for name, annotation in (
        ("nats_url", NatsUrl),
        ("user", User),
        ("password", Password),
        ("token", Token),
        ("creds", Creds),
        ("nkey", NkeySeed),
        ("tls_ca", TlsCa),
        ("state_dir", StateDir),
    )
)


def with_connection(command: Callable[..., T]) -> Callable[..., T]:
    """Give a command the connection flags: typer sees `--nats-url` ... `--state-dir` where
    `command` takes `connection: Connection`, and `command` gets them as one `Connection`."""
    signature = inspect.signature(command, eval_str=True)
    if "connection" not in signature.parameters:
        raise TypeError(f"{command.__qualname__} takes no `connection` parameter")
    params = [
        flag
        for param in signature.parameters.values()
        for flag in (_FLAGS if param.name == "connection" else (param,))
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        flags = {flag.name: kwargs.pop(flag.name, None) for flag in _FLAGS}
        return command(*args, connection=Connection(**flags), **kwargs)

    # typer reads the options from the signature and their types from the annotations;
    # `__signature__` is inspect's documented override, which typeshed does not declare
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {
        "return": signature.return_annotation
    }
    return wrapper


AllNamespaces = Annotated[
    bool,
    typer.Option(
        "--all-namespaces", "-A", help="Find the Axon in any namespace (an error if two hold it)."
    ),
]


async def axon_namespace(bus: Bus, name: str, namespace: str, any_namespace: bool) -> str:
    """The namespace to act in: `namespace`, or with `-A` the one namespace that holds `name`."""
    if not any_namespace:
        return namespace
    found = sorted({s.namespace for s in await AxonStore(bus).list() if s.name == name})
    if not found:
        raise RanvierError(
            f"no Axon {name} was submitted in any namespace", hint="see `ranvier list axon`"
        )
    if len(found) > 1:
        raise RanvierError(
            f"Axon {name} is in namespaces {', '.join(found)}", hint="choose one with -n"
        )
    return found[0]


LOG_FORMATS: Final = ("text", "json")


def log_processors(log_format: str) -> list[Any]:
    """structlog processors for RANVIER_LOG_FORMAT: `text` (readable lines) or `json` (one
    object per line with `timestamp`, `level` and `event`, for log collectors)."""
    if log_format not in LOG_FORMATS:
        raise RanvierError(
            f"RANVIER_LOG_FORMAT={log_format}: not a log format", hint="set text or json"
        )
    if log_format == "text":
        return list(structlog.get_config()["processors"])
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks,
        structlog.processors.JSONRenderer(),
    ]


@contextlib.contextmanager
def cli_logging() -> Iterator[None]:
    """Logs go to stderr (stdout carries data, e.g. `events export`), at RANVIER_LOG_LEVEL, as
    RANVIER_LOG_FORMAT says (text or json).

    The previous structlog configuration is restored afterwards, so running a command
    in-process (tests, `ranvier up`) leaves the caller's logging as it was.
    """
    level = os.environ.get("RANVIER_LOG_LEVEL", "warning").upper()
    processors = log_processors(os.environ.get("RANVIER_LOG_FORMAT", "text").strip().lower())
    previous = structlog.get_config()
    structlog.configure(
        processors=processors,
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level, logging.WARNING)
        ),
    )
    try:
        yield
    finally:
        structlog.configure(**previous)


def run_command(coro: Awaitable[T]) -> T:
    """Run a command's coroutine; Ctrl-C ends it quietly with the conventional exit code."""

    async def wrapped() -> T:
        return await coro

    try:
        return asyncio.run(wrapped())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def read_event_lines(
    path: Path, parse: Callable[[bytes], T], *, refused: str, hint: str | None = None
) -> list[T]:
    """Every non-blank line of a JSON-lines file, parsed; if `parse` refuses any (EventError),
    each bad line is printed as FILE:LINE: error: ... and a RanvierError says nothing was
    `refused` (all lines are checked first, so a script never sees half an answer)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RanvierError(f"cannot read {path}: {exc.strerror}") from None
    items: list[T] = []
    bad: list[str] = []
    for number, text in enumerate(raw.split(b"\n"), start=1):
        line = text.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            items.append(parse(line))
        except EventError as exc:
            bad.append(f"{path}:{number}: error: {exc.message}")
    if bad:
        for message in bad[:MAX_REPORTED]:
            typer.echo(message, err=True)
        if len(bad) > MAX_REPORTED:
            typer.echo(f"{path}: ... and {len(bad) - MAX_REPORTED} more", err=True)
        raise RanvierError(f"{path}: {len(bad)} bad line(s), nothing {refused}", hint=hint)
    return items


async def connect_or_start(
    settings: Settings, body: Callable[[Bus], Awaitable[None]], *, read_only: bool
) -> None:
    """Connect and run `body`; for read-only work, start the embedded server on the state
    dir's store if the server recorded there is gone (so `get`, `logs` and `events export` work
    after `ranvier up` stopped)."""
    try:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            await body(bus)
        return
    except ConnectError:
        _, origin = settings.resolve_url()
        if not (read_only and origin == str(settings.url_file) and settings.store_dir.is_dir()):
            raise
    await on_own_server(settings, body)


async def on_own_server(settings: Settings, body: Callable[[Bus], Awaitable[None]]) -> None:
    """Run `body` against an embedded server started on the state dir's store (with the state
    dir's credentials: it listens on loopback, where other accounts may connect)."""
    credentials = server_credentials(settings.state_dir)
    options = settings.connect_options().model_copy(update=credentials.client_update())
    async with (
        EmbeddedServer(store_dir=settings.store_dir, **credentials.server_kwargs()) as srv,
        Bus.connect(options.model_copy(update={"servers": [srv.url]})) as bus,
    ):
        await body(bus)


__all__ = [
    "MAX_REPORTED",
    "Connection",
    "Creds",
    "NatsUrl",
    "NkeySeed",
    "Password",
    "Replicas",
    "StateDir",
    "TlsCa",
    "Token",
    "User",
    "cli_logging",
    "connect_or_start",
    "on_own_server",
    "read_event_lines",
    "run_command",
    "settings_from_flags",
    "with_connection",
]
