"""Running an ASGI app on a port: uvicorn as every ranvier HTTP server runs it.

A process that serves one app alone (`ranvier serve`, the router on its own) uses `serve_app`,
which owns SIGINT/SIGTERM; a role inside a process that runs several uses `serving`, which
leaves signals to that process. Both bind the socket first, so port 0 picks a free port and
the bound URL is known before anyone is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Literal

import structlog
import uvicorn

from events.errors import RanvierError

log = structlog.get_logger(__name__)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a server's main coroutine, on uvloop when it is installed (it is much faster)."""
    try:
        import uvloop
    except ImportError:  # optional: the stdlib loop works, only slower
        asyncio.run(main)
    else:
        uvloop.run(main)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it small answers wait ~40 ms for delayed ACKs (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RanvierError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="choose another --port, or 0 for a free one",
        ) from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The http:// URL a bound socket serves."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def uvicorn_config(
    app: Any, *, lifespan: Literal["on", "off"] = "on", graceful: int | None = None
) -> uvicorn.Config:
    """How every ranvier HTTP server runs uvicorn: quiet, no access log, no Server header,
    `graceful` seconds for requests in flight when it stops."""
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=graceful,
        proxy_headers=False,  # nothing sits in front that sets X-Forwarded-*; saves a middleware
        server_header=False,
    )


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process that runs the roles owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(
    app: Any,
    host: str,
    port: int,
    *,
    lifespan: Literal["on", "off"] = "on",
    graceful: int | None = None,
) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    """Serve `app` on host:port in this event loop while the block runs (a role of a process
    that owns its signals); yields the bound URL, once it accepts, and the serving task (await
    it to serve until cancelled). Leaving the block stops it and closes the socket."""
    sock = bind_socket(host, port)
    server = _QuietServer(uvicorn_config(app, lifespan=lifespan, graceful=graceful))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task  # start-up failed: raise why
                raise RanvierError(f"the server on {host}:{port} stopped during start-up")
            await asyncio.sleep(0.01)
        yield url_of(sock), task
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


async def serve_app(
    app: Any,
    host: str,
    port: int,
    *,
    on_listening: Callable[[str], Awaitable[None] | None] | None = None,
) -> None:
    """Serve an ASGI app with uvicorn until stopped (SIGINT/SIGTERM); reports the bound URL."""
    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn_config(app))

    async def announce() -> None:
        # uvicorn exposes start-up only as a flag, so poll it
        while not server.started and not server.should_exit:  # noqa: ASYNC110 -- see above
            await asyncio.sleep(0.01)
        if server.started:
            url = url_of(sock)
            log.info("serving.listening", url=url)
            if on_listening is not None:
                result = on_listening(url)
                if inspect.isawaitable(result):
                    await result

    announcer = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        sock.close()
