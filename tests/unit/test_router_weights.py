"""Who answers: rollout and routing weights, the weighted choice, shadows, header variants."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from executors.serving.routing import (
    Backend,
    Endpoint,
    ModelRoute,
    RoutingError,
    Variant,
    backend_model_weights,
    choose,
    model_backends,
    normalise,
    select_backends,
    shadows,
    version_weights,
)
from sensors.spec import DeployerModel, RolloutSpec


def _rollout(destinations: Sequence[tuple[int, int]], shadow: int | None = None) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "destinations": [{"destinationIndex": i, "weight": w} for i, w in destinations],
            **({"shadow": {"destinationIndex": shadow}} if shadow is not None else {}),
        }
    )


def _model(backends: Sequence[str], routing: Sequence[tuple[str, int]] = ()) -> DeployerModel:
    return DeployerModel.model_validate(
        {
            "name": "m",
            "backendModels": [{"name": b, "trainer": "T", "deployer": "D"} for b in backends],
            **(
                {
                    "routingStrategy": [
                        {"destinations": [{"destinationName": n, "weight": w} for n, w in routing]}
                    ]
                }
                if routing
                else {}
            ),
        }
    )


def _backend(name: str, weight: float, *, shadow: bool = False) -> Backend:
    return Backend(name=name, version="1", url=f"http://{name}", weight=weight, shadow=shadow)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([80, 20], [80.0, 20.0]),
        ([1, 1], [50.0, 50.0]),
        ([1, 3], [25.0, 75.0]),
        ([0, 0], [0.0, 0.0]),
        ([], []),
    ],
)
def test_normalise(weights: list[float], expected: list[float]) -> None:
    assert normalise(weights) == expected


@pytest.mark.parametrize(
    ("rollout", "available", "expected"),
    [
        (None, 1, {0: 100.0}),
        (None, 3, {0: 100.0}),
        (None, 0, {}),
        (_rollout([(0, 50), (1, 50)]), 2, {0: 50.0, 1: 50.0}),
        (_rollout([(0, 90), (1, 10)]), 2, {0: 90.0, 1: 10.0}),
        # a canary before the previous version exists: everything to the only one
        (_rollout([(0, 50), (1, 50)]), 1, {0: 100.0}),
        (_rollout([(0, 20), (1, 30), (2, 50)]), 2, {0: 40.0, 1: 60.0}),
        (_rollout([(1, 100)]), 2, {1: 100.0}),
        (_rollout([(1, 100)]), 1, {0: 100.0}),
        (_rollout([(0, 0), (1, 0)]), 2, {0: 100.0}),
        (_rollout([(0, 30), (0, 30), (1, 40)]), 2, {0: 60.0, 1: 40.0}),
    ],
)
def test_version_weights(
    rollout: RolloutSpec | None, available: int, expected: dict[int, float]
) -> None:
    assert version_weights(rollout, available) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (_model(["a"]), {"a": 100.0}),
        (_model(["a", "b"]), {"a": 50.0, "b": 50.0}),
        (_model(["a", "b"], [("a", 80), ("b", 20)]), {"a": 80.0, "b": 20.0}),
        (_model(["a", "b"], [("a", 100)]), {"a": 100.0, "b": 0.0}),
    ],
)
def test_backend_model_weights(model: DeployerModel, expected: dict[str, float]) -> None:
    assert backend_model_weights(model) == expected


def test_routing_to_an_unknown_backend_model_is_an_error() -> None:
    with pytest.raises(RoutingError, match="'c', which is not one of its backendModels"):
        backend_model_weights(_model(["a", "b"], [("c", 100)]))


def _endpoints(name: str, count: int) -> list[Endpoint]:
    return [Endpoint(version=f"{name}{count - i}", url=f"http://{name}/{i}") for i in range(count)]


@pytest.mark.parametrize(
    ("model", "rollout", "available", "expected"),
    [
        # one backend model, one version: all traffic to it
        (_model(["a"]), None, {"a": 1}, [("a", "a1", 100.0, False)]),
        # routingStrategy 80/20 over two backend models, newest version each
        (
            _model(["a", "b"], [("a", 80), ("b", 20)]),
            None,
            {"a": 2, "b": 1},
            [("a", "a2", 80.0, False), ("b", "b1", 20.0, False)],
        ),
        # rollout 50/50 across a's two versions
        (
            _model(["a"]),
            _rollout([(0, 50), (1, 50)]),
            {"a": 2},
            [("a", "a2", 50.0, False), ("a", "a1", 50.0, False)],
        ),
        # both: routing 80/20 and rollout 90/10 multiply
        (
            _model(["a", "b"], [("a", 80), ("b", 20)]),
            _rollout([(0, 90), (1, 10)]),
            {"a": 2, "b": 2},
            [
                ("a", "a2", 72.0, False),
                ("a", "a1", 8.0, False),
                ("b", "b2", 18.0, False),
                ("b", "b1", 2.0, False),
            ],
        ),
        # shadow: the newest gets all traffic, the previous a copy
        (
            _model(["a"]),
            _rollout([(0, 100)], shadow=1),
            {"a": 2},
            [("a", "a2", 100.0, False), ("a", "a1", 0.0, True)],
        ),
        # a shadow index that is not deployed is ignored
        (_model(["a"]), _rollout([(0, 100)], shadow=1), {"a": 1}, [("a", "a1", 100.0, False)]),
        # a backend model with no running version: the others take its share
        (
            _model(["a", "b"], [("a", 80), ("b", 20)]),
            None,
            {"a": 1},
            [("a", "a1", 100.0, False)],
        ),
    ],
)
def test_model_backends(
    model: DeployerModel,
    rollout: RolloutSpec | None,
    available: dict[str, int],
    expected: list[tuple[str, str, float, bool]],
) -> None:
    versions = {name: _endpoints(name, count) for name, count in available.items()}
    backends = model_backends(model, rollout, versions)
    assert [(b.name, b.version, round(b.weight, 9), b.shadow) for b in backends] == expected


@pytest.mark.parametrize(
    ("weights", "point", "expected"),
    [
        ([80, 20], 0.0, 0),
        ([80, 20], 0.79, 0),
        ([80, 20], 0.8, 1),
        ([80, 20], 0.999, 1),
        ([0, 100], 0.0, 1),
        ([50, 0, 50], 0.5, 2),
        ([1, 1, 1, 1], 0.26, 1),
    ],
)
def test_choose_is_a_cumulative_pick(weights: list[float], point: float, expected: int) -> None:
    backends = [_backend(f"b{i}", w) for i, w in enumerate(weights)]
    assert choose(backends, lambda: point) == backends[expected]


def test_choose_never_picks_a_shadow_and_needs_a_weight() -> None:
    live, shadow = _backend("live", 100), _backend("shadow", 0, shadow=True)
    assert choose([shadow, live], lambda: 0.0) == live
    assert shadows([shadow, live]) == [shadow]
    with pytest.raises(RoutingError, match="no backend with a positive weight"):
        choose([shadow, _backend("zero", 0)], lambda: 0.0)


@pytest.mark.parametrize(("share", "seed"), [(80, 1), (50, 2), (90, 3)])
def test_choose_splits_ten_thousand_picks_within_two_points(share: int, seed: int) -> None:
    backends = [_backend("a", share), _backend("b", 100 - share)]
    rng = random.Random(seed)
    picks = Counter(choose(backends, rng.random).name for _ in range(10_000))
    assert abs(100 * picks["a"] / 10_000 - share) < 2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "default"),
        ({"x-canary": "yes"}, "canary"),
        ({"x-canary": "no"}, "default"),
        ({"x-canary": "yes", "x-user": "ann"}, "ann"),
    ],
)
def test_select_backends_follows_the_first_matching_variant(
    headers: dict[str, str], expected: str
) -> None:
    model = ModelRoute(
        name="m",
        backends=[_backend("default", 100)],
        variants=[
            Variant(headers={"X-User": "ann", "X-Canary": "yes"}, backends=[_backend("ann", 100)]),
            Variant(headers={"X-Canary": "yes"}, backends=[_backend("canary", 100)]),
        ],
    )
    assert [b.name for b in select_backends(model, headers)] == [expected]
