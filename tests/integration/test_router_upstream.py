"""The router's keep-alive transport against a raw HTTP server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from executors.serving.upstream import KeepAliveTransport

pytestmark = pytest.mark.integration

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head.split(b" ")[1] + b" " + await reader.readexactly(length)


ANSWERS: dict[bytes, bytes] = {
    b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"/chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\nX-Trailer: 1\r\n\r\n"
    ),
    b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/error": b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
}


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[int]]]:
    """A raw server; `connections` counts accepted connections."""
    connections: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writers.append(writer)
        served = 0
        while (request := await _read_request(reader)) is not None:
            path, _, body = request.partition(b" ")
            served += 1
            if path == b"/echo":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            elif path == b"/close":
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof")
                break
            elif path == b"/slow":
                await asyncio.sleep(5)
            elif path == b"/once":
                # answer, then drop the connection as an idle keep-alive would be dropped
                writer.write(ANSWERS[b"/length"])
                await writer.drain()
                break
            else:
                writer.write(ANSWERS[path])
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield f"http://127.0.0.1:{port}", connections
        listener.close()
        for writer in writers:  # connections still open (the slow one) end with the test
            writer.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=KeepAliveTransport(), timeout=2.0) as http:
        yield http


@pytest.mark.parametrize(
    ("path", "status", "content"),
    [
        ("/length", 200, b"hello"),
        ("/chunked", 200, b"hello"),
        ("/empty", 204, b""),
        ("/error", 503, b"busy"),
        ("/close", 200, b"until-eof"),
    ],
)
async def test_answer_framings(
    server: tuple[str, list[int]], client: httpx.AsyncClient, path: str, status: int, content: bytes
) -> None:
    url, _ = server
    response = await client.post(url + path, content=b"x")
    assert (response.status_code, response.content) == (status, content)


async def test_connections_are_reused(
    server: tuple[str, list[int]], client: httpx.AsyncClient
) -> None:
    url, connections = server
    bodies = [f"request {i}".encode() for i in range(20)]
    for body in bodies:
        assert (await client.post(url + "/echo", content=body)).content == body
    assert len(connections) == 1
    answers = await asyncio.gather(*(client.post(url + "/echo", content=b) for b in bodies))
    assert [a.content for a in answers] == bodies


async def test_a_connection_the_server_dropped_is_replaced(
    server: tuple[str, list[int]], client: httpx.AsyncClient
) -> None:
    url, connections = server
    assert (await client.post(url + "/once", content=b"")).content == b"hello"
    await asyncio.sleep(0.05)  # let the close reach us, as an idle timeout would
    assert (await client.post(url + "/echo", content=b"again")).content == b"again"
    assert len(connections) == 2


async def test_timeouts_and_refused_connections_are_httpx_errors(
    server: tuple[str, list[int]], client: httpx.AsyncClient
) -> None:
    url, _ = server
    with pytest.raises(httpx.ReadTimeout):
        await client.post(url + "/slow", content=b"", timeout=0.2)
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/", content=b"")


async def test_raw_post_is_the_same_exchange_without_httpx_objects(
    server: tuple[str, list[int]],
) -> None:
    url, connections = server
    transport = KeepAliveTransport()
    timeouts = {"connect": 2.0, "read": 2.0}
    try:
        for body in (b"one", b"two"):
            answer = await transport.post(url + "/echo", body, "text/plain", timeouts)
            assert (answer.status, answer.content, answer.content_type) == (
                200,
                body,
                "application/json",  # the raw server names none: JSON is assumed
            )
        assert (await transport.post(url + "/error", b"", "text/plain", timeouts)).status == 503
        assert len(connections) == 1
        with pytest.raises(ValueError, match="not a plain http URL"):
            await transport.post("https://example.invalid/", b"", "text/plain", timeouts)
    finally:
        await transport.aclose()
