"""The run routes: an Axon's sensor runs, a task run's log, and a run's causal trace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from events import subjects
from events.bus import Bus
from executors.runner import TaskRun
from ranvier.api import views
from ranvier.api.routes.common import (
    API,
    POLL,
    BusDep,
    Name,
    Stored,
    axon_decisions,
    axon_events,
)
from ranvier.app import NotFoundError, axon_status, task_runs

router = APIRouter(tags=["runs"])


@router.get(f"{API}/axons/{{namespace}}/{{axon}}/runs")
async def list_runs(stored: Stored, bus: BusDep) -> list[dict[str, Any]]:
    """Every sensor run of the Axon with its task runs (Myelin's children), oldest first."""
    doc = views.myelin_axon(await axon_status(bus, stored), stored.axon)
    runs = [{"sensor": s["name"], **run} for s in doc["sensors"] for run in s["children"]]
    return sorted(runs, key=lambda r: r.get("startedAtTs") or 0)


@router.get(
    f"{API}/axons/{{namespace}}/{{axon}}/tasks/{{task}}/runs/{{run_id}}/log",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def task_log(
    namespace: Name,
    axon: Name,
    task: Name,
    run_id: Name,
    *,
    bus: BusDep,
    follow: Annotated[bool, Query(description="Stream until the run ends.")] = False,
) -> StreamingResponse:
    """A task run's output (stdout and stderr); with `follow`, streamed until it ends."""
    runs = [r for r in await task_runs(bus, namespace, axon, task) if r.id == run_id]
    if not runs:
        raise NotFoundError(f"task {task!r} of Axon {namespace}/{axon} has no run {run_id}")
    run = runs[0]
    if not run.log_path:
        raise NotFoundError(f"run {run.id} of {task} has no log ({run.phase}: {run.message})")
    try:
        path = Path(run.log_path)
        source = path.open("rb")  # noqa: ASYNC230  # a local file, read in small pieces
    except OSError as exc:
        raise NotFoundError(f"the log of run {run.id} is unreadable: {exc.strerror}") from None
    return StreamingResponse(
        _log_chunks(bus, run, source, follow=follow), media_type="text/plain; charset=utf-8"
    )


async def _log_chunks(
    bus: Bus, run: TaskRun, source: BinaryIO, *, follow: bool
) -> AsyncIterator[bytes]:
    """The log file's bytes; with `follow`, polled until the run's record is terminal."""
    current = run
    with source:
        while True:
            data = source.read(65536)
            if data:
                yield data
                continue
            if not follow or current.phase in views.TERMINAL:
                return
            await asyncio.sleep(POLL / 2)
            got = await bus.kv_get(subjects.RUNS_BUCKET, current.key)
            current = TaskRun.from_json(got[0]) if got is not None else current


@router.get(f"{API}/axons/{{namespace}}/{{axon}}/runs/{{run_id}}/trace")
async def run_trace(stored: Stored, run_id: Name, bus: BusDep) -> dict[str, Any]:
    """The chain from the event that started the run to the deployment it led to."""
    status = await axon_status(bus, stored)
    if not any(r["id"] == run_id for s in status["sensors"] for r in s["runs"]):
        raise NotFoundError(f"Axon {stored.name} has no sensor run {run_id}")
    found = await axon_events(bus, stored, None, None, limit=None)
    links = views.trace(
        run_id, status, await axon_decisions(bus, stored), {e["id"]: e for e in found}
    )
    return {"run": run_id, "links": links}
