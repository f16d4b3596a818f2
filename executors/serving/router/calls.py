"""The router's calls to model servers: one pooled connection set, per-backend waits, shadows.

Every backend call goes through one `KeepAliveTransport` (our own model servers over plain
HTTP/1.1, without building httpx request and response objects) or, for other URLs, one shared
`httpx.AsyncClient`. Each call waits the backend's own `timeout` from the table (its model's
timeout and a margin), else the router's default. Shadows get a fire-and-forget copy whose
outcome is only counted; at most `max_shadows` are in flight and more are dropped (and
counted), so a slow shadow can neither delay answers nor hold unbounded copies of bodies.
"""

from __future__ import annotations

import asyncio

import httpx
from fastapi.responses import Response
from prometheus_client import Counter

from executors.serving.routing import Backend
from executors.serving.upstream import KeepAliveTransport, RawResponse


class BackendCalls:
    """POSTs and health probes to model servers; shadows mirrored in the background."""

    def __init__(
        self, *, timeout: float, max_connections: int, max_shadows: int, shadows: Counter
    ) -> None:
        self.timeout = timeout
        self.max_shadows = max_shadows
        self.shadows = shadows
        self._client: httpx.AsyncClient | None = None
        self._timeouts: dict[str, float | None] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._transport = KeepAliveTransport(max_idle_per_host=max_connections)

    @property
    def client(self) -> httpx.AsyncClient:
        """The shared HTTP client (exists between open and close)."""
        if self._client is None:
            raise RuntimeError("Router.start() first")
        return self._client

    def open(self) -> None:
        """Open the shared client."""
        timeout = httpx.Timeout(self.timeout, connect=5.0)
        self._timeouts = timeout.as_dict()
        self._client = httpx.AsyncClient(timeout=timeout, transport=self._transport)

    async def close(self) -> None:
        """Let shadows finish briefly, then close the client."""
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)
        for task in self._background:
            task.cancel()
        if self._client is not None:
            await self._client.aclose()

    async def post(
        self, url: str, content: bytes, content_type: str, read_s: float | None = None
    ) -> RawResponse:
        """POST to a backend; `read_s` (a backend's own wait) replaces the router's default."""
        timeouts = self._timeouts if read_s is None else {**self._timeouts, "read": read_s}
        if url.startswith("http://"):
            # The hot path: our own model servers over plain HTTP/1.1, without building httpx
            # request and response objects (they cost a third of the router's time).
            return await self._transport.post(url, content, content_type, timeouts)
        response = await self.client.post(
            url,
            content=content,
            headers={"content-type": content_type},
            timeout=httpx.Timeout(**timeouts) if read_s is not None else httpx.USE_CLIENT_DEFAULT,
        )
        return RawResponse(
            response.status_code,
            response.headers.get("content-type", "application/json"),
            response.content,
            response.headers.get("retry-after"),
        )

    def mirror(
        self, axon: str, model: str, backend: Backend, url: str, *, body: bytes, ctype: str
    ) -> None:
        """Send a copy to a shadow in the background (dropped when too many are in flight)."""
        labels = (axon, model, backend.name, backend.version)
        if len(self._background) >= self.max_shadows:
            self.shadows.labels(*labels, "dropped").inc()
            return

        async def send() -> None:
            try:
                response = await self.post(url, body, ctype, backend.timeout)
                outcome = "ok" if response.status < 400 else "http_error"
            except Exception:  # a shadow's failure never reaches the caller: it is counted
                outcome = "error"
            self.shadows.labels(*labels, outcome).inc()

        task = asyncio.create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def healthy(self, urls: list[str]) -> dict[str, bool]:
        """GET every URL at once (5 s each): which answered 200."""

        async def probe(url: str) -> tuple[str, bool]:
            try:
                response = await self.client.get(url, timeout=5.0)
            except httpx.HTTPError:
                return url, False
            return url, response.status_code == 200

        return dict(await asyncio.gather(*(probe(u) for u in urls)))


def passed_on(answer: RawResponse) -> Response:
    """A backend's answer as the router's own (a full server's `Retry-After` kept)."""
    headers = {"retry-after": answer.retry_after} if answer.retry_after else None
    return Response(
        answer.content,
        status_code=answer.status,
        media_type=answer.content_type,
        headers=headers,
    )
