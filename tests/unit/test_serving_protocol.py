"""Seldon-style messages: every request form parses, answers keep the request's form."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from executors.serving import protocol
from executors.serving.protocol import Meta, ProtocolError


@pytest.mark.parametrize(
    ("body", "content_type", "form", "x", "names"),
    [
        (b'{"data": {"ndarray": [[1, 2]]}}', "application/json", "ndarray", [[1, 2]], []),
        (
            b'{"data": {"names": ["a", "b"], "ndarray": [[1, 2]]}}',
            "application/json",
            "ndarray",
            [[1, 2]],
            ["a", "b"],
        ),
        (
            b'{"data": {"tensor": {"shape": [2, 2], "values": [1, 2, 3, 4]}}}',
            "application/json",
            "tensor",
            [[1.0, 2.0], [3.0, 4.0]],
            [],
        ),
        (b'{"strData": "To be"}', "application/json", "strData", "To be", []),
        (b'{"jsonData": {"k": [1]}}', "application/json", "jsonData", {"k": [1]}, []),
        # curl -d labels JSON as a form: the body decides.
        (
            b'{"data": {"ndarray": [1]}}',
            "application/x-www-form-urlencoded",
            "ndarray",
            [1],
            [],
        ),
        (
            ("json=" + quote('{"strData": "hi & bye"}')).encode(),
            "application/x-www-form-urlencoded",
            "strData",
            "hi & bye",
            [],
        ),
    ],
)
def test_every_request_form_parses(
    body: bytes, content_type: str, form: str, x: Any, names: list[str]
) -> None:
    message = protocol.parse_message(body, content_type)
    assert message.form() == form
    assert protocol.features(message) == (x, names)


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"", "application/json", "empty"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "JSON object"),
        (b"{}", "application/json", "exactly one of"),
        (b'{"strData": "a", "jsonData": 1}', "application/json", "got strData, jsonData"),
        (b'{"data": {}}', "application/json", "exactly one of 'ndarray' or 'tensor'"),
        (
            b'{"data": {"tensor": {"shape": [2, 2], "values": [1]}}}',
            "application/json",
            "holds 4 values",
        ),
        (b'{"strDat": "x"}', "application/json", "strDat"),
        (b"a=1", "application/x-www-form-urlencoded", "no 'json' field"),
        (b"\xff\xfe", "application/json", "UTF-8"),
        (b'{"jsonData": 1e999}', "application/json", "out of range"),
        (b'{"jsonData": NaN}', "application/json", "NaN is not JSON"),
    ],
)
def test_bad_requests_say_what_is_wrong(body: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=None) as info:
        protocol.parse_message(body, content_type)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_feedback_parses_request_response_reward_truth() -> None:
    body = json.dumps(
        {
            "request": {"data": {"ndarray": [[1]]}},
            "response": {"data": {"ndarray": [[2]]}, "meta": {"requestPath": {"m": "v1"}}},
            "reward": 0.5,
            "truth": {"data": {"ndarray": [[3]]}},
        }
    ).encode()
    feedback = protocol.parse_feedback(body)
    assert feedback.reward == 0.5
    assert feedback.response is not None
    assert feedback.response.meta is not None
    assert feedback.response.meta.request_path == {"m": "v1"}
    with pytest.raises(ProtocolError, match="reward"):
        protocol.parse_feedback(b'{"reward": "lots"}')


class _FakeArray:
    """Stands in for a numpy array: anything with tolist() is sent as a list."""

    def tolist(self) -> list[list[int]]:
        return [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("output", "form", "expected"),
    [
        ([[1, 2]], "ndarray", {"data": {"names": [], "ndarray": [[1, 2]]}}),
        (
            [[1, 2], [3, 4]],
            "tensor",
            {"data": {"names": [], "tensor": {"shape": [2, 2], "values": [1.0, 2.0, 3.0, 4.0]}}},
        ),
        (_FakeArray(), "ndarray", {"data": {"names": [], "ndarray": [[1, 2], [3, 4]]}}),
        # ragged output cannot be a tensor: it is sent as an ndarray
        ([[1], [2, 3]], "tensor", {"data": {"names": [], "ndarray": [[1], [2, 3]]}}),
        ("text", "strData", {"strData": "text"}),
        ({"a": 1}, "strData", {"jsonData": {"a": 1}}),
        ("text", "jsonData", {"jsonData": "text"}),
        (3.5, "ndarray", {"jsonData": 3.5}),
        (("a", "b"), "jsonData", {"jsonData": ["a", "b"]}),
    ],
)
def test_answers_keep_the_request_form(output: Any, form: protocol.Form, expected: Any) -> None:
    assert protocol.answer(output, form) == expected


def test_answer_carries_meta_by_alias() -> None:
    meta = Meta(model_name="m", model_version="2", request_path={"m": "2"}, tags={"t": 1})
    body = protocol.answer([1], "ndarray", meta=meta)
    assert body["meta"] == {
        "tags": {"t": 1},
        "metrics": [],
        "modelName": "m",
        "modelVersion": "2",
        "requestPath": {"m": "2"},
    }
    assert protocol.SeldonMessage.model_validate(body).meta == meta


@pytest.mark.parametrize(
    ("values", "shape", "nested"),
    [
        ([1.0], [], 1.0),
        ([1.0, 2.0], [2], [1.0, 2.0]),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        ([1.0, 2.0, 3.0, 4.0], [2, 1, 2], [[[1.0, 2.0]], [[3.0, 4.0]]]),
        ([], [0], []),
    ],
)
def test_reshape_and_shape_of_are_inverse(
    values: list[float], shape: list[int], nested: Any
) -> None:
    assert protocol.reshape(values, shape) == nested
    assert protocol.shape_of(nested) == shape
    if shape:
        assert protocol.flatten(nested) == values


def test_merge_request_path_keeps_what_is_there() -> None:
    body: dict[str, Any] = {"jsonData": 1, "meta": {"tags": {}, "requestPath": {"a": "1"}}}
    merged = protocol.merge_request_path(body, {"b": "2"})
    assert merged["meta"]["requestPath"] == {"a": "1", "b": "2"}
    assert body["meta"]["requestPath"] == {"a": "1"}
    assert protocol.merge_request_path({"jsonData": 1}, {"m": "v"})["meta"] == {
        "requestPath": {"m": "v"}
    }


def test_non_json_output_is_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        protocol.answer(object(), "jsonData")
