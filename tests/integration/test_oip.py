"""Open Inference Protocol v2 against real `ranvier serve` processes, direct and routed.

The requests are written from the protocol's specification (KServe "V2 Inference Protocol" /
Triton's HTTP API): `POST v2/models/<name>[/versions/<v>]/infer` with `inputs` of `name`,
`shape`, `datatype` and row-major `data` (flat or nested), answers with `model_name`,
`model_version`, `id` and `outputs`; errors as `{"error": "<message>"}`; health at
`v2/health/live|ready` and `v2/models/<name>[/ready]`.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.serving import (
    ServerProcess,
    one_model,
    router_argv,
    running,
    serve_argv,
)
from executors.serving.routing import Backend

pytestmark = pytest.mark.integration

TENSORS = textwrap.dedent(
    '''
    """Doubles numbers (keeping a numpy dtype), upper-cases text, echoes several inputs."""

    import numpy as np


    class Tensors:
        def predict(self, X, feature_names):
            if isinstance(X, dict):
                return {name: value for name, value in X.items()}
            flat = np.asarray(X).ravel()
            if flat.size and isinstance(flat[0], str):
                return np.char.upper(np.asarray(X)).tolist()
            if flat.size and isinstance(flat[0], (bool, np.bool_)):
                return np.logical_not(np.asarray(X))
            if feature_names == ["pixels"]:
                return (np.asarray(X, dtype=np.float32) * 2).astype(np.float32)
            return [[v * 2 for v in row] for row in X] if isinstance(X[0], list) else [
                v * 2 for v in X
            ]
    '''
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    workdir = tmp_path_factory.mktemp("oip")
    (workdir / "Tensors.py").write_text(TENSORS)
    env = {"RANVIER_MODEL": "m"}
    with (
        running([*serve_argv("Tensors"), "--model-version", "1"], cwd=workdir, env=env) as one,
        running([*serve_argv("Tensors"), "--model-version", "2"], cwd=workdir, env=env) as two,
    ):
        yield [one, two]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, servers: list[ServerProcess]) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("oip-router")
    table = workdir / "table.json"
    backends = [
        Backend(name="m", version="1", url=servers[0].url, weight=75),
        Backend(name="m", version="2", url=servers[1].url, weight=25),
    ]
    table.write_text(one_model(1, *backends).model_dump_json(by_alias=True))
    with running(router_argv(table, "--port", "0", "--seed", "7"), cwd=workdir) as process:
        yield f"{process.url}/quickstart"


@pytest.fixture(params=["direct", "routed"])
def base(request: pytest.FixtureRequest, servers: list[ServerProcess]) -> str:
    if request.param == "direct":
        return servers[0].url
    return str(request.getfixturevalue("router"))


def infer(base: str, body: dict[str, Any], path: str = "/v2/models/m/infer") -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=30)


def test_fp32_inputs_flat_or_nested_come_back_as_fp32_tensors(base: str) -> None:
    flat = {
        "id": "42",
        "inputs": [
            {"name": "pixels", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}
        ],
    }
    response = infer(base, flat)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "m"
    assert body["model_version"] in {"1", "2"}
    assert body["id"] == "42"
    assert body["outputs"] == [
        {
            "name": "output-0",
            "shape": [2, 3],
            "datatype": "FP32",
            "data": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0],
        }
    ]
    nested = {
        "inputs": [
            {"name": "pixels", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}
        ],
        "outputs": [{"name": "doubled"}],
    }
    output = infer(base, nested).json()["outputs"][0]
    assert output["name"] == "doubled"  # the one output the client asked for, by its name
    assert output["data"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]


def test_int64_and_bool_tensors(base: str) -> None:
    ints = {"inputs": [{"name": "x", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}]}
    assert infer(base, ints).json()["outputs"][0] == {
        "name": "output-0",
        "shape": [3],
        "datatype": "INT64",
        "data": [2, 4, 6],
    }
    flags = {
        "inputs": [{"name": "f", "shape": [2, 2], "datatype": "BOOL", "data": [True, False] * 2}]
    }
    output = infer(base, flags).json()["outputs"][0]
    assert (output["datatype"], output["shape"]) == ("BOOL", [2, 2])
    assert output["data"] == [False, True, False, True]


def test_bytes_inputs_are_text(base: str) -> None:
    text = {
        "inputs": [
            {"name": "prompt", "shape": [2], "datatype": "BYTES", "data": ["to be", "or not"]}
        ]
    }
    response = infer(base, text)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == [
        {"name": "output-0", "shape": [2], "datatype": "BYTES", "data": ["TO BE", "OR NOT"]}
    ]


def test_several_inputs_become_several_outputs(base: str) -> None:
    body = {
        "inputs": [
            {"name": "a", "shape": [1, 2], "datatype": "FP64", "data": [0.5, 1.5]},
            {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["x"]},
        ]
    }
    outputs = {o["name"]: o for o in infer(base, body).json()["outputs"]}
    assert outputs["a"] == {"name": "a", "shape": [1, 2], "datatype": "FP64", "data": [0.5, 1.5]}
    assert outputs["b"] == {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["x"]}


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        ({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}, "holds 4"),
        ({"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}, "unknown datatype"),
        ({"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}, "must be a string"),
        ({"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}, "must be whole"),
    ],
)
def test_bad_tensors_get_400_with_the_protocols_error(
    base: str, tensor: dict[str, Any], fragment: str
) -> None:
    response = infer(base, {"inputs": [tensor]})
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_an_unknown_model_gets_404(base: str) -> None:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    response = infer(base, body, "/v2/models/nope/infer")
    assert response.status_code == 404
    assert "nope" in response.json()["error"]


def test_health_and_metadata(base: str) -> None:
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    ready = httpx.get(f"{base}/v2/models/m/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    metadata = httpx.get(f"{base}/v2/models/m").json()
    assert metadata["name"] == "m"
    assert "1" in metadata["versions"]
    assert {"inputs", "outputs", "platform"} <= set(metadata)


def test_a_version_path_reaches_that_version(servers: list[ServerProcess]) -> None:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    answer = infer(servers[1].url, body, "/v2/models/m/versions/2/infer").json()
    assert answer["model_version"] == "2"
    assert infer(servers[1].url, body, "/v2/models/m/versions/9/infer").status_code == 404


def test_the_router_splits_v2_traffic_by_weight(router: str) -> None:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    with httpx.Client(timeout=30) as client:
        versions = Counter(
            client.post(f"{router}/v2/models/m/infer", json=body).json()["model_version"]
            for _ in range(200)
        )
    assert set(versions) == {"1", "2"}
    assert 0.6 <= versions["1"] / 200 <= 0.9  # 75 % by weight; the bound is over 4 sd wide
