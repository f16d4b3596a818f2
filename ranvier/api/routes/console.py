"""The browser console: its page at `/` and its static files under `/static`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC: Final = "/static"
FILES: Final = resources.files("ranvier.api") / "static"
INDEX: Final = Path(str(FILES / "index.html"))

router = APIRouter(include_in_schema=False)


@router.get("/")
async def console() -> FileResponse:
    """The console's page, sent `no-cache` so the browser always revalidates it."""
    return FileResponse(INDEX, headers={"Cache-Control": "no-cache"})


def mount_static(app: FastAPI) -> None:
    """Serve the console's files under `STATIC`."""
    app.mount(STATIC, StaticFiles(directory=str(FILES)), name="static")
