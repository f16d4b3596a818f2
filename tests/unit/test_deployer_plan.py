"""The deployer's and the KV table's pure decisions, table-driven (no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from events.errors import RanvierError
from executors.deploy_flow import (
    DeployError,
    choose_version,
    expand_replicas,
    fixed_url,
    merge_part,
    next_history,
    routed_versions,
    versions_kept,
)
from executors.registry import ModelVersion
from executors.serving.kv_table import merge_parts
from executors.serving.routing import (
    Backend,
    DeployerTable,
    ModelRoute,
    Node,
    RouteTable,
    RoutingTable,
)
from ranvier.commands.endpoint import NothingDeployedError, endpoint_document
from sensors.spec import BackendModel, Deployer, Task


def deployer(rollout: list[dict[str, Any]] | None = None) -> Deployer:
    return Deployer.model_validate(
        {
            "name": "d",
            "rolloutSpec": rollout or [],
            "models": [
                {"name": "m", "backendModels": [{"name": "b", "trainer": "T", "deployer": "S"}]}
            ],
        }
    )


@pytest.mark.parametrize(
    ("rollout", "kept"),
    [
        (None, 1),
        ([{"destinations": [{"destinationIndex": 0, "weight": 100}]}], 1),
        (
            [
                {
                    "destinations": [
                        {"destinationIndex": 0, "weight": 90},
                        {"destinationIndex": 1, "weight": 10},
                    ]
                }
            ],
            2,
        ),
        (
            [
                {
                    "destinations": [{"destinationIndex": 0, "weight": 100}],
                    "shadow": {"destinationIndex": 2},
                }
            ],
            3,
        ),
    ],
)
def test_versions_kept(rollout: list[dict[str, Any]] | None, kept: int) -> None:
    assert versions_kept(deployer(rollout)) == kept


@pytest.mark.parametrize(
    ("previous", "chosen", "keep", "expected"),
    [
        ([], 1, 2, (1,)),
        ([1], 2, 2, (2, 1)),
        ([2, 1], 3, 2, (3, 2)),
        ([2, 1], 2, 2, (2, 1)),  # redeploying the same version changes nothing
        ([3, 2], 1, 2, (1, 3)),  # best went back to an older version: it becomes index 0
        ([2, 1], 3, 1, (3,)),
    ],
)
def test_next_history(
    previous: list[int], chosen: int, keep: int, expected: tuple[int, ...]
) -> None:
    assert next_history(previous, chosen, keep) == expected


def version(n: int, loss: float | None, phase: str = "Succeeded") -> ModelVersion:
    return ModelVersion.model_validate(
        {
            "axon": "a",
            "task": "T",
            "version": n,
            "run_id": f"r{n}",
            "path": f"/m/{n}",
            "phase": phase,
            "metrics": {} if loss is None else {"loss": loss},
        }
    )


TRAINER = Task.model_validate({"name": "T", "train": {"command": ["x"], "lossMetric": "loss"}})
BACKEND = BackendModel.model_validate({"name": "b", "trainer": "T", "deployer": "S"})


@pytest.mark.parametrize(
    ("strategy", "versions", "chosen"),
    [
        ("best", [version(1, 0.5), version(2, 0.9)], 1),
        ("latest", [version(1, 0.5), version(2, 0.9)], 2),
        ("best", [version(1, 0.5), version(2, 0.1, "Failed")], 1),
    ],
)
def test_choose_version(strategy: str, versions: list[ModelVersion], chosen: int) -> None:
    assert choose_version(BACKEND, strategy, TRAINER, versions).version == chosen


@pytest.mark.parametrize(
    ("versions", "says"),
    [
        ([], "has no Succeeded version"),
        ([version(1, 0.5, "Failed")], "has no Succeeded version"),
        ([version(1, None)], "reported lossMetric 'loss'"),
    ],
)
def test_choose_version_errors(versions: list[ModelVersion], says: str) -> None:
    with pytest.raises(DeployError, match=says):
        choose_version(BACKEND, "best", TRAINER, versions)


def table(*backends: Backend, name: str = "d", axon: str = "a") -> DeployerTable:
    return DeployerTable(
        axon=axon,
        name=name,
        routes=[RouteTable(path="/predict", dag=[Node(model="m")])],
        models=[ModelRoute(name="m", backends=list(backends))],
    )


def test_expand_replicas_splits_each_share_and_keeps_one_shadow() -> None:
    planned = table(
        Backend(name="b", version="2", url="x", weight=80),
        Backend(name="b", version="1", url="x", weight=20),
        Backend(name="b", version="1", url="x", shadow=True),
    )
    urls = {("b", "2"): ["u2a", "u2b"], ("b", "1"): ["u1a", "u1b"]}
    got = expand_replicas(planned, urls).models[0].backends
    assert [(b.version, b.url, b.weight, b.shadow) for b in got] == [
        ("2", "u2a", 40.0, False),
        ("2", "u2b", 40.0, False),
        ("1", "u1a", 10.0, False),
        ("1", "u1b", 10.0, False),
        ("1", "u1a", 0.0, True),
    ]
    assert routed_versions(planned) == {("b", "2"), ("b", "1")}


def test_routed_versions_skips_zero_weights() -> None:
    planned = table(
        Backend(name="b", version="2", url="x", weight=100),
        Backend(name="b", version="1", url="x", weight=0),
    )
    assert routed_versions(planned) == {("b", "2")}


def test_merge_part_replaces_one_deployer_and_counts_revisions() -> None:
    one = merge_part(None, "d", table(name="d"))
    two = merge_part(one, "e", table(name="e"))
    again = merge_part(two, "d", table(Backend(name="b", version="3", url="u"), name="d"))
    assert [d.name for d in again.deployers] == ["e", "d"]
    assert again.revision == 3
    assert merge_part(again, "e", None).deployers == [again.deployers[1]]


def test_merge_parts_is_ordered_by_key() -> None:
    parts = {
        "router.default.b": RoutingTable(deployers=[table(axon="b")]),
        "router.default.a": RoutingTable(deployers=[table(axon="a")]),
    }
    merged = merge_parts(parts, 7)
    assert merged.revision == 7
    assert [d.axon for d in merged.deployers] == ["a", "b"]


def test_fixed_url_ends_with_a_slash() -> None:
    assert fixed_url("http://h:1", "ax") == "http://h:1/ax/"
    assert fixed_url("http://h:1/", "ax") == "http://h:1/ax/"


def test_endpoint_document() -> None:
    record = {
        "deployer": "d",
        "url": "http://old:1/ax/",
        "models": [{"name": "m", "backends": [{"name": "b", "version": "1", "url": "u"}]}],
    }
    doc = endpoint_document("ax", "default", "http://new:2", [record])
    assert doc["fixedUrl"] == "http://new:2/ax/"  # the running router wins over the record
    assert doc["models"] == record["models"]
    assert endpoint_document("ax", "default", None, [record])["fixedUrl"] == "http://old:1/ax/"
    with pytest.raises(NothingDeployedError, match="nothing is deployed for axon 'ax'"):
        endpoint_document("ax", "default", "http://new:2", [])
    with pytest.raises(RanvierError, match="no router is running"):
        endpoint_document("ax", "default", None, [{**record, "url": None}])
