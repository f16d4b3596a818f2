"""The API role: the API and console on one port, in the process that runs the roles.

Loopback by default. Writes always need the bearer token: `RANVIER_API_TOKEN`, else (on a
loopback address only) a token generated at start and written to `<state-dir>/api.token`
(mode 0600), which `curl -H "Authorization: Bearer $(cat .ranvier/api.token)"` reads. Bound
to any other address the role refuses to start without `RANVIER_API_TOKEN`, since every
request must then carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from events.bus import Bus
from events.server import write_private
from executors.serving.hosting import serving
from ranvier.api.routes import create_app
from ranvier.app import AppError
from ranvier.settings import is_loopback

log = structlog.get_logger(__name__)

TOKEN_ENV: Final = "RANVIER_API_TOKEN"
TOKEN_FILE: Final = "api.token"
URL_FILE: Final = "api.url"


def api_token(host: str, state_dir: Path, environ: dict[str, str] | None = None) -> str:
    """The token the API checks: RANVIER_API_TOKEN, else one generated into the state dir
    (loopback only); an AppError when bound elsewhere without one."""
    env = os.environ if environ is None else environ
    given = env.get(TOKEN_ENV, "").strip()
    if given:
        return given
    if not is_loopback(host):
        raise AppError(
            f"the API would listen on {host} without a token",
            hint=f"set {TOKEN_ENV}, which every request must then carry, or bind it to 127.0.0.1",
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / TOKEN_FILE
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


class ApiRole:
    """Serves the API and console until cancelled; records its URL in `<state-dir>/api.url`."""

    def __init__(
        self,
        bus: Bus,
        *,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        """Raises AppError at once when bound off loopback without RANVIER_API_TOKEN."""
        self.bus = bus
        self.host = host
        self.port = port
        self.state_dir = state_dir
        self.on_listening = on_listening
        self.token = api_token(host, state_dir)
        self.url: str | None = None
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled; then stop accepting, finish requests, remove `api.url`."""
        app = create_app(self.bus, token=self.token, public=not is_loopback(self.host))
        url_file = self.state_dir / URL_FILE
        try:
            async with serving(app, self.host, self.port, lifespan="off", graceful=2) as (
                bound,
                task,
            ):
                self.url = bound + "/"
                url_file.parent.mkdir(parents=True, exist_ok=True)
                url_file.write_text(self.url + "\n", encoding="utf-8")
                log.info("api.listening", url=self.url)
                self.listening.set()
                if self.on_listening is not None:
                    self.on_listening(self.url)
                await asyncio.shield(task)
        finally:
            if self.url is not None:
                with contextlib.suppress(OSError):
                    if url_file.read_text(encoding="utf-8").strip() == self.url:
                        url_file.unlink()
