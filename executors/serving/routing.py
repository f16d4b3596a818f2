"""The router's decisions as plain functions: which backend answers, in which order nodes run.

Everything that decides where a request goes is here, over plain data, with no I/O: building
the routing table from a deployer's spec and its deployed versions (rolloutSpec weights across
versions, routingStrategy weights across backend models, shadows), the weighted choice with an
injected random source, the DAG's levels and what each node receives, and where feedback goes.
The router (`router/`) only moves bytes according to these answers, so the decisions are tested
table-driven and fast, and the HTTP tests only have to show that the bytes move.

The table is JSON (it lives in the `ranvier_models` KV bucket once the bus lands): per axon and
deployer, its routes (DAG nodes) and its models, each with backends `{name, version, url,
weight, shadow}` where `weight` is the percentage of that model's traffic (routing weight x
rollout weight) and shadows get a copy of every request instead of a share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from events.errors import RanvierError
from sensors.spec import Deployer, DeployerModel, RolloutSpec

DEFAULT_NODE_PATH = "/predict"
FEEDBACK_PATH = "/send-feedback"


class RoutingError(RanvierError, ValueError):
    """A routing table that cannot route (unknown model, cycle, no weights)."""


class FeedbackError(RoutingError):
    """Feedback the router has nowhere to send; `status` is its HTTP answer."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class _Table(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel
    )


class Backend(_Table):
    """One model server: a version of a backend model."""

    name: str = Field(description="Backend model name.")
    version: str = Field(description="Model version it serves.")
    url: str = Field(description="Base URL of its model server, e.g. http://127.0.0.1:9001.")
    weight: float = Field(0.0, ge=0, description="Percent of the model's traffic it answers.")
    shadow: bool = Field(False, description="Receives a copy of every request; never answers.")
    timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds the router waits for it (its model's own timeout and a margin); "
        "unset: the router's default.",
    )

    @property
    def key(self) -> str:
        """How answers name it in `meta.requestPath`, and how feedback finds it again."""
        return f"{self.name}:{self.version}"


class Variant(_Table):
    """Backends for requests whose headers match (a rolloutSpec with `match`)."""

    headers: dict[str, str] = Field(description="Header -> exact value; all must match.")
    backends: list[Backend] = Field(description="Backends for matching requests.")


class ModelRoute(_Table):
    """A logical model and the backends that serve it."""

    name: str = Field(description="Model name, as DAG nodes refer to it.")
    backends: list[Backend] = Field(default_factory=list, description="Default backends.")
    variants: list[Variant] = Field(
        default_factory=list, description="Header-matched backends; the first match wins."
    )


class Node(_Table):
    """One model call of a route's DAG."""

    model: str = Field(description="A model of the deployer, or a name for an external one.")
    path: str = Field(DEFAULT_NODE_PATH, description="Path on the model server.")
    dependencies: list[str] = Field(default_factory=list, description="Models feeding this one.")
    include_input: bool = Field(False, description="Also pass the route's input.")
    full_path: str | None = Field(None, description="Absolute URL of an external model.")
    health_path: str | None = Field(None, description="Absolute health URL of an external model.")


class RouteTable(_Table):
    """A public path and its DAG."""

    path: str = Field(description="Public path under /<axon>/, e.g. /predict.")
    dag: list[Node] = Field(min_length=1, description="Model calls.")


class DeployerTable(_Table):
    """Everything the router needs to serve one deployer of one axon."""

    axon: str = Field(description="Axon name: the first segment of the URL.")
    name: str = Field(description="Deployer name.")
    routes: list[RouteTable] = Field(description="Public paths.")
    models: list[ModelRoute] = Field(description="Models and their backends.")


class RoutingTable(_Table):
    """The router's whole configuration; swapped atomically when it changes."""

    revision: int = Field(0, description="Increases with every change.")
    deployers: list[DeployerTable] = Field(default_factory=list, description="Served deployers.")


class Endpoint(_Table):
    """A running model server of a backend model version (input to `build_deployer_table`)."""

    version: str
    url: str


# ---------------------------------------------------------------------------------------------
# Weights


