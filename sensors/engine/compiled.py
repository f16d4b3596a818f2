"""The compiled spec: what the engine derives from an Axon once per generation (never persisted)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sensors.engine.base import EngineError, _digest, _dump, axon_key
from sensors.expr import Condition, ExprError, bare_template, parse_condition
from sensors.spec import (
    ActionKind,
    ActionSpec,
    AlertTrigger,
    Axon,
    CalendarTrigger,
    LifecycleTrigger,
    RestTrigger,
    Sensor,
)

# ---------------------------------------------------------------------------------------------
# The compiled spec: what the engine derives once per generation (never persisted)


@dataclass(frozen=True, slots=True)
class _Action:
    """One action of a step, with its request parameters prepared."""

    kind: ActionKind
    task: str
    retry_limit: int
    backoff: float
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Alert:
    """An Alert trigger with its conditions parsed."""

    name: str
    condition: Condition
    resolve: Condition | None
    for_: float
    keep_firing_for: float
    cooldown: float
    keys: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Cond:
    """A Metric condition with its condition parsed."""

    name: str
    condition: Condition
    keys: frozenset[str]
    task: str | None = None
    metric_names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Sensor:
    """A sensor as the engine uses it."""

    name: str
    position: int
    concurrency: str
    max_runs: tuple[int, float] | None
    steps: tuple[tuple[_Action, ...], ...]
    triggers: tuple[str, ...]
    alerts: Mapping[str, _Alert]
    rest: tuple[str, ...]
    calendar: tuple[str, ...]
    conditions: tuple[_Cond, ...]
    trigger_prints: Mapping[str, str]
    condition_prints: Mapping[str, str]
    tasks_print: str
    max_runs_print: str


@dataclass(frozen=True, slots=True)
class _Target:
    """Something a metric value feeds: an Alert trigger or a Metric condition of a sensor."""

    sensor: _Sensor
    name: str
    alert: _Alert | None
    cond: _Cond | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One generation of an Axon's spec and its indexes."""

    name: str
    namespace: str
    key: str
    digest: str
    sensors: Mapping[str, _Sensor]
    order: tuple[_Sensor, ...]
    triggerless: tuple[_Sensor, ...]
    by_lifecycle: Mapping[tuple[str, str], tuple[tuple[_Sensor, str], ...]]
    by_metric: Mapping[str, tuple[_Target, ...]]
    by_target: Mapping[tuple[str, str], tuple[_Target, ...]]
    by_task_metrics: Mapping[str, tuple[_Target, ...]]


def _parse(text: str, where: str) -> Condition:
    try:
        return parse_condition(text)
    except ExprError as exc:
        raise EngineError(f"{where}: {exc}", hint="run `ranvier validate` on the Axon") from None


def _action(spec: ActionSpec) -> _Action:
    params: dict[str, Any] = {}
    if spec.env:
        params["env"] = [_dump(e) for e in spec.env]
    if spec.deployer is not None:
        params["deployer"] = _dump(spec.deployer)
    retry = spec.retry
    return _Action(
        kind=spec.kind,
        task=spec.task_name,
        retry_limit=retry.limit if retry is not None else 0,
        backoff=retry.backoff if retry is not None else 0.0,
        params=params,
    )


def _compile_sensor(sensor: Sensor, position: int) -> _Sensor:
    where = f"sensor {sensor.name!r}"
    alerts: dict[str, _Alert] = {}
    rest: list[str] = []
    calendar: list[str] = []
    for trigger in sensor.triggers:
        if isinstance(trigger, AlertTrigger):
            cond = _parse(trigger.condition, f"{where} trigger {trigger.name!r}")
            resolve = (
                _parse(trigger.resolve, f"{where} trigger {trigger.name!r} resolve")
                if trigger.resolve is not None
                else None
            )
            keys = {q.key for q in cond.queries}
            if resolve is not None:
                keys.update(q.key for q in resolve.queries)
            alerts[trigger.name] = _Alert(
                name=trigger.name,
                condition=cond,
                resolve=resolve,
                for_=trigger.for_,
                keep_firing_for=trigger.keep_firing_for,
                cooldown=trigger.cooldown,
                keys=frozenset(keys),
            )
        elif isinstance(trigger, RestTrigger):
            rest.append(trigger.name)
        elif isinstance(trigger, CalendarTrigger):
            calendar.append(trigger.name)
    conditions = []
    for c in sensor.conditions:
        parsed = _parse(c.condition, f"{where} condition {c.name!r}")
        names = {q.key: bare_template(q) or q.key for q in parsed.queries}
        conditions.append(
            _Cond(c.name, parsed, frozenset(q.key for q in parsed.queries), c.task, names)
        )
    return _Sensor(
        name=sensor.name,
        position=position,
        concurrency=sensor.concurrency,
        max_runs=(sensor.max_runs.count, sensor.max_runs.per) if sensor.max_runs else None,
        steps=tuple(tuple(_action(a) for a in group) for group in sensor.steps),
        triggers=tuple(t.name for t in sensor.triggers),
        alerts=alerts,
        rest=tuple(rest),
        calendar=tuple(calendar),
        conditions=tuple(conditions),
        trigger_prints={t.name: _digest(_dump(t)) for t in sensor.triggers},
        condition_prints={c.name: _digest(_dump(c)) for c in sensor.conditions},
        tasks_print=_digest([_dump(a) for group in sensor.steps for a in group]),
        max_runs_print=_digest(_dump(sensor.max_runs) if sensor.max_runs else None),
    )


def _compile(axon: Axon) -> _Compiled:
    name, namespace = axon.metadata.name, axon.metadata.namespace
    order = tuple(_compile_sensor(s, i) for i, s in enumerate(axon.spec.sensors))
    by_lifecycle: dict[tuple[str, str], list[tuple[_Sensor, str]]] = {}
    by_metric: dict[str, list[_Target]] = {}
    by_target: dict[tuple[str, str], list[_Target]] = {}
    by_task_metrics: dict[str, list[_Target]] = {}
    for compiled, sensor in zip(order, axon.spec.sensors, strict=True):
        for trigger in sensor.triggers:
            if isinstance(trigger, LifecycleTrigger):
                by_lifecycle.setdefault((trigger.task, trigger.condition), []).append(
                    (compiled, trigger.name)
                )
        targets = [_Target(compiled, a.name, a, None) for a in compiled.alerts.values()]
        targets += [_Target(compiled, c.name, None, c) for c in compiled.conditions]
        for target in targets:
            if target.cond is not None and target.cond.task is not None:
                by_task_metrics.setdefault(target.cond.task, []).append(target)
                by_target.setdefault((compiled.name, target.name), []).append(target)
                continue
            keys = target.alert.keys if target.alert else cast(_Cond, target.cond).keys
            for key in sorted(keys):
                by_metric.setdefault(key, []).append(target)
            by_target.setdefault((compiled.name, target.name), []).append(target)
    return _Compiled(
        name=name,
        namespace=namespace,
        key=axon_key(namespace, name),
        digest=_digest(_dump(axon)),
        sensors={s.name: s for s in order},
        order=order,
        triggerless=tuple(s for s in order if not s.triggers),
        by_lifecycle={k: tuple(v) for k, v in by_lifecycle.items()},
        by_metric={k: tuple(v) for k, v in by_metric.items()},
        by_target={k: tuple(v) for k, v in by_target.items()},
        by_task_metrics={k: tuple(v) for k, v in by_task_metrics.items()},
    )
