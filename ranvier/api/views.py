"""Pure views over the `get axon -o json` document and recorded events: what the API answers.

Each function takes plain data already read from the bus (an `axon_status` document, the
Axon's spec, decision and event records) and shapes it; none does I/O, so each is tested
with plain dicts and the HTTP layer stays a thin reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sensors.expr import Compare, ExprError, Query, parse_condition
from sensors.spec import AlertTrigger, Axon, CalendarTrigger, LifecycleTrigger, RestTrigger

TERMINAL: Final = ("Succeeded", "Failed")
MAX_TRACE_DEPTH: Final = 8


def epoch(stamp: object) -> int | None:
    """An RFC 3339 time as Unix seconds (Myelin's `startedAtTs`), None when absent or bad."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def axon_phase(status: Mapping[str, Any]) -> str:
    """One word for an Axon: Deleted, Pending (no run yet), Running, Failed or Succeeded.

    Running while any sensor run or task run is not finished; otherwise the phase of the
    latest sensor run (a retrain that failed after a good deploy shows Failed).
    """
    if status.get("deleted"):
        return "Deleted"
    sensor_runs = [r for s in status["sensors"] for r in s["runs"]]
    task_runs = [r for t in status["tasks"] for r in t["runs"]]
    if not sensor_runs and not task_runs:
        return "Pending"
    if any(r.get("phase") not in TERMINAL for r in [*sensor_runs, *task_runs]):
        return "Running"
    latest = max(sensor_runs, key=lambda r: str(r.get("started") or ""), default=None)
    return str(latest.get("phase")) if latest is not None else "Succeeded"


def last_run(status: Mapping[str, Any]) -> dict[str, Any] | None:
    """The most recently started sensor run: sensor, id, phase, started."""
    runs = [{"sensor": s["name"], **r} for s in status["sensors"] for r in s["runs"]]
    if not runs:
        return None
    run = max(runs, key=lambda r: str(r.get("started") or ""))
    return {k: run.get(k) for k in ("sensor", "id", "phase", "started", "finished")}


def endpoint_of(status: Mapping[str, Any]) -> str | None:
    """The Axon's fixed URL, when something is deployed and a router serves it."""
    for deployment in status.get("deployments") or []:
        url = deployment.get("url")
        if isinstance(url, str):
            return url
    return None


def axon_summary(status: Mapping[str, Any], submitted: str) -> dict[str, Any]:
    """A row of the Axons list."""
    return {
        "name": status["name"],
        "namespace": status["namespace"],
        "generation": status["generation"],
        "submitted": submitted,
        "phase": axon_phase(status),
        "lastRun": last_run(status),
        "endpoint": endpoint_of(status),
    }


def trigger_view(trigger: object) -> dict[str, Any]:
    """A trigger as the console draws it (type, name and what makes it fire)."""
    if isinstance(trigger, LifecycleTrigger):
        return {
            "name": trigger.name,
            "type": "Lifecycle",
            "task": trigger.task,
            "condition": trigger.condition,
        }
    if isinstance(trigger, AlertTrigger):
        return {"name": trigger.name, "type": "Alert", "condition": trigger.condition}
    if isinstance(trigger, CalendarTrigger):
        return {
            "name": trigger.name,
            "type": "Calendar",
            "schedule": trigger.schedule,
            "interval": trigger.interval,
        }
    if isinstance(trigger, RestTrigger):
        return {"name": trigger.name, "type": "Rest"}
    return {"name": getattr(trigger, "name", "?"), "type": getattr(trigger, "type", "?")}


def sensor_steps(axon: Axon, sensor: str) -> list[list[dict[str, str]]]:
    """A sensor's steps in order, each a list of its parallel actions (kind and task)."""
    found = axon.spec.sensor(sensor)
    if found is None:
        return []
    return [[{"kind": a.kind, "task": a.task_name} for a in step] for step in found.steps]


def myelin_axon(status: Mapping[str, Any], axon: Axon) -> dict[str, Any]:
    """`GET /api/v1/axons/{ns}/{axon}`: Myelin's admin-API shape plus ours.

    `sensors[].children[]` are sensor runs and their `children[]` the task runs they started
    (`name`, `taskName`, `status`, `startedAtTs` as Myelin's SDK reads them); `tasks`,
    `models` and `deployments` are the `get axon -o json` contract unchanged.
    """
    task_runs = {r["id"]: {"taskName": t["name"], **r} for t in status["tasks"] for r in t["runs"]}
    sensors = []
    spec_sensors = {s.name: s for s in axon.spec.sensors}
    for sensor in status["sensors"]:
        spec = spec_sensors.get(sensor["name"])
        children = []
        for run in sensor["runs"]:
            tasks = [
                _task_child(task_runs[step["run_id"]], step)
                for step in run["steps"]
                if step.get("run_id") in task_runs
            ]
            children.append(
                {
                    "name": run["id"],
                    "id": run["id"],
                    "status": run.get("phase"),
                    "trigger": run.get("trigger"),
                    "reason": run.get("reason"),
                    "startedAtTs": epoch(run.get("started")),
                    "finishedAtTs": epoch(run.get("finished")),
                    "steps": run["steps"],
                    "children": tasks,
                }
            )
        sensors.append(
            {
                "name": sensor["name"],
                "triggers": [trigger_view(t) for t in spec.triggers] if spec else [],
                "steps": sensor_steps(axon, sensor["name"]),
                "children": children,
            }
        )
    return {
        "name": status["name"],
        "namespace": status["namespace"],
        "generation": status["generation"],
        "phase": axon_phase(status),
        "endpoint": endpoint_of(status),
        "sensors": sensors,
        "tasks": [_public_task(t) for t in status["tasks"]],
        "models": [
            {
                **m,
                "versions": [
                    {k: v for k, v in ver.items() if k != "path"} for ver in m["versions"]
                ],
            }
            for m in status["models"]
        ],
        "deployments": status["deployments"],
    }


def _task_child(run: Mapping[str, Any], step: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": run["id"],
        "id": run["id"],
        "taskName": run["taskName"],
        "status": run.get("phase"),
        "startedAtTs": epoch(run.get("started")),
        "finishedAtTs": epoch(run.get("finished")),
        "step": step.get("index"),
        "kind": step.get("kind"),
        "message": run.get("message"),
        "version": run.get("version"),
    }


def _public_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task with its runs, without where its log lies on the server's disk."""
    return {
        **task,
        "runs": [{k: v for k, v in r.items() if k != "log_path"} for r in task["runs"]],
    }


# ---------------------------------------------------------------------------------------------
# Alerts: the metric each Alert watches, its threshold and when it fired


def threshold_of(condition: str) -> dict[str, Any] | None:
    """`{query, op, value}` when the condition is one comparison of a query with a number.

    `{{acc}} < 0.9` gives `{"query": <the query's key>, "op": "<", "value": 0.9}`; a number
    on the left is turned around (`0.9 > {{acc}}` is `{{acc}} < 0.9`). Anything else (and,
    or, two queries) has no single threshold line: None.
    """
    try:
        root = parse_condition(condition).root
    except ExprError:
        return None
    if not isinstance(root, Compare):
        return None
    flipped = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}
    if isinstance(root.left, Query) and isinstance(root.right, float | int):
        return {"query": root.left.key, "op": root.op, "value": float(root.right)}
    if isinstance(root.right, Query) and isinstance(root.left, float | int):
        return {"query": root.right.key, "op": flipped[root.op], "value": float(root.left)}
    return None


