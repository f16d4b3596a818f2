"""Fuzzing the model server's and the router's OpenAPI documents with schemathesis.

Both servers run as real subprocesses; schemathesis reads each one's `/openapi.json` and sends
valid and invalid requests generated from it. No answer may be a 5xx except the deliberate one:
the served class raises `DeliberateFailure` for `{"jsonData": {"fail": true}}`, which must be a
500 that names it.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bench.serving import (
    ServerProcess,
    one_model,
    router_argv,
    running,
    serve_argv,
)
from executors.serving.routing import (
    Backend,
)

pytestmark = pytest.mark.integration

FUZZED = textwrap.dedent(
    """
    class DeliberateFailure(Exception):
        pass


    class Fuzzed:
        def predict(self, X, feature_names):
            if X == {"fail": True}:
                raise DeliberateFailure("asked to fail")
            return X

        def send_feedback(self, features, feature_names, reward, truth):
            return None
    """
)
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("fuzzed")
    (workdir / "Fuzzed.py").write_text(FUZZED)
    with running(serve_argv("Fuzzed"), cwd=workdir) as server:
        yield server


@pytest.fixture(scope="module")
def router_server(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("fuzzed-router")
    table = one_model(1, Backend(name="m", version="1", url=model_server.url, weight=100))
    path = workdir / "table.json"
    path.write_text(table.model_dump_json(by_alias=True))
    argv = router_argv(path)
    with running(
        argv, cwd=workdir, env={"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
    ) as server:
        yield server


def _load(server: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.fixture(scope="module")
def model_api(model_server: ServerProcess) -> Any:
    return _load(model_server)


@pytest.fixture(scope="module")
def router_api(router_server: ServerProcess) -> Any:
    return _load(router_server)


def _check_no_server_error(response: Any) -> None:
    if response.status_code == 500 and "DeliberateFailure" in response.text:
        return
    assert response.status_code < 500, f"{response.status_code}: {response.text}"


def _fuzz(api: Any, base_url: str) -> int:
    """Send generated valid and invalid requests to every operation; returns how many."""
    sent = 0
    for result in api.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            # schemathesis's own pytest plugin does not run on pytest 9 yet, so drive
            # its strategies with hypothesis directly
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def check(case: Any) -> None:
                nonlocal sent
                _check_no_server_error(case.call(base_url=base_url, timeout=30))
                sent += 1

            try:
                check()
            except Unsatisfiable:
                # nothing to make invalid (an operation without parameters or body)
                assert mode is GenerationMode.NEGATIVE
    return sent


def test_model_server_answers_no_5xx(model_api: Any, model_server: ServerProcess) -> None:
    assert _fuzz(model_api, model_server.url) > MAX_EXAMPLES


def test_router_answers_no_5xx(router_api: Any, router_server: ServerProcess) -> None:
    assert _fuzz(router_api, router_server.url) > MAX_EXAMPLES


def test_the_deliberate_failure_is_a_500_that_names_it(
    model_server: ServerProcess, router_server: ServerProcess
) -> None:
    import httpx

    for url in (f"{model_server.url}/predict", f"{router_server.url}/quickstart/predict"):
        response = httpx.post(url, json={"jsonData": {"fail": True}})
        assert response.status_code == 500
        assert "DeliberateFailure: asked to fail" in response.json()["status"]["reason"]


def test_documents_name_the_messages(model_api: Any, router_api: Any) -> None:
    for api in (model_api, router_api):
        schemas = api.raw_schema["components"]["schemas"]
        assert {"SeldonMessage", "Feedback", "ErrorResponse"} <= set(schemas)


def test_paths_are_documented(model_api: Any, router_api: Any, tmp_path: Path) -> None:
    assert {"/predict", "/send-feedback", "/health", "/metrics"} <= set(
        model_api.raw_schema["paths"]
    )
    assert {"/{axon}/{path}", "/{axon}/send-feedback", "/health"} <= set(
        router_api.raw_schema["paths"]
    )
