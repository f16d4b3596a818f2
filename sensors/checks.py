"""Cross-reference checks of an Axon: the rules no single model can see.

A name in a trigger, an action, a backend model or a route must name something that exists
and has the right kind; weights must add up; route graphs must be acyclic; names must be
usable as NATS subject tokens and (lowercased) Kubernetes object names. These are plain
functions over a validated `Axon` that return findings with a YAML location; `sensors.loader`
turns locations into file:line:col.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from sensors.expr import ExprError, bare_template, parse_condition
from sensors.spec import (
    ActionSpec,
    AlertTrigger,
    Axon,
    DagNode,
    Deployer,
    LifecycleTrigger,
    MetricCondition,
    Sensor,
    TaskKind,
)

Loc = tuple[str | int, ...]
"""A location in the YAML document: mapping keys (YAML spelling) and list indexes."""


@dataclass(frozen=True)
class Finding:
    """One problem at one YAML location; `at="key"` points at the key instead of its value."""

    loc: Loc
    message: str
    at: Literal["value", "key"] = "value"
    offset: int | None = None  # 0-based character offset inside a string value


@dataclass(frozen=True)
class ConditionRef:
    """A condition string in the Axon and where it is."""

    loc: Loc
    text: str


# Task kinds each reference may name; tfJob counts as training (a distributed train task).
RESOURCE_EXECUTOR_KINDS: tuple[TaskKind, ...] = ("container", "spark")
TRAINER_KINDS: tuple[TaskKind, ...] = ("train", "tfJob")
DEPLOYER_KINDS: tuple[TaskKind, ...] = ("deploy",)

_NATS_FORBIDDEN = re.compile(r"[.*>\s]")
_K8S_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
K8S_MAX = 63


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'X'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f" (did you mean {close[0]!r}?)" if close else ""


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a NATS subject token or a lowercased Kubernetes name, or None."""
    if not name:
        return "a name cannot be empty"
    bad = _NATS_FORBIDDEN.search(name)
    if bad:
        char = "whitespace" if bad.group().isspace() else repr(bad.group())
        return (
            f"name {name!r} contains {char}, which NATS subject tokens do not allow "
            "(use letters, digits and '-')"
        )
    if len(name) > K8S_MAX:
        return f"name {name!r} is {len(name)} characters; Kubernetes names allow at most {K8S_MAX}"
    if not _K8S_LABEL.fullmatch(name.lower()):
        return (
            f"name {name!r} is not a valid Kubernetes name once lowercased "
            "(use letters, digits and '-', starting and ending with a letter or digit)"
        )
    return None


def check_axon(axon: Axon, unknown_kinds: frozenset[str] = frozenset()) -> list[Finding]:
    """Every cross-reference problem of `axon`, in document order.

    `unknown_kinds` names tasks that exist but whose kind is not known (their own definition is
    invalid and reported elsewhere): references to them are not checked for kind.
    """
    findings: list[Finding] = []
    findings += _check_names(axon)
    findings += _check_spec_shape(axon)
    findings += _check_image_builds(axon)
    for i, sensor in enumerate(axon.spec.sensors):
        findings += _check_sensor(axon, ("spec", "sensors", i), sensor, unknown_kinds)
    return findings


def conditions(axon: Axon) -> Iterator[ConditionRef]:
    """Every condition string (Alert condition and resolve, Metric conditions) and its place."""
    for i, sensor in enumerate(axon.spec.sensors):
        for j, trigger in enumerate(sensor.triggers):
            if isinstance(trigger, AlertTrigger):
                yield ConditionRef(
                    ("spec", "sensors", i, "triggers", j, "condition"), trigger.condition
                )
                if trigger.resolve is not None:
                    yield ConditionRef(
                        ("spec", "sensors", i, "triggers", j, "resolve"), trigger.resolve
                    )
        for j, condition in enumerate(sensor.conditions):
            yield ConditionRef(
                ("spec", "sensors", i, "conditions", j, "condition"), condition.condition
            )


# ---------------------------------------------------------------------------------------------


def _unique(items: Sequence[str], loc: Loc, what: str, field: str = "name") -> Iterator[Finding]:
    first: dict[str, int] = {}
    for i, name in enumerate(items):
        if name in first:
            yield Finding(
                (*loc, i, field), f"duplicate {what} {name!r} (the first is at index {first[name]})"
            )
        else:
            first[name] = i


def _named(items: Sequence[str], loc: Loc, field: str = "name") -> Iterator[Finding]:
    for i, name in enumerate(items):
        problem = name_problem(name)
        if problem:
            yield Finding((*loc, i, field), problem)


