"""`ranvier serve` in a real subprocess: every request form, feedback, metrics, 400s and 500s."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.serving import ServerProcess, running, serve_argv
from ranvier.cli import main

pytestmark = pytest.mark.integration

ECHO = textwrap.dedent(
    '''
    """A model that answers with its input, fails on request and reports metrics."""

    from executors.serving.sdk import metrics


    class Echo:
        def __init__(self, model_path):
            self.model_path = model_path
            self.calls = 0

        def predict(self, X, feature_names):
            if X == "fail":
                raise ValueError("asked to fail")
            if X == "nan":
                return float("nan")
            self.calls += 1
            metrics.gauge("echo_calls", self.calls)
            return X

        def send_feedback(self, features, feature_names, reward, truth):
            metrics.counter("feedback_seen", 1)
            if features == "fail":
                raise RuntimeError("feedback failed")

        def tags(self):
            return {"model_path": self.model_path}

        def metrics(self):
            return [{"type": "GAUGE", "key": "last_batch", "value": 1}]
    '''
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("echo")
    (workdir / "Echo.py").write_text(ECHO)
    model_dir = workdir / "model"
    model_dir.mkdir()
    env = {"RANVIER_AXON": "quickstart", "RANVIER_VERSION": "v3"}
    with running(serve_argv("Echo", "--model-path", str(model_dir)), cwd=workdir, env=env) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _samples(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_health_says_loaded(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "Echo", "version": "v3"}


@pytest.mark.parametrize(
    ("content", "content_type", "expected"),
    [
        (
            '{"data": {"ndarray": [[1, 2]]}}',
            "application/json",
            {"data": {"names": [], "ndarray": [[1, 2]]}},
        ),
        (
            '{"data": {"names": ["a", "b"], "ndarray": [[1, 2]]}}',
            "application/json",
            {"data": {"names": [], "ndarray": [[1, 2]]}},
        ),
        (
            '{"data": {"tensor": {"shape": [1, 2], "values": [1, 2]}}}',
            "application/json",
            {"data": {"names": [], "tensor": {"shape": [1, 2], "values": [1.0, 2.0]}}},
        ),
        ('{"strData": "To be"}', "application/json", {"strData": "To be"}),
        ('{"jsonData": {"k": [1]}}', "application/json", {"jsonData": {"k": [1]}}),
        # what `curl -d '{...}'` sends
        (
            '{"data": {"ndarray": [3]}}',
            "application/x-www-form-urlencoded",
            {"data": {"names": [], "ndarray": [3]}},
        ),
        (
            "json=" + quote('{"strData": "a&b"}'),
            "application/x-www-form-urlencoded",
            {"strData": "a&b"},
        ),
    ],
)
def test_every_request_form_is_answered_in_its_form(
    client: httpx.Client, content: str, content_type: str, expected: dict[str, Any]
) -> None:
    response = client.post("/predict", content=content, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    body = response.json()
    meta = body.pop("meta")
    assert body == expected
    assert meta["modelName"] == "Echo"
    assert meta["modelVersion"] == "v3"
    assert meta["requestPath"] == {"Echo": "v3"}
    assert meta["tags"]["model_path"].endswith("model")
    assert meta["metrics"] == [{"key": "last_batch", "type": "GAUGE", "value": 1.0, "tags": {}}]


def test_feedback_is_counted_with_its_reward(client: httpx.Client) -> None:
    before = _samples(client)
    rewards = [1.0, 0.5, 0.0]
    for reward in rewards:
        feedback = {
            "request": {"data": {"ndarray": [[1]]}},
            "response": {"data": {"ndarray": [[1]]}},
            "reward": reward,
        }
        response = client.post("/send-feedback", json=feedback)
        assert response.status_code == 200, response.text
    after = _samples(client)
    assert _value(after, "ranvier_model_feedback_total") - _value(
        before, "ranvier_model_feedback_total"
    ) == len(rewards)
    assert _value(after, "ranvier_model_feedback_reward_sum") - _value(
        before, "ranvier_model_feedback_reward_sum"
    ) == sum(rewards)
    assert _value(after, "feedback_seen_total") - _value(before, "feedback_seen_total") == len(
        rewards
    )


def test_user_gauges_carry_axon_model_version_labels(client: httpx.Client) -> None:
    assert client.post("/predict", json={"strData": "x"}).status_code == 200
    samples = _samples(client)
    labels = {"axon": "quickstart", "model": "Echo", "version": "v3"}
    assert (("echo_calls", frozenset(labels.items()))) in samples
    assert samples[("last_batch", frozenset(labels.items()))] == 1.0
    assert _value(samples, "ranvier_model_predict_seconds_count") >= 1


@pytest.mark.parametrize(
    ("path", "content", "reason"),
    [
        ("/predict", "{broken", "not valid JSON"),
        ("/predict", '{"strDat": "x"}', "strDat"),
        ("/predict", '{"data": {"tensor": {"shape": [3], "values": [1]}}}', "holds 3 values"),
        ("/predict", "", "empty"),
        ("/send-feedback", '{"reward": "lots"}', "reward"),
    ],
)
def test_bad_requests_get_400_with_a_reason(
    client: httpx.Client, path: str, content: str, reason: str
) -> None:
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    status = response.json()["status"]
    assert status["code"] == 400
    assert reason in status["reason"]


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/predict", {"strData": "fail"}, "ValueError: asked to fail"),
        ("/predict", {"strData": "nan"}, "ValueError"),
        ("/send-feedback", {"request": {"strData": "fail"}, "reward": 1}, "feedback failed"),
    ],
)
def test_a_failing_class_gets_500_and_the_server_stays_up(
    client: httpx.Client, path: str, body: dict[str, Any], reason: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 500
    assert reason in response.json()["status"]["reason"]
    again = client.post("/predict", json={"jsonData": [1]})
    assert again.status_code == 200
    assert again.json()["jsonData"] == [1]


def test_errors_are_counted_by_code(client: httpx.Client) -> None:
    before = _samples(client)
    client.post("/predict", json={"strData": "fail"})
    client.post("/predict", content="{")
    after = _samples(client)

    def by_code(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], code: str) -> float:
        return sum(
            v
            for (n, labels), v in samples.items()
            if n == "ranvier_model_requests_total" and ("code", code) in labels
        )

    assert by_code(after, "500") - by_code(before, "500") == 1
    assert by_code(after, "400") - by_code(before, "400") == 1


def test_openapi_documents_the_messages(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("SeldonMessage", "Feedback", "ErrorResponse", "Meta", "Tensor"):
        assert name in schemas
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/SeldonMessage"}
    assert json.dumps(spec).count("strData") >= 1


@pytest.mark.parametrize(
    ("files", "spec", "message"),
    [
        ({}, "Nope", "no module 'Nope'"),
        ({"Bad.py": "class Other: pass\n"}, "Bad", "no class 'Bad'"),
        ({"NoPredict.py": "class NoPredict: pass\n"}, "NoPredict", "no predict"),
        ({"Broken.py": "raise ImportError('x')\n"}, "Broken", "importing 'Broken' failed"),
        (
            {"Ctor.py": "class Ctor:\n  def __init__(self): 1/0\n  def predict(self, X, n): ...\n"},
            "Ctor",
            "constructing Ctor failed",
        ),
        ({}, "1bad", "invalid model class"),
    ],
)
def test_a_bad_class_is_a_one_line_cli_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str],
    spec: str,
    message: str,
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["serve", spec, "--workdir", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1


ASYNC_MODEL = textwrap.dedent(
    '''
    import asyncio


    class Slowish:
        """An async predict is awaited on the server's loop, not sent to a thread."""

        def __init__(self):
            self.seen = 0

        async def predict(self, X, feature_names):
            await asyncio.sleep(0)
            self.seen += 1
            if X == "fail":
                raise KeyError("missing")
            return {"seen": self.seen, "names": feature_names}
    '''
)


def test_an_async_predict_is_awaited(tmp_path: Path) -> None:
    (tmp_path / "asyncmodel.py").write_text(ASYNC_MODEL)
    with (
        running(serve_argv("asyncmodel:Slowish"), cwd=tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        body = {"data": {"names": ["a"], "ndarray": [[1]]}}
        first = client.post("/predict", json=body).json()
        second = client.post("/predict", json=body).json()
        assert (first["jsonData"], second["jsonData"]) == (
            {"seen": 1, "names": ["a"]},
            {"seen": 2, "names": ["a"]},
        )
        assert second["meta"]["modelName"] == "Slowish"
        failed = client.post("/predict", json={"strData": "fail"})
        assert failed.status_code == 500
        assert "KeyError" in failed.json()["status"]["reason"]
        assert client.get("/health").status_code == 200
