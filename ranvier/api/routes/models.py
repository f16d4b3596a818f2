"""The model routes: an Axon's model versions, deployments and Alert series."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ranvier.api import views
from ranvier.api.routes.common import API, BusDep, Stored, axon_decisions, axon_events, start_of
from ranvier.app import axon_status
from sensors.axons import StoredAxon

router = APIRouter(tags=["models"])


@router.get(f"{API}/axons/{{namespace}}/{{axon}}/models")
async def models(stored: Stored, bus: BusDep) -> list[dict[str, Any]]:
    """Model versions of each train task, with their metrics."""
    status = await axon_status(bus, stored)
    return [
        {
            "task": m["task"],
            "versions": [{k: v for k, v in ver.items() if k != "path"} for ver in m["versions"]],
            "lossMetric": _loss_metric(stored, m["task"]),
        }
        for m in status["models"]
    ]


@router.get(f"{API}/axons/{{namespace}}/{{axon}}/deployments")
async def deployments(stored: Stored, bus: BusDep) -> list[dict[str, Any]]:
    """Deployments with their models, backends (versions) and traffic weights."""
    return list((await axon_status(bus, stored))["deployments"])


@router.get(f"{API}/axons/{{namespace}}/{{axon}}/alerts")
async def alerts(
    stored: Stored,
    bus: BusDep,
    since: Annotated[str | None, Query(description="10m, 2h, 1d or RFC 3339")] = None,
) -> list[dict[str, Any]]:
    """Each Alert trigger's metric values over time, its threshold and when it fired."""
    metrics = [
        {"time": e["time"], **e["data"]}
        for e in await axon_events(bus, stored, "metric", start_of(since), limit=None)
    ]
    return views.alert_series(stored.axon, metrics, await axon_decisions(bus, stored))


def _loss_metric(stored: StoredAxon, task: str) -> str | None:
    for spec in stored.axon.spec.tasks:
        if spec.name == task and spec.train is not None:
            return spec.train.loss_metric
    return None