def _check_names(axon: Axon) -> Iterator[Finding]:
    spec = axon.spec
    for loc, name in (
        (("metadata", "name"), axon.metadata.name),
        (("metadata", "namespace"), axon.metadata.namespace),
    ):
        problem = name_problem(name)
        if problem:
            yield Finding(loc, problem)
    tasks = [t.name for t in spec.tasks]
    yield from _named(tasks, ("spec", "tasks"))
    yield from _unique(tasks, ("spec", "tasks"), "task")
    sensors = [s.name for s in spec.sensors]
    yield from _named(sensors, ("spec", "sensors"))
    yield from _unique(sensors, ("spec", "sensors"), "sensor")
    artifacts = [a.name for a in spec.artifacts]
    yield from _named(artifacts, ("spec", "artifacts"))
    yield from _unique(artifacts, ("spec", "artifacts"), "artifact")
    yield from _unique([p.name for p in spec.parameters], ("spec", "parameters"), "parameter")


def _check_spec_shape(axon: Axon) -> Iterator[Finding]:
    spec = axon.spec
    if spec.volume is not None and spec.volume_claim_template is not None:
        yield Finding(
            ("spec", "volumeClaimTemplate"),
            "give either volume or volumeClaimTemplate, not both",
            at="key",
        )


def _check_image_builds(axon: Axon) -> Iterator[Finding]:
    artifacts = [a.name for a in axon.spec.artifacts]
    for i, task in enumerate(axon.spec.tasks):
        build = task.body.image_build
        if build is not None and build.artifact not in artifacts:
            yield Finding(
                ("spec", "tasks", i, task.kind, "imageBuild", "artifact"),
                f"no artifact named {build.artifact!r}{did_you_mean(build.artifact, artifacts)}",
            )


def _task_ref(
    axon: Axon,
    loc: Loc,
    name: str,
    kinds: tuple[TaskKind, ...],
    role: str,
    *,
    unknown_kinds: frozenset[str],
    verb: str = "runs",
) -> Iterator[Finding]:
    task = axon.spec.task(name)
    if task is None:
        yield _no_task(axon, loc, name)
    elif task.kind not in kinds and name not in unknown_kinds:
        allowed = " or ".join(kinds)
        yield Finding(loc, f"{role} {verb} {allowed} tasks, but {name!r} is a {task.kind} task")


def _no_task(axon: Axon, loc: Loc, name: str) -> Finding:
    names = [t.name for t in axon.spec.tasks]
    return Finding(loc, f"no task named {name!r}{did_you_mean(name, names)}")


def _check_sensor(
    axon: Axon, loc: Loc, sensor: Sensor, unknown_kinds: frozenset[str]
) -> Iterator[Finding]:
    yield from _check_sensor_names(loc, sensor)
    yield from _check_conditions(axon, loc, sensor.conditions, unknown_kinds)
    for j, trigger in enumerate(sensor.triggers):
        if isinstance(trigger, LifecycleTrigger) and axon.spec.task(trigger.task) is None:
            yield _no_task(axon, (*loc, "triggers", j, "task"), trigger.task)
    for s, step in enumerate(sensor.tasks):
        if isinstance(step, list):
            for a, action in enumerate(step):
                yield from _check_action(axon, (*loc, "tasks", s, a), action, unknown_kinds)
        else:
            yield from _check_action(axon, (*loc, "tasks", s), step, unknown_kinds)


def _check_sensor_names(loc: Loc, sensor: Sensor) -> Iterator[Finding]:
    """Triggers and conditions are named, and no name is used twice among them."""
    own = [t.name for t in sensor.triggers]
    yield from _named(own, (*loc, "triggers"))
    yield from _unique(own, (*loc, "triggers"), "trigger")
    cond_names = [c.name for c in sensor.conditions]
    yield from _named(cond_names, (*loc, "conditions"))
    for j, name in enumerate(cond_names):
        if name in own or name in cond_names[:j]:
            yield Finding(
                (*loc, "conditions", j, "name"),
                f"duplicate name {name!r}: triggers and conditions of a sensor share one namespace",
            )


def _check_conditions(
    axon: Axon, loc: Loc, conditions: Sequence[MetricCondition], unknown_kinds: frozenset[str]
) -> Iterator[Finding]:
    """A condition with `task` names a train task and reads its metrics by bare name."""
    for j, condition in enumerate(conditions):
        if condition.task is not None:
            yield from _task_ref(
                axon,
                (*loc, "conditions", j, "task"),
                condition.task,
                TRAINER_KINDS,
                "a condition with task",
                unknown_kinds=unknown_kinds,
                verb="reads the metrics of",
            )
            yield from _check_task_condition((*loc, "conditions", j, "condition"), condition)


_ACTION_TASK_KINDS: dict[str, tuple[TaskKind, ...]] = {
    "resourceExecutor": RESOURCE_EXECUTOR_KINDS,
    "trainer": TRAINER_KINDS,
}


