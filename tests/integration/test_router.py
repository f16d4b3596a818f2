"""The router in a subprocess in front of real model servers (`ranvier serve` subprocesses).

Splits are measured over HTTP at 2,000 requests per test (RANVIER_TEST_SPLIT_REQUESTS changes
it) with a bound of 4 binomial standard deviations, at least 2 points: 3.6 points at 80/20 and
2,000 requests, 2 points at 10,000. The router is seeded, so a run is repeatable. The
10,000-pick, 2-point check runs on the pure chooser in tests/unit/test_router_weights.py,
because 10,000 routed requests per split take too long on the 2-core CI machine.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.serving import (
    ServerProcess,
    one_model,
    router_argv,
    running,
    serve_argv,
)
from executors.serving.routing import (
    Backend,
    DeployerTable,
    ModelRoute,
    Node,
    RouteTable,
    RoutingTable,
)
from executors.serving.upstream import KeepAliveTransport

pytestmark = pytest.mark.integration

REQUESTS = int(os.environ.get("RANVIER_TEST_SPLIT_REQUESTS", "2000"))
CONCURRENCY = 16


def bound_points(share: float, count: int) -> float:
    """4 standard deviations of a binomial share, in percentage points, at least 2."""
    p = share / 100
    return max(2.0, 4 * 100 * math.sqrt(p * (1 - p) / count))


TAGGER = textwrap.dedent(
    '''
    """Answers with its version and what it got; sleeps when asked to."""

    import os
    import time


    class Tagger:
        def predict(self, X, feature_names):
            if isinstance(X, dict) and "sleep" in X:
                time.sleep(X["sleep"])
            return {"by": os.environ["RANVIER_VERSION"], "got": X}
    '''
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("router")
    (path / "Tagger.py").write_text(TAGGER)
    return path


@pytest.fixture(scope="module")
def model_a(workdir: Path) -> Iterator[ServerProcess]:
    with running(serve_argv("Tagger"), cwd=workdir, env={"RANVIER_VERSION": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def model_b(workdir: Path) -> Iterator[ServerProcess]:
    with running(serve_argv("Tagger"), cwd=workdir, env={"RANVIER_VERSION": "2"}) as server:
        yield server


def write_table(path: Path, table: RoutingTable) -> None:
    """Replace the table file in one step, so the router never reads half a file."""
    partial = path.with_suffix(".tmp")
    partial.write_text(table.model_dump_json(by_alias=True))
    os.replace(partial, path)


@pytest.fixture(scope="module")
def table_file(workdir: Path, model_a: ServerProcess) -> Path:
    path = workdir / "table.json"
    write_table(path, one_model(1, Backend(name="m", version="1", url=model_a.url, weight=100)))
    return path


@pytest.fixture(scope="module")
def router(workdir: Path, table_file: Path) -> Iterator[ServerProcess]:
    argv = router_argv(table_file, "--interval", "0.05", "--seed", "7")
    with running(argv, cwd=workdir) as server:
        yield server


async def install(router: ServerProcess, path: Path, table: RoutingTable) -> None:
    """Write a table and wait until the router serves it."""
    write_table(path, table)
    async with httpx.AsyncClient(base_url=router.url) as client:
        for _ in range(600):
            if (await client.get("/health")).json()["revision"] == table.revision:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"router did not load revision {table.revision}:\n{router.output()}")


_revision = iter(range(100, 10_000))


async def drive(url: str, count: int, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """POST `count` predictions with fixed concurrency; every answer must be a 200."""
    payload = json.dumps(body or {"data": {"ndarray": [[1]]}}).encode()
    # the router's own lean transport keeps the client from being the bottleneck
    async with httpx.AsyncClient(timeout=60, transport=KeepAliveTransport()) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)
        answers: list[dict[str, Any]] = []

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                response = await client.post(
                    url, content=payload, headers={"content-type": "application/json"}
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return answers


def predictions(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ranvier_model_requests_total" and s.labels["endpoint"] == "predict"
    )


def feedbacks(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ranvier_model_feedback_total"
    )


@pytest.mark.parametrize("split", [(80, "a", "b"), (50, "m", "m")])
async def test_traffic_splits_by_weight(
    router: ServerProcess,
    table_file: Path,
    model_a: ServerProcess,
    model_b: ServerProcess,
    split: tuple[int, str, str],
) -> None:
    """80/20 across two backend models, and a 50/50 canary across two versions of one."""
    share_a, name_a, name_b = split
    table = one_model(
        next(_revision),
        Backend(name=name_a, version="1", url=model_a.url, weight=share_a),
        Backend(name=name_b, version="2", url=model_b.url, weight=100 - share_a),
    )
    await install(router, table_file, table)
    before = predictions(model_a), predictions(model_b)
    answers = await drive(f"{router.url}/quickstart/predict", REQUESTS)
    by = Counter(a["jsonData"]["by"] for a in answers)
    paths = Counter(a["meta"]["requestPath"]["m"] for a in answers)
    assert paths == {f"{name_a}:1": by["1"], f"{name_b}:2": by["2"]}
    assert abs(100 * by["1"] / REQUESTS - share_a) <= bound_points(share_a, REQUESTS)
    # the model servers agree with the answers
    assert (predictions(model_a) - before[0], predictions(model_b) - before[1]) == (
        by["1"],
        by["2"],
    )


async def test_a_shadow_gets_a_copy_of_each_request(
    router: ServerProcess, table_file: Path, model_a: ServerProcess, model_b: ServerProcess
) -> None:
    table = one_model(
        next(_revision),
        Backend(name="m", version="1", url=model_a.url, weight=100),
        Backend(name="m", version="2", url=model_b.url, shadow=True),
    )
    await install(router, table_file, table)
    count = 200
    before = predictions(model_b)
    answers = await drive(f"{router.url}/quickstart/predict", count)
    assert {a["jsonData"]["by"] for a in answers} == {"1"}
    for _ in range(400):  # mirrored copies are fire-and-forget: wait for them to land
        if predictions(model_b) - before >= count:
            break
        await asyncio.sleep(0.05)
    assert predictions(model_b) - before == count


async def test_feedback_goes_to_the_version_that_answered(
    router: ServerProcess, table_file: Path, model_a: ServerProcess, model_b: ServerProcess
) -> None:
    table = one_model(
        next(_revision),
        Backend(name="m", version="1", url=model_a.url, weight=50),
        Backend(name="m", version="2", url=model_b.url, weight=50),
    )
    await install(router, table_file, table)
    answers = await drive(f"{router.url}/quickstart/predict", 40)
    one = {a["jsonData"]["by"]: a for a in answers}
    assert set(one) == {"1", "2"}
    async with httpx.AsyncClient(base_url=router.url) as client:
        for version, server, other in (("1", model_a, model_b), ("2", model_b, model_a)):
            before = feedbacks(server), feedbacks(other)
            feedback = {
                "request": {"data": {"ndarray": [[1]]}},
                "response": one[version],
                "reward": 1,
            }
            response = await client.post("/quickstart/send-feedback", json=feedback)
            assert response.status_code == 200, response.text
            assert (feedbacks(server), feedbacks(other)) == (before[0] + 1, before[1])
        gone = {"response": {"jsonData": 1, "meta": {"requestPath": {"m": "m:9"}}}, "reward": 1}
        assert (await client.post("/quickstart/send-feedback", json=gone)).status_code == 404


async def test_feedback_without_the_answer_goes_to_every_serving_version(
    router: ServerProcess, table_file: Path, model_a: ServerProcess, model_b: ServerProcess
) -> None:
    """Clients that send request + reward only: each version serving /predict counts it."""
    feedback = {"request": {"data": {"ndarray": [[1]]}}, "reward": 0}
    half = one_model(
        next(_revision),
        Backend(name="m", version="1", url=model_a.url, weight=50),
        Backend(name="m", version="2", url=model_b.url, weight=50),
    )
    shadowed = one_model(
        next(_revision),
        Backend(name="m", version="1", url=model_a.url, weight=100),
        Backend(name="m", version="2", url=model_b.url, shadow=True),
    )
    async with httpx.AsyncClient(base_url=router.url) as client:
        for table, path, counted in (
            (half, "/quickstart/send-feedback", (1, 1)),
            (half, "/quickstart/deploy/send-feedback", (1, 1)),  # the deployer's own URL
            (shadowed, "/quickstart/send-feedback", (1, 0)),  # a shadow never answers a caller
        ):
            await install(router, table_file, table)
            before = feedbacks(model_a), feedbacks(model_b)
            response = await client.post(path, json=feedback)
            assert response.status_code == 200, response.text
            after = feedbacks(model_a), feedbacks(model_b)
            assert (after[0] - before[0], after[1] - before[1]) == counted, path


async def test_feedback_without_the_answer_to_a_dag_of_models_says_why_not(
    router: ServerProcess, table_file: Path, model_a: ServerProcess, model_b: ServerProcess
) -> None:
    dag = RouteTable(path="/predict", dag=[Node(model="m"), Node(model="n", dependencies=["m"])])
    table = RoutingTable(
        revision=next(_revision),
        deployers=[
            DeployerTable(
                axon="quickstart",
                name="deploy",
                routes=[dag, RouteTable(path="/other", dag=[Node(model="m")])],
                models=[
                    ModelRoute(
                        name="m",
                        backends=[Backend(name="m", version="1", url=model_a.url, weight=100)],
                    ),
                    ModelRoute(
                        name="n",
                        backends=[Backend(name="n", version="1", url=model_b.url, weight=100)],
                    ),
                ],
            )
        ],
    )
    await install(router, table_file, table)
    feedback = {"request": {"data": {"ndarray": [[1]]}}, "reward": 1}
    before = feedbacks(model_a), feedbacks(model_b)
    async with httpx.AsyncClient(base_url=router.url) as client:
        ambiguous = await client.post("/quickstart/send-feedback", json=feedback)
        assert ambiguous.status_code == 400
        reason = ambiguous.json()["status"]["reason"]
        assert "DAG of 2 models (m, n)" in reason
        assert "send the router's answer as 'response'" in reason
        answer = (await client.post("/quickstart/predict", json=feedback["request"])).json()
        path = answer["meta"]["requestPath"]
        assert (path["m"], path["n"]) == ("m:1", "n:1")
        named = await client.post(
            "/quickstart/send-feedback", json={**feedback, "response": answer}
        )
        assert named.status_code == 200, named.text
    assert (feedbacks(model_a), feedbacks(model_b)) == (before[0] + 1, before[1] + 1)


async def test_feedback_without_the_answer_needs_a_predict_route(
    router: ServerProcess, table_file: Path, model_a: ServerProcess
) -> None:
    only_other = one_model(
        next(_revision),
        Backend(name="m", version="1", url=model_a.url, weight=100),
        routes=[RouteTable(path="/generate", dag=[Node(model="m")])],
    )
    await install(router, table_file, only_other)
    async with httpx.AsyncClient(base_url=router.url) as client:
        response = await client.post("/quickstart/send-feedback", json={"reward": 1})
    assert response.status_code == 400
    assert "has no route /predict" in response.json()["status"]["reason"]


async def test_table_swaps_live_and_in_flight_requests_finish(
    router: ServerProcess, table_file: Path, model_a: ServerProcess, model_b: ServerProcess
) -> None:
    only_a = one_model(next(_revision), Backend(name="m", version="1", url=model_a.url, weight=100))
    await install(router, table_file, only_a)
    async with httpx.AsyncClient(base_url=router.url, timeout=60) as client:
        slow = asyncio.create_task(
            client.post("/quickstart/predict", json={"jsonData": {"sleep": 1.0}})
        )
        await asyncio.sleep(0.2)  # let the slow request reach model A before the swap
        only_b = one_model(
            next(_revision), Backend(name="m", version="2", url=model_b.url, weight=100)
        )
        await install(router, table_file, only_b)
        after = await client.post("/quickstart/predict", json={"jsonData": 1})
        assert after.json()["jsonData"]["by"] == "2"
        finished = await slow
        assert finished.status_code == 200
        assert finished.json()["jsonData"]["by"] == "1"


async def test_a_bad_table_is_refused_and_the_old_one_kept(
    router: ServerProcess, table_file: Path, model_a: ServerProcess
) -> None:
    good = one_model(next(_revision), Backend(name="m", version="1", url=model_a.url, weight=100))
    await install(router, table_file, good)
    cyclic = one_model(
        next(_revision),
        Backend(name="m", version="1", url=model_a.url, weight=100),
        routes=[RouteTable(path="/predict", dag=[Node(model="m", dependencies=["m"])])],
    )
    write_table(table_file, cyclic)
    table_file.with_name("broken.json").write_text("{")
    async with httpx.AsyncClient(base_url=router.url) as client:
        for _ in range(100):  # the router logs the refusal; the old table keeps serving
            if "router.table_rejected" in router.output():
                break
            await asyncio.sleep(0.05)
        assert "router.table_rejected" in router.output()
        assert (await client.get("/health")).json()["revision"] == good.revision
        assert (await client.post("/quickstart/predict", json={"jsonData": 1})).status_code == 200


async def test_dag_chains_nodes_and_calls_external_models(
    router: ServerProcess, table_file: Path, model_a: ServerProcess, model_b: ServerProcess
) -> None:
    """first -> (second with the input, external via fullPath) -> the answer of both."""
    table = RoutingTable(
        revision=next(_revision),
        deployers=[
            DeployerTable(
                axon="quickstart",
                name="deploy",
                routes=[
                    RouteTable(
                        path="/chain",
                        dag=[
                            Node(model="first"),
                            Node(model="second", dependencies=["first"], include_input=True),
                            Node(
                                model="external",
                                dependencies=["first"],
                                full_path=f"{model_b.url}/predict",
                                health_path=f"{model_b.url}/health",
                            ),
                        ],
                    )
                ],
                models=[
                    ModelRoute(
                        name="first",
                        backends=[Backend(name="f", version="1", url=model_a.url, weight=100)],
                    ),
                    ModelRoute(
                        name="second",
                        backends=[Backend(name="s", version="2", url=model_b.url, weight=100)],
                    ),
                ],
            )
        ],
    )
    await install(router, table_file, table)
    async with httpx.AsyncClient(base_url=router.url) as client:
        response = await client.post("/quickstart/chain", json={"strData": "hi"})
        assert response.status_code == 200, response.text
        body = response.json()
        first = {"jsonData": {"by": "1", "got": "hi"}}
        assert body["jsonData"]["second"] == {
            "jsonData": {"by": "2", "got": {"first": first, "input": {"strData": "hi"}}}
        }
        assert body["jsonData"]["external"] == {
            "jsonData": {"by": "2", "got": {"by": "1", "got": "hi"}}
        }
        assert body["meta"]["requestPath"] == {"first": "f:1", "second": "s:2"}
        health = await client.get("/quickstart/health")
        assert health.status_code == 200
        assert set(health.json()["checks"]) == {f"{model_a.url}/health", f"{model_b.url}/health"}


async def test_unknown_routes_and_failing_models(
    router: ServerProcess, table_file: Path, model_a: ServerProcess
) -> None:
    table = one_model(next(_revision), Backend(name="m", version="1", url=model_a.url, weight=100))
    await install(router, table_file, table)
    async with httpx.AsyncClient(base_url=router.url) as client:
        assert (await client.post("/nope/predict", json={"jsonData": 1})).status_code == 404
        assert (await client.post("/quickstart/nope", json={"jsonData": 1})).status_code == 404
        bad = await client.post("/quickstart/predict", content="{")
        assert bad.status_code == 400  # the model server's 400 comes back as it is
        assert "not valid JSON" in bad.json()["status"]["reason"]
        metrics = (await client.get("/metrics")).text
        assert "ranvier_router_requests_total" in metrics
