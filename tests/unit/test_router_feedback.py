"""Where feedback that names no version goes: the versions serving the route now, by weight."""

from __future__ import annotations

import pytest

from executors.serving.routing import (
    Backend,
    CompiledRoute,
    DeployerTable,
    FeedbackError,
    ModelRoute,
    Node,
    RouteTable,
    RoutingTable,
    Variant,
    compile_table,
    serving_feedback_backends,
)

V1 = Backend(name="m", version="1", url="http://v1", weight=50)
V2 = Backend(name="m", version="2", url="http://v2", weight=50)
OLD = Backend(name="m", version="0", url="http://v0", weight=0)
SHADOW = Backend(name="m", version="3", url="http://v3", shadow=True)
CANARY = Backend(name="m", version="4", url="http://v4", weight=100)
OTHER = Backend(name="n", version="1", url="http://n1", weight=100)


def _route(dag: list[Node], models: list[ModelRoute], path: str = "/predict") -> CompiledRoute:
    deployer = DeployerTable(
        axon="ax", name="d", routes=[RouteTable(path=path, dag=dag)], models=models
    )
    return compile_table(RoutingTable(deployers=[deployer])).routes[("ax", path)]


@pytest.mark.parametrize(
    ("backends", "headers", "expected"),
    [
        ([V1], {}, [V1]),
        ([V1, V2], {}, [V1, V2]),  # a 50/50 rollout: both versions count the reward
        ([V2, OLD, V1], {}, [V2, V1]),  # weight 0 answers nothing, so no reward is about it
        ([V1, SHADOW], {}, [V1]),  # a shadow's answers never reach a caller
        ([V1, V1.model_copy(update={"name": "k"})], {}, [V1]),  # one server, one feedback
        ([V1, V2], {"x-canary": "yes"}, [CANARY]),  # the variant a prediction would use
        ([V1, V2], {"x-canary": "no"}, [V1, V2]),
    ],
)
def test_a_one_model_route_sends_feedback_to_every_weighted_version(
    backends: list[Backend], headers: dict[str, str], expected: list[Backend]
) -> None:
    model = ModelRoute(
        name="m",
        backends=backends,
        variants=[Variant(headers={"X-Canary": "yes"}, backends=[CANARY, SHADOW])],
    )
    route = _route([Node(model="m")], [model])
    assert serving_feedback_backends(route, headers) == expected


def test_external_models_of_the_dag_get_no_feedback() -> None:
    dag = [
        Node(model="m"),
        Node(model="ext", dependencies=["m"], full_path="http://elsewhere/predict"),
    ]
    route = _route(dag, [ModelRoute(name="m", backends=[V1, V2])])
    assert serving_feedback_backends(route, {}) == [V1, V2]


def test_a_dag_of_several_models_is_ambiguous() -> None:
    dag = [Node(model="m"), Node(model="n", dependencies=["m"])]
    route = _route(
        dag, [ModelRoute(name="m", backends=[V1]), ModelRoute(name="n", backends=[OTHER])]
    )
    with pytest.raises(FeedbackError) as caught:
        serving_feedback_backends(route, {})
    assert caught.value.status == 400
    message = str(caught.value)
    assert "DAG of 2 models (m, n)" in message
    assert "meta.requestPath" in message
    assert "'response'" in message  # says what to do


def test_a_route_of_external_models_only_has_nowhere_to_send_feedback() -> None:
    route = _route([Node(model="ext", full_path="http://elsewhere/predict")], [])
    with pytest.raises(FeedbackError, match="only external models") as caught:
        serving_feedback_backends(route, {})
    assert caught.value.status == 404


@pytest.mark.parametrize("backends", [[], [OLD], [SHADOW], [OLD, SHADOW]])
def test_no_serving_version_is_a_503(backends: list[Backend]) -> None:
    route = _route([Node(model="m")], [ModelRoute(name="m", backends=backends)])
    with pytest.raises(FeedbackError, match="no version of model 'm' is serving") as caught:
        serving_feedback_backends(route, {})
    assert caught.value.status == 503