def _check_action(
    axon: Axon, loc: Loc, action: ActionSpec, unknown_kinds: frozenset[str]
) -> Iterator[Finding]:
    """A resourceExecutor or trainer names a task of a kind it can run; a deployer is sound."""
    if action.deployer is not None:
        yield from _check_deployer(axon, (*loc, "deployer"), action.deployer, unknown_kinds)
        return
    kind = action.kind
    yield from _task_ref(
        axon,
        (*loc, kind, "task"),
        action.task_name,
        _ACTION_TASK_KINDS[kind],
        kind,
        unknown_kinds=unknown_kinds,
    )


def _check_task_condition(loc: Loc, condition: MetricCondition) -> Iterator[Finding]:
    """A condition with `task` reads reported metrics by name: only bare `{{name}}` templates."""
    try:
        parsed = parse_condition(condition.condition)
    except ExprError:
        return  # reported with its position by the loader's condition check
    for query in parsed.queries:
        if not bare_template(query) is not None:
            yield Finding(
                loc,
                f"{query.text!r}: a condition with task reads the metrics the task reported, "
                "by name; write a bare template like {{accuracy}} (PromQL needs the watcher: "
                "remove task)",
            )


def _weights(loc: Loc, weights: Sequence[int]) -> Iterator[Finding]:
    total = sum(weights)
    if total != 100:
        yield Finding(loc, f"weights sum to {total}; they must sum to 100", at="key")


def _check_deployer(
    axon: Axon, loc: Loc, deployer: Deployer, unknown_kinds: frozenset[str]
) -> Iterator[Finding]:
    problem = name_problem(deployer.name)
    if problem:
        yield Finding((*loc, "name"), problem)
    for r, rollout in enumerate(deployer.rollout_spec):
        yield from _weights(
            (*loc, "rolloutSpec", r, "destinations"), [d.weight for d in rollout.destinations]
        )
    models = [m.name for m in deployer.models]
    yield from _named(models, (*loc, "models"))
    yield from _unique(models, (*loc, "models"), "model")
    for m, model in enumerate(deployer.models):
        mloc: Loc = (*loc, "models", m)
        backends = [b.name for b in model.backend_models]
        yield from _named(backends, (*mloc, "backendModels"))
        yield from _unique(backends, (*mloc, "backendModels"), "backend model")
        for b, backend in enumerate(model.backend_models):
            bloc: Loc = (*mloc, "backendModels", b)
            yield from _task_ref(
                axon,
                (*bloc, "trainer"),
                backend.trainer,
                TRAINER_KINDS,
                "backendModels.trainer",
                unknown_kinds=unknown_kinds,
            )
            yield from _task_ref(
                axon,
                (*bloc, "deployer"),
                backend.deployer,
                DEPLOYER_KINDS,
                "backendModels.deployer",
                unknown_kinds=unknown_kinds,
            )
        for r, routing in enumerate(model.routing_strategy):
            rloc: Loc = (*mloc, "routingStrategy", r, "destinations")
            yield from _weights(rloc, [d.weight for d in routing.destinations])
            for d, dest in enumerate(routing.destinations):
                if dest.destination_name not in backends:
                    yield Finding(
                        (*rloc, d, "destinationName"),
                        f"no backend model named {dest.destination_name!r} in model "
                        f"{model.name!r}{did_you_mean(dest.destination_name, backends)}",
                    )
    yield from _unique([r.path for r in deployer.routes], (*loc, "routes"), "route", "path")
    for r, route in enumerate(deployer.routes):
        yield from _check_dag(loc, r, models, route.dag)


def _check_dag(loc: Loc, r: int, models: list[str], nodes: Sequence[DagNode]) -> Iterator[Finding]:
    dloc: Loc = (*loc, "routes", r, "dag")
    in_dag = [n.model for n in nodes]
    yield from _unique(in_dag, dloc, "DAG model", "model")
    for n, node in enumerate(nodes):
        if node.full_path is None and node.model not in models:
            yield Finding(
                (*dloc, n, "model"),
                f"no model named {node.model!r} in this deployer"
                f"{did_you_mean(node.model, models)}; add it to models or give fullPath "
                "for an external model",
            )
        for k, dep in enumerate(node.dependencies):
            if dep not in in_dag:
                yield Finding(
                    (*dloc, n, "dependencies", k),
                    f"dependency {dep!r} is not a model of this DAG{did_you_mean(dep, in_dag)}",
                )
    cycle = find_cycle({n.model: [d for d in n.dependencies if d in in_dag] for n in nodes})
    if cycle:
        first = in_dag.index(cycle[0])
        yield Finding(
            (*dloc, first, "dependencies"),
            f"dependencies form a cycle: {' -> '.join(cycle)}",
            at="key",
        )


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in `graph` as [a, b, ..., a], or None; iterative DFS, in graph order."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    for root, edges in graph.items():
        if color[root] != white:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(edges))]
        path = [root]
        color[root] = grey
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                color[node] = black
            elif color.get(child, black) == grey:
                return [*path[path.index(child) :], child]
            elif color.get(child, black) == white:
                color[child] = grey
                path.append(child)
                stack.append((child, iter(graph[child])))
    return None
