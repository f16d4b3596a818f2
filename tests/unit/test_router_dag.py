"""DAG order, what each node receives, the route's answer, URLs, and table compilation."""

from __future__ import annotations

from typing import Any

import pytest

from executors.serving.routing import (
    Backend,
    DeployerTable,
    Endpoint,
    ModelRoute,
    Node,
    RouteTable,
    RoutingError,
    RoutingTable,
    build_deployer_table,
    compile_table,
    dag_levels,
    feedback_backends,
    feedback_url,
    node_input,
    node_url,
    route_output,
)
from sensors.spec import Deployer


def _nodes(spec: dict[str, list[str]]) -> list[Node]:
    return [Node(model=name, dependencies=deps) for name, deps in spec.items()]


@pytest.mark.parametrize(
    ("spec", "levels"),
    [
        ({"a": []}, [["a"]]),
        ({"a": [], "b": []}, [["a", "b"]]),
        ({"a": [], "b": ["a"]}, [["a"], ["b"]]),
        ({"b": ["a"], "a": []}, [["a"], ["b"]]),
        ({"a": [], "b": [], "c": ["a", "b"]}, [["a", "b"], ["c"]]),
        ({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}, [["a"], ["b", "c"], ["d"]]),
        ({"a": [], "b": ["a"], "c": []}, [["a", "c"], ["b"]]),
        ({"a": [], "b": ["a"], "c": ["b"], "d": ["a"]}, [["a"], ["b", "d"], ["c"]]),
    ],
)
def test_dag_levels(spec: dict[str, list[str]], levels: list[list[str]]) -> None:
    assert [[n.model for n in level] for level in dag_levels(_nodes(spec))] == levels


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"a": ["a"]}, "cycle among a"),
        ({"a": ["b"], "b": ["a"]}, "cycle among a, b"),
        ({"a": [], "b": ["c"]}, "depends on 'c'"),
    ],
)
def test_bad_dags_are_refused(spec: dict[str, list[str]], message: str) -> None:
    with pytest.raises(RoutingError, match=message):
        dag_levels(_nodes(spec))


def test_a_model_twice_in_a_dag_is_refused() -> None:
    with pytest.raises(RoutingError, match="twice"):
        dag_levels([Node(model="a"), Node(model="a")])


INPUT = {"data": {"ndarray": [[1]]}}
OUTPUTS: dict[str, Any] = {
    "a": {"jsonData": "A", "meta": {"requestPath": {"a": "a:1"}}},
    "b": {"strData": "B"},
}


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (Node(model="x"), INPUT),
        (Node(model="x", dependencies=["a"]), {"jsonData": "A"}),
        (
            Node(model="x", dependencies=["a"], include_input=True),
            {"jsonData": {"a": {"jsonData": "A"}, "input": INPUT}},
        ),
        (
            Node(model="x", dependencies=["a", "b"]),
            {"jsonData": {"a": {"jsonData": "A"}, "b": {"strData": "B"}}},
        ),
        (
            Node(model="x", dependencies=["b", "a"], include_input=True),
            {"jsonData": {"b": {"strData": "B"}, "a": {"jsonData": "A"}, "input": INPUT}},
        ),
    ],
)
def test_node_input(node: Node, expected: Any) -> None:
    assert node_input(node, INPUT, OUTPUTS) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"a": []}, OUTPUTS["a"]),
        ({"a": [], "b": ["a"]}, OUTPUTS["b"]),
        ({"a": [], "b": []}, {"jsonData": {"a": {"jsonData": "A"}, "b": {"strData": "B"}}}),
    ],
)
def test_route_output(spec: dict[str, list[str]], expected: Any) -> None:
    assert route_output(_nodes(spec), OUTPUTS) == expected


BACKEND = Backend(name="a", version="3", url="http://127.0.0.1:9000/", weight=100)


@pytest.mark.parametrize(
    ("node", "backend", "url"),
    [
        (Node(model="a"), BACKEND, "http://127.0.0.1:9000/predict"),
        (Node(model="a", path="score"), BACKEND, "http://127.0.0.1:9000/score"),
        (Node(model="ext", full_path="http://ext/api/predict"), None, "http://ext/api/predict"),
        (Node(model="ext", full_path="http://ext/api/predict"), BACKEND, "http://ext/api/predict"),
    ],
)
def test_node_url(node: Node, backend: Backend | None, url: str) -> None:
    assert node_url(node, backend) == url


def test_node_url_needs_a_backend_or_full_path() -> None:
    with pytest.raises(RoutingError, match="neither a backend nor a fullPath"):
        node_url(Node(model="a"), None)
    assert feedback_url(BACKEND) == "http://127.0.0.1:9000/send-feedback"


def _deployer(spec: dict[str, Any]) -> Deployer:
    return Deployer.model_validate(spec)