def normalise(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum to 100 (all zero stays all zero)."""
    total = sum(weights)
    if total <= 0:
        return [0.0 for _ in weights]
    return [100.0 * w / total for w in weights]


def version_weights(rollout: RolloutSpec | None, available: int) -> dict[int, float]:
    """Percent of traffic per version index (0 = newest) among `available` deployed versions.

    Without a rollout everything goes to the newest. Destinations naming a version that is not
    deployed (a canary before the second version exists) drop out and the rest are rescaled.
    """
    if available <= 0:
        return {}
    if rollout is None:
        return {0: 100.0}
    present = [d for d in rollout.destinations if d.destination_index < available]
    merged: dict[int, float] = {}
    for destination in present:
        merged[destination.destination_index] = (
            merged.get(destination.destination_index, 0.0) + destination.weight
        )
    if not merged or sum(merged.values()) <= 0:
        return {0: 100.0}
    indices = sorted(merged)
    return dict(zip(indices, normalise([merged[i] for i in indices]), strict=True))


def backend_model_weights(model: DeployerModel) -> dict[str, float]:
    """Percent of a model's traffic per backend model (routingStrategy; equal when absent)."""
    names = [b.name for b in model.backend_models]
    if not model.routing_strategy:
        return dict(zip(names, normalise([1.0] * len(names)), strict=True))
    weights = dict.fromkeys(names, 0.0)
    for destination in model.routing_strategy[0].destinations:
        if destination.destination_name not in weights:
            raise RoutingError(
                f"model {model.name!r}: routingStrategy names {destination.destination_name!r}, "
                f"which is not one of its backendModels ({', '.join(names)})"
            )
        weights[destination.destination_name] += destination.weight
    return weights


def model_backends(
    model: DeployerModel,
    rollout: RolloutSpec | None,
    versions: Mapping[str, Sequence[Endpoint]],
) -> list[Backend]:
    """The backends of a model: each deployed version with its share, plus shadows.

    `versions` maps a backend model name to its running versions, newest first. A backend
    model with no running version drops out and the others share its traffic.
    """
    by_model = backend_model_weights(model)
    backends: list[Backend] = []
    for name, model_weight in by_model.items():
        endpoints = list(versions.get(name, ()))
        for index, weight in version_weights(rollout, len(endpoints)).items():
            endpoint = endpoints[index]
            backends.append(
                Backend(
                    name=name,
                    version=endpoint.version,
                    url=endpoint.url,
                    weight=model_weight * weight / 100.0,
                )
            )
        shadow = rollout.shadow if rollout is not None else None
        if shadow is not None and shadow.destination_index < len(endpoints):
            endpoint = endpoints[shadow.destination_index]
            backends.append(
                Backend(name=name, version=endpoint.version, url=endpoint.url, shadow=True)
            )
    scaled = normalise([b.weight for b in backends if not b.shadow])
    shares = iter(scaled)
    return [b if b.shadow else b.model_copy(update={"weight": next(shares)}) for b in backends]


def build_deployer_table(
    axon: str, deployer: Deployer, versions: Mapping[str, Sequence[Endpoint]]
) -> DeployerTable:
    """The routing table of a deployer from its spec and the versions running now.

    rolloutSpec entries without `match` give the default split (the first one wins); entries
    with `match.headers` give header-matched variants. Without routes, `/predict` calls the
    first model.
    """
    default = next((r for r in deployer.rollout_spec if r.match is None), None)
    matched = [r for r in deployer.rollout_spec if r.match is not None and r.match.headers]
    models = [
        ModelRoute(
            name=model.name,
            backends=model_backends(model, default, versions),
            variants=[
                Variant(
                    headers=dict(rule.match.headers) if rule.match else {},
                    backends=model_backends(model, rule, versions),
                )
                for rule in matched
            ],
        )
        for model in deployer.models
    ]
    routes = [
        RouteTable(
            path=route.path,
            dag=[
                Node(
                    model=node.model,
                    path=node.path or DEFAULT_NODE_PATH,
                    dependencies=list(node.dependencies),
                    include_input=node.include_input,
                    full_path=node.full_path,
                    health_path=node.health_path,
                )
                for node in route.dag
            ],
        )
        for route in deployer.routes
    ] or [RouteTable(path=DEFAULT_NODE_PATH, dag=[Node(model=deployer.models[0].name)])]
    return DeployerTable(axon=axon, name=deployer.name, routes=routes, models=models)


# ---------------------------------------------------------------------------------------------
# Choosing


def select_backends(model: ModelRoute, headers: Mapping[str, str]) -> list[Backend]:
    """The backends for a request: the first variant whose headers all match, else the default.

    `headers` keys are lower-case (as HTTP servers give them).
    """
    for variant in model.variants:
        if all(headers.get(k.lower()) == v for k, v in variant.headers.items()):
            return variant.backends
    return model.backends


def choose(backends: Sequence[Backend], rand: Callable[[], float]) -> Backend:
    """The backend that answers, by weight; `rand()` returns a float in [0, 1)."""
    candidates = [b for b in backends if not b.shadow and b.weight > 0]
    if not candidates:
        raise RoutingError("no backend with a positive weight; deploy a version first")
    total = sum(b.weight for b in candidates)
    point = rand() * total
    running = 0.0
    for backend in candidates:
        running += backend.weight
        if point < running:
            return backend
    return candidates[-1]


def shadows(backends: Sequence[Backend]) -> list[Backend]:
    """The backends that get a copy of each request."""
    return [b for b in backends if b.shadow]


# ---------------------------------------------------------------------------------------------
# DAGs


def dag_levels(nodes: Sequence[Node]) -> list[list[Node]]:
    """Nodes grouped into levels that can run concurrently, each after all earlier levels.

    A node runs in the level after its last dependency; order within a level follows the
    route's order. Unknown dependencies, duplicate models and cycles are `RoutingError`s.
    """
    names = [n.model for n in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RoutingError(f"DAG calls model {duplicates[0]!r} twice; each model once per route")
    known = set(names)
    for node in nodes:
        for dependency in node.dependencies:
            if dependency not in known:
                raise RoutingError(
                    f"DAG node {node.model!r} depends on {dependency!r}, which is not in the route"
                )
    level_of: dict[str, int] = {}
    remaining = list(nodes)
    while remaining:
        ready = [n for n in remaining if all(d in level_of for d in n.dependencies)]
        if not ready:
            cycle = ", ".join(n.model for n in remaining)
            raise RoutingError(f"DAG has a cycle among {cycle}; dependencies must form a DAG")
        for node in ready:
            level_of[node.model] = 1 + max((level_of[d] for d in node.dependencies), default=-1)
        remaining = [n for n in remaining if n.model not in level_of]
    levels: list[list[Node]] = [[] for _ in range(max(level_of.values()) + 1)]
    for node in nodes:
        levels[level_of[node.model]].append(node)
    return levels


def node_input(node: Node, route_input: Any, outputs: Mapping[str, Any]) -> Any:
    """What a node is sent: the route's input, its one dependency's output, or a combination.

    A node without dependencies gets the input. With one dependency and no `includeInput` it
    gets that output (a chain). Otherwise it gets `{"jsonData": {<dependency>: <its output>,
    ..., "input": <the route's input if includeInput>}}`.
    """
    if not node.dependencies:
        return route_input
    if len(node.dependencies) == 1 and not node.include_input:
        return _without_meta(outputs[node.dependencies[0]])
    combined = {d: _without_meta(outputs[d]) for d in node.dependencies}
    if node.include_input:
        combined["input"] = route_input
    return {"jsonData": combined}


def _without_meta(message: Any) -> Any:
    if isinstance(message, dict) and "meta" in message:
        return {k: v for k, v in message.items() if k != "meta"}
    return message


def terminal_nodes(nodes: Sequence[Node]) -> list[Node]:
    """Nodes no other node depends on: their outputs are the route's answer."""
    used = {d for n in nodes for d in n.dependencies}
    return [n for n in nodes if n.model not in used]


def route_output(nodes: Sequence[Node], outputs: Mapping[str, Any]) -> Any:
    """The route's answer: the one terminal node's output, or all of them by model."""
    terminals = terminal_nodes(nodes)
    if len(terminals) == 1:
        return outputs[terminals[0].model]
    return {"jsonData": {n.model: _without_meta(outputs[n.model]) for n in terminals}}


def node_url(node: Node, backend: Backend | None) -> str:
    """Where a node's call goes: an external model's fullPath, or backend URL + node path."""
    if node.full_path:
        return node.full_path
    if backend is None:
        raise RoutingError(f"node {node.model!r} has neither a backend nor a fullPath")
    return backend.url.rstrip("/") + "/" + node.path.lstrip("/")


def feedback_url(backend: Backend) -> str:
    """Where feedback for an answer of `backend` goes."""
    return backend.url.rstrip("/") + FEEDBACK_PATH


# ---------------------------------------------------------------------------------------------
# Finding a route


class CompiledRoute(BaseModel):
    """A route with its DAG levels computed once per table."""

    model_config = ConfigDict(frozen=True)

    deployer: DeployerTable
    route: RouteTable
    levels: list[list[Node]]
    models: dict[str, ModelRoute]


class CompiledTable(BaseModel):
    """A table indexed for lookups: (axon, public path) -> route."""

    model_config = ConfigDict(frozen=True)

    table: RoutingTable
    routes: dict[tuple[str, str], CompiledRoute]
    deployers: dict[str, list[DeployerTable]]


def compile_table(table: RoutingTable) -> CompiledTable:
    """Index a table; every route's DAG is checked (a bad table is refused, never half-used).

    A route is reachable as `/<axon>/<path>` (the first deployer of the axon declaring the path
    wins) and as `/<axon>/<deployer>/<path>`.
    """
    routes: dict[tuple[str, str], CompiledRoute] = {}
    deployers: dict[str, list[DeployerTable]] = {}
    for deployer in table.deployers:
        deployers.setdefault(deployer.axon, []).append(deployer)
        models = {m.name: m for m in deployer.models}
        for route in deployer.routes:
            levels = dag_levels(route.dag)
            for node in route.dag:
                if node.full_path is None and node.model not in models:
                    raise RoutingError(
                        f"{deployer.axon}/{deployer.name} route {route.path}: node "
                        f"{node.model!r} is not a model of the deployer and has no fullPath"
                    )
            compiled = CompiledRoute(deployer=deployer, route=route, levels=levels, models=models)
            path = "/" + route.path.strip("/")
            routes.setdefault((deployer.axon, path), compiled)
            routes[(deployer.axon, f"/{deployer.name}{path}")] = compiled
    return CompiledTable(table=table, routes=routes, deployers=deployers)


def feedback_backends(
    deployers: Sequence[DeployerTable], request_path: Mapping[str, str]
) -> list[Backend]:
    """The backends named by an answer's `meta.requestPath` (model -> backend key)."""
    found: list[Backend] = []
    for deployer in deployers:
        for model in deployer.models:
            key = request_path.get(model.name)
            if key is None:
                continue
            candidates = [*model.backends, *(b for v in model.variants for b in v.backends)]
            match = next((b for b in candidates if b.key == key and not b.shadow), None)
            if match is not None and all(match.url != f.url for f in found):
                found.append(match)
    return found


def serving_feedback_backends(route: CompiledRoute, headers: Mapping[str, str]) -> list[Backend]:
    """Where feedback that names no version goes: every version answering `route` now.

    Myelin's and Seldon's clients send feedback as `request` + `reward`, without the answer and
    so without `meta.requestPath`. When the route calls one model of the deployer, the reward
    is about that model, whichever version answered: it goes to every version with a share of
    the route's traffic now (weight > 0 among the backends the feedback's headers select, as a
    prediction's headers would). Each version's server counts it, and an Axon's value of a
    gauge is the mean over its versions, so the Alert that reads it sees the reward. Shadows
    are left out: their answers never reach a caller, so no reward is about them (feedback
    that names its versions never reaches a shadow either).

    A route calling several models of the deployer (a DAG) is refused with status 400: the
    reward could be about any of them and any of their versions, and only the answer's
    `meta.requestPath` says which. External models (`fullPath`) never get feedback.
    """
    where = f"route {route.route.path} of {route.deployer.axon}/{route.deployer.name}"
    send_response = "send the router's answer as 'response' (it carries meta.requestPath)"
    served = [n for n in route.route.dag if n.full_path is None]
    if len(served) > 1:
        names = ", ".join(n.model for n in served)
        raise FeedbackError(
            f"feedback without response.meta.requestPath is ambiguous: {where} is a DAG of "
            f"{len(served)} models ({names}), and the reward may be about any of them",
            status=400,
            hint=send_response,
        )
    if not served:
        raise FeedbackError(
            f"{where} calls only external models (fullPath); the router sends them no feedback",
            status=404,
        )
    model = route.models[served[0].model]
    found: list[Backend] = []
    for backend in select_backends(model, headers):
        if backend.shadow or backend.weight <= 0 or any(backend.url == f.url for f in found):
            continue
        found.append(backend)
    if not found:
        raise FeedbackError(
            f"{where}: no version of model {model.name!r} is serving; deploy a version first",
            status=503,
        )
    return found