def alert_series(
    axon: Axon, metrics: Iterable[Mapping[str, Any]], decisions: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """For each Alert trigger: its condition, threshold, values over time and firings.

    `metrics` are the data of the Axon's `ranvier.metric` events with their `time`; a value
    belongs to the Alert when the watcher tagged it with the sensor and trigger. `decisions`
    are decision records (with `time`); a firing is one that fired for that trigger.
    """
    metric_list = list(metrics)
    decision_list = list(decisions)
    out: list[dict[str, Any]] = []
    for sensor in axon.spec.sensors:
        for trigger in sensor.triggers:
            if not isinstance(trigger, AlertTrigger):
                continue
            points = [
                {"time": m.get("time"), "value": m.get("value")}
                for m in metric_list
                if m.get("sensor") == sensor.name and m.get("trigger") == trigger.name
            ]
            fired = [
                {"time": d.get("time"), "sensor_run_id": d.get("sensor_run_id")}
                for d in decision_list
                if d.get("sensor") == sensor.name
                and d.get("trigger") == trigger.name
                and d.get("fired")
            ]
            out.append(
                {
                    "sensor": sensor.name,
                    "trigger": trigger.name,
                    "condition": trigger.condition,
                    "threshold": threshold_of(trigger.condition),
                    "points": points,
                    "fired": fired,
                }
            )
    return out


# ---------------------------------------------------------------------------------------------
# The trace of a sensor run: event -> decision -> actions -> task runs -> versions -> next runs


def trace(
    run_id: str,
    status: Mapping[str, Any],
    decisions: Sequence[Mapping[str, Any]],
    events: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The causal chain that starts at sensor run `run_id`, as a list of links.

    Each link is a sensor run: the event that fired it (`event`), for an Alert the metric
    value that made it fire (`metric`), the decision (`decision`), the task runs it started
    (`tasks`, each with the model version it made), then the links of the sensor runs that
    those task runs' lifecycle events fired in turn (a retrain's training run firing the
    deploy sensor), up to `MAX_TRACE_DEPTH` links.
    `decisions` are the Axon's decision records; `events` its events by id.
    """
    sensor_runs = {
        r["id"]: {"sensor": s["name"], **r} for s in status["sensors"] for r in s["runs"]
    }
    task_runs = [
        {"task": t["name"], "kind": t["kind"], **r} for t in status["tasks"] for r in t["runs"]
    ]
    lifecycle_by_run = _lifecycle_by_run(events)
    links: list[dict[str, Any]] = []
    todo = [run_id]
    seen: set[str] = set()
    while todo and len(links) < MAX_TRACE_DEPTH:
        current = todo.pop(0)
        if current in seen or current not in sensor_runs:
            continue
        seen.add(current)
        started = [t for t in task_runs if t.get("sensor_run_id") == current]
        links.append(_trace_link(sensor_runs[current], started, status, decisions, events))
        for task_run in started:
            todo.extend(_fired_by(decisions, lifecycle_by_run.get(task_run["id"], [])))
    return links


def _lifecycle_by_run(
    events: Mapping[str, Mapping[str, Any]],
) -> dict[str, list[Mapping[str, Any]]]:
    """The lifecycle events by the id of the task run they report on."""
    by_run: dict[str, list[Mapping[str, Any]]] = {}
    for event in events.values():
        if event.get("type") == "ranvier.lifecycle":
            data = event.get("data") or {}
            by_run.setdefault(str(data.get("run_id")), []).append(event)
    return by_run


def _fired_by(
    decisions: Sequence[Mapping[str, Any]], lifecycles: Iterable[Mapping[str, Any]]
) -> list[str]:
    """The sensor runs that these lifecycle events fired, in decision order."""
    fired = []
    for lifecycle in lifecycles:
        for d in decisions:
            nxt = d.get("sensor_run_id")
            if d.get("event_id") == lifecycle.get("id") and d.get("fired") and nxt:
                fired.append(str(nxt))
    return fired


def _trace_link(
    run: Mapping[str, Any],
    task_runs: Sequence[Mapping[str, Any]],
    status: Mapping[str, Any],
    decisions: Sequence[Mapping[str, Any]],
    events: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """One link of a trace: sensor run `run`, the decision and event that started it, and
    the task runs it started (`task_runs`) with their model versions and deployment."""
    started = next(
        (d for d in decisions if d.get("sensor_run_id") == run["id"] and d.get("fired")), None
    )
    cause = events.get(str(started.get("event_id"))) if started else None
    versions = {
        v.get("run_id"): {"task": m["task"], **v} for m in status["models"] for v in m["versions"]
    }
    deployments = status.get("deployments") or []
    return {
        "sensor": run["sensor"],
        "metric": _alert_value(events, cause, started) if started else None,
        "run": {k: run.get(k) for k in ("id", "phase", "trigger", "started", "finished")},
        "event": _event_view(cause) if cause else None,
        "decision": dict(started) if started else None,
        "tasks": [_trace_task(t, versions.get(t["id"]), deployments) for t in task_runs],
    }


def _trace_task(
    task_run: Mapping[str, Any],
    version: Mapping[str, Any] | None,
    deployments: Sequence[Any],
) -> dict[str, Any]:
    """A task run in a trace link, with the model `version` it made and, for a deployer, the
    Axon's deployment."""
    entry = {
        k: task_run.get(k)
        for k in ("task", "kind", "id", "phase", "started", "finished", "version")
    }
    if version is not None:
        entry["model"] = {k: version.get(k) for k in ("task", "version", "metrics", "created")}
    if task_run.get("kind") in ("deployer", "deploy") and deployments:
        entry["deployment"] = deployments[0]
    return entry


def _alert_value(
    events: Mapping[str, Mapping[str, Any]],
    cause: Mapping[str, Any] | None,
    decision: Mapping[str, Any],
) -> dict[str, Any] | None:
    """For a run an Alert started: the last value of its metric up to the firing event.

    An Alert with `for` fires on a tick (its deadline) rather than on a metric event, so the
    value that made it fire is the latest the watcher published for that sensor and trigger
    before the cause (`events` is in stream order).
    """
    found: Mapping[str, Any] | None = None
    for event in events.values():
        data = event.get("data") or {}
        if (
            event.get("type") == "ranvier.metric"
            and data.get("sensor") == decision.get("sensor")
            and data.get("trigger") == decision.get("trigger")
        ):
            found = event
        if cause is not None and event.get("id") == cause.get("id"):
            break
    return _event_view(found) if found is not None else None


def _event_view(event: Mapping[str, Any]) -> dict[str, Any]:
    return {k: event.get(k) for k in ("id", "type", "subject", "time", "data")}