QUICKSTART = {
    "name": "quickstart-deploy",
    "rolloutSpec": [
        {
            "destinations": [
                {"destinationIndex": 0, "weight": 50},
                {"destinationIndex": 1, "weight": 50},
            ]
        }
    ],
    "models": [
        {
            "name": "qs",
            "backendModels": [{"name": "qs-model", "trainer": "Train", "deployer": "Deploy"}],
        }
    ],
    "routes": [{"path": "/predict", "dag": [{"model": "qs", "path": "/predict"}]}],
}


def test_build_deployer_table_from_spec_and_versions() -> None:
    versions = {
        "qs-model": [
            Endpoint(version="2", url="http://127.0.0.1:1"),
            Endpoint(version="1", url="http://127.0.0.1:2"),
        ]
    }
    table = build_deployer_table("quickstart", _deployer(QUICKSTART), versions)
    assert table.axon == "quickstart"
    assert [(b.version, b.weight) for b in table.models[0].backends] == [("2", 50.0), ("1", 50.0)]
    assert table.routes == [RouteTable(path="/predict", dag=[Node(model="qs")])]
    # the table round-trips through JSON, as it will through KV
    wire = RoutingTable(revision=1, deployers=[table]).model_dump_json(by_alias=True)
    assert "includeInput" in wire
    assert RoutingTable.model_validate_json(wire).deployers == [table]


def test_build_deployer_table_defaults_and_header_variants() -> None:
    spec = {
        **QUICKSTART,
        "routes": [],
        "rolloutSpec": [
            {"destinations": [{"destinationIndex": 0, "weight": 100}]},
            {
                "destinations": [{"destinationIndex": 1, "weight": 100}],
                "match": {"headers": {"X-Version": "old"}},
            },
        ],
    }
    versions = {
        "qs-model": [
            Endpoint(version="2", url="http://127.0.0.1:1"),
            Endpoint(version="1", url="http://127.0.0.1:2"),
        ]
    }
    table = build_deployer_table("quickstart", _deployer(spec), versions)
    assert table.routes == [RouteTable(path="/predict", dag=[Node(model="qs")])]
    model = table.models[0]
    assert [b.version for b in model.backends] == ["2"]
    assert model.variants[0].headers == {"X-Version": "old"}
    assert [b.version for b in model.variants[0].backends] == ["1"]


def _table(*deployers: DeployerTable) -> RoutingTable:
    return RoutingTable(revision=1, deployers=list(deployers))


def _simple(axon: str, name: str, paths: list[str], backend: Backend = BACKEND) -> DeployerTable:
    return DeployerTable(
        axon=axon,
        name=name,
        routes=[RouteTable(path=p, dag=[Node(model="m")]) for p in paths],
        models=[ModelRoute(name="m", backends=[backend])],
    )


def test_compile_table_indexes_routes_by_axon_and_path() -> None:
    first = _simple("ax", "d1", ["/predict"])
    second = _simple("ax", "d2", ["predict", "/other/"])
    compiled = compile_table(_table(first, second))
    assert compiled.routes[("ax", "/predict")].deployer == first
    assert compiled.routes[("ax", "/d2/predict")].deployer == second
    assert compiled.routes[("ax", "/other")].deployer == second
    assert ("ax", "/nope") not in compiled.routes
    assert compiled.routes[("ax", "/predict")].levels == [[Node(model="m")]]


def test_compile_table_refuses_unknown_models_and_cycles() -> None:
    unknown = DeployerTable(
        axon="ax", name="d", routes=[RouteTable(path="/p", dag=[Node(model="x")])], models=[]
    )
    with pytest.raises(RoutingError, match="'x' is not a model of the deployer"):
        compile_table(_table(unknown))
    cyclic = DeployerTable(
        axon="ax",
        name="d",
        routes=[
            RouteTable(
                path="/p",
                dag=[Node(model="m", dependencies=["n"]), Node(model="n", dependencies=["m"])],
            )
        ],
        models=[ModelRoute(name="m"), ModelRoute(name="n")],
    )
    with pytest.raises(RoutingError, match="cycle"):
        compile_table(_table(cyclic))


def test_feedback_backends_follow_the_request_path() -> None:
    old = Backend(name="a", version="1", url="http://old", weight=50)
    new = Backend(name="a", version="2", url="http://new", weight=50)
    deployer = DeployerTable(
        axon="ax", name="d", routes=[], models=[ModelRoute(name="m", backends=[new, old])]
    )
    assert feedback_backends([deployer], {"m": "a:1"}) == [old]
    assert feedback_backends([deployer], {"m": "a:2", "Echo": "2"}) == [new]
    assert feedback_backends([deployer], {"m": "a:9"}) == []
    assert feedback_backends([deployer], {}) == []
