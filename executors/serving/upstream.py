"""A lean HTTP/1.1 keep-alive transport for the router's calls to model servers.

Profiling `bench/router.py` showed httpcore's connection pool costing most of the router's
time per request (a readability `select()` on every pooled connection for every request, lock
juggling through anyio), which held the router to a fifth of the model server's throughput.
The router only ever speaks plain HTTP/1.1 to its own model servers, so this transport keeps
httpx's client API (one shared `httpx.AsyncClient`, its timeouts and exceptions) and replaces
only the pool underneath: idle connections in a per-host list, one write per request, responses
read by `Content-Length` or chunked. Anything else (https, a proxy) goes to httpx's own
transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx

_MAX_HEAD = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class RawResponse(NamedTuple):
    """What the router needs of an answer."""

    status: int
    content_type: str
    content: bytes
    retry_after: str | None = None


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[str, int, str, str]:
    """host, port, Host header and request target of a plain-http URL (cached: few distinct)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not a plain http URL: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, parts.netloc, target


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before it answered."""


class _Connection:
    """One open HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


def _head(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1".encode("ascii")]
    has_length = False
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"content-length":
            has_length = True
        if lowered == b"transfer-encoding":
            continue  # the body is sent whole, with a Content-Length
        lines.append(name + b": " + value)
    if not has_length and (body or request.method not in ("GET", "HEAD")):
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError(f"bad header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # trailers, then the final empty line
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP/1.1 keep-alive pool; other schemes go to httpx's default transport."""

    def __init__(self, *, max_idle_per_host: int = 256) -> None:
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._fallback = httpx.AsyncHTTPTransport()

    async def _open(self, host: str, port: int, connect_s: float | None) -> _Connection:
        try:
            async with asyncio.timeout(connect_s):
                reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEAD)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return _Connection(reader, writer)

    async def _exchange(
        self, conn: _Connection, method: str, data: bytes, *, reused: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send one request and read its answer; returns status, headers, body, keep-alive."""
        conn.writer.write(data)
        try:
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if reused and not getattr(exc, "partial", b""):
                raise _StaleConnection from exc
            raise httpx.ReadError(f"connection closed before an answer: {exc!r}") from exc
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("answer headers are too large") from exc
        status, headers = _parse_head(head[:-4])
        length: int | None = None
        chunked = False
        close = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lowered == b"connection":
                close = b"close" in value.lower()
        if method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
            body = b""
        elif chunked:
            body = await _read_chunked(conn.reader)
        elif length is not None:
            body = await conn.reader.readexactly(length)
        else:
            body = await conn.reader.read()
            close = True
        return status, headers, body, not close

    async def _roundtrip(
        self,
        host: str,
        port: int,
        message: bytes,
        *,
        method: str,
        timeouts: Mapping[str, float | None],
        where: str,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send one serialised request on an idle connection (or a new one); read the answer."""
        idle = self._idle.setdefault((host, port), [])
        for _attempt in range(2):
            reused = bool(idle)
            conn = idle.pop() if idle else await self._open(host, port, timeouts.get("connect"))
            try:
                async with asyncio.timeout(timeouts.get("read")):
                    status, headers, body, keep = await self._exchange(
                        conn, method, message, reused=reused
                    )
            except _StaleConnection:
                conn.close()
                continue  # the server closed an idle connection: try a fresh one
            except TimeoutError as exc:
                conn.close()
                raise httpx.ReadTimeout(f"{where} did not answer in time") from exc
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                raise httpx.ReadError(f"{where}: {exc!r}") from exc
            except BaseException:
                conn.close()
                raise
            if keep and len(idle) < self.max_idle_per_host:
                idle.append(conn)
            else:
                conn.close()
            return status, headers, body
        raise httpx.ReadError(f"{where}: the server keeps closing connections")

    async def post(
        self, url: str, body: bytes, content_type: str, timeouts: Mapping[str, float | None]
    ) -> RawResponse:
        """POST `body` to a plain-http URL without building httpx objects (the router's hot path).

        Raises the same httpx exceptions as a client call would.
        """
        host, port, netloc, target = _split(url)
        message = (
            f"POST {target} HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        status, headers, content = await self._roundtrip(
            host, port, message, method="POST", timeouts=timeouts, where=url
        )
        ctype = next(
            (v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"),
            "application/json",
        )
        retry_after = next(
            (v.decode("latin-1") for k, v in headers if k.lower() == b"retry-after"), None
        )
        return RawResponse(status, ctype, content, retry_after)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` on an idle connection to its host (or a new one)."""
        if request.url.scheme != "http":
            return await self._fallback.handle_async_request(request)
        data = await request.aread()
        status, headers, body = await self._roundtrip(
            request.url.host,
            request.url.port or 80,
            _head(request, data) + data,
            method=request.method,
            timeouts=request.extensions.get("timeout", {}),
            where=str(request.url),
        )
        return httpx.Response(
            status,
            headers=headers,
            content=body,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                with contextlib.suppress(Exception):
                    conn.close()
        self._idle.clear()
        await self._fallback.aclose()
