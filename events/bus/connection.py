"""Connecting to NATS: options to a client, clear errors for what users can cause, closing."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import (
    Awaitable,
)
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from events import subjects
from events.bus.core import (
    START_HINT,
    AuthError,
    ConnectError,
    ConnectOptions,
    StreamLimits,
)
from events.model import DEFAULT_MAX_PAYLOAD

log = structlog.get_logger(__name__)


class BusConnection:
    """A NATS connection with JetStream, and what ranvier keeps about it."""

    def __init__(
        self,
        nc: Client,
        options: ConnectOptions,
        limits: StreamLimits,
        callbacks: Callbacks | None = None,
    ) -> None:
        self.nc = nc
        self._callbacks = callbacks
        self.js: JetStreamContext = nc.jetstream(timeout=options.request_timeout)
        self.options = options
        self.limits = limits
        self._kv: dict[str, KeyValue] = {}
        self.partitions = limits.partitions or subjects.DEFAULT_PARTITIONS
        """The events stream's partition count (read from the stream by `ensure_topology`)."""
        # Iterator-style subscriptions still open; drain() would wait for their unread
        # messages until its timeout, so close() unsubscribes them first.
        self._open_subs: set[Any] = set()

    async def next_reconnect(self) -> None:
        """Return when the connection next comes back after an outage.

        A server restart forgets ephemeral consumers, so a KV watch (an ordered consumer)
        may stall after it; followers use this to watch again.
        """
        if self._callbacks is None:
            await asyncio.Event().wait()  # never reconnects: wait until cancelled
            return
        await self._callbacks.reconnect.wait()

    async def close(self) -> None:
        """Drain (finish in-flight work) then close; safe to call twice."""
        if self.nc.is_closed:
            return
        if self._callbacks is not None:
            self._callbacks.closing = True
        for sub in list(self._open_subs):
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._open_subs.clear()
        try:
            await self.nc.drain()
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("bus.drain_failed", error=repr(exc))
        finally:
            if not self.nc.is_closed:
                try:
                    await self.nc.close()
                except OSError as exc:  # the server died under us: nothing is left to flush
                    log.warning("bus.close_failed", error=repr(exc))

    @property
    def max_payload(self) -> int:
        """The largest message the connected server accepts (from its INFO)."""
        return int(self.nc.max_payload or DEFAULT_MAX_PAYLOAD)

    @property
    def url(self) -> str:
        """The server currently connected to."""
        server = self.nc.connected_url
        return server.geturl() if server is not None else self.options.url


class Callbacks:
    """nats-py's connection callbacks, logged as structlog events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures: list[BaseException] = []
        self.connected = False  # errors before the first connect are raised, not logged
        self.closing = False
        self.reconnect = asyncio.Event()  # set (then replaced) at each reconnect

    async def error(self, exc: Exception) -> None:
        self.failures.append(exc)
        if self.connected and not self.closing:
            log.warning("bus.error", url=self.url, error=repr(exc))

    async def disconnected(self) -> None:
        if self.connected and not self.closing:
            log.warning("bus.disconnected", url=self.url)

    async def reconnected(self) -> None:
        log.info("bus.reconnected", url=self.url)
        fired, self.reconnect = self.reconnect, asyncio.Event()
        fired.set()

    async def closed(self) -> None:
        log.debug("bus.closed", url=self.url)


async def open_connection(options: ConnectOptions) -> tuple[Client, Callbacks]:
    """Connect once without retrying (so failures are quick and clear), then allow reconnects."""
    cb = Callbacks(options.url)
    kwargs: dict[str, Any] = {
        "servers": options.servers,
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        # nats-py tries each server until it is over max_reconnect_attempts (1: twice).
        "reconnect_time_wait": 0.05,
        "max_reconnect_attempts": 1,
        "allow_reconnect": False,
        "error_cb": cb.error,
        "disconnected_cb": cb.disconnected,
        "reconnected_cb": cb.reconnected,
        "closed_cb": cb.closed,
        "user": options.user,
        "password": options.password,
        "token": options.token,
    }
    for path, what in ((options.creds_file, "creds file"), (options.nkey_seed, "nkey seed")):
        if path is not None and not path.is_file():
            raise ConnectError(f"{what} {path} does not exist")
    if options.creds_file is not None:
        kwargs["user_credentials"] = str(options.creds_file)
    if options.nkey_seed is not None:
        kwargs["nkeys_seed"] = str(options.nkey_seed)
    if options.tls_ca_file is not None:
        kwargs["tls"] = _tls_context(options.tls_ca_file)
    nc = Client()
    try:
        await nc.connect(**kwargs)
    except nats.errors.AuthorizationError:
        await _discard(nc)
        raise _auth_error(options) from None
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        await _discard(nc)
        if any(isinstance(f, nats.errors.AuthorizationError) for f in cb.failures) or (
            "authorization" in str(exc).lower()
        ):
            raise _auth_error(options) from None
        cause = cb.failures[-1] if cb.failures else exc
        if isinstance(cause, ssl.SSLError):
            raise ConnectError(
                f"TLS with the NATS server at {options.url} failed ({_reason(cause)})",
                hint="pass the CA that signed its certificate with --tls-ca (RANVIER_TLS_CA_FILE)",
            ) from None
        raise ConnectError(
            f"cannot reach a NATS server at {options.url} ({_reason(cause)})", hint=START_HINT
        ) from None
    # Connected: from now on a lost connection is retried rather than fatal. nats-py reads
    # these options at reconnect time, so enabling them after the first connect is safe.
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = options.max_reconnect_attempts
    nc.options["reconnect_time_wait"] = options.reconnect_wait
    cb.connected = True
    return nc, cb


async def _discard(nc: Client) -> None:
    """Close a client whose first connect failed (nats-py leaves its socket open)."""
    # Best effort and bounded: after a failed TLS handshake the stream never reports itself
    # closed, so the close runs as its own task that we stop waiting for after a second.
    await _bounded(nc.close())
    transport = getattr(nc, "_transport", None)  # nats-py keeps the socket here
    if transport is not None:
        transport.close()
        await _bounded(transport.wait_closed())


async def _bounded(aw: Awaitable[Any], seconds: float = 1.0) -> None:
    """Run `aw` for at most `seconds`, ignoring its outcome (cleanup that may hang)."""
    task = asyncio.ensure_future(aw)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieve, never raise
    _, pending = await asyncio.wait([task], timeout=seconds)
    for late in pending:
        late.cancel()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text or type(exc).__name__


def _auth_error(options: ConnectOptions) -> AuthError:
    if options.token:
        used = "the token given"
    elif options.user:
        used = f"user {options.user!r}"
    elif options.creds_file or options.nkey_seed:
        used = "the credentials given"
    else:
        used = "no credentials"
    return AuthError(
        f"authorization failed at {options.url} with {used}",
        hint="check --user/--password, --token or --creds (or RANVIER_USER, ...); the server "
        "of `ranvier up` or `ranvier server` takes the token kept in its --state-dir, which "
        "commands run with that --state-dir present by themselves",
    )


def _tls_context(ca_file: Path) -> ssl.SSLContext:
    if not ca_file.is_file():
        raise ConnectError(f"TLS CA file {ca_file} does not exist")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConnectError(f"cannot use {ca_file} as a TLS CA bundle: {exc.reason}") from None
