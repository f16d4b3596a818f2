"""The Open Inference Protocol v2 messages and the serving limits, as plain functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from executors.serving import oip
from executors.serving.limits import LimitError, Limits, limits_from
from executors.serving.protocol import ProtocolError


def t(shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    """An input tensor named x."""
    return {"name": "x", "shape": shape, "datatype": datatype, "data": data}


def _request(*inputs: dict[str, Any], **extra: Any) -> oip.InferenceRequest:
    return oip.InferenceRequest.model_validate({"inputs": list(inputs), **extra})


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (t([2, 2], "FP32", [1, 2, 3, 4]), [[1.0, 2.0], [3.0, 4.0]]),
        (t([2, 2], "INT64", [[1, 2], [3, 4]]), [[1, 2], [3, 4]]),
        (t([3], "BOOL", [True, False, True]), [True, False, True]),
        (t([1, 2], "BYTES", ["a", "b"]), [["a", "b"]]),
        (t([2, 1, 2], "UINT8", [1, 2, 3, 4]), [[[1, 2]], [[3, 4]]]),
        (t([0], "FP64", []), []),
    ],
)
def test_input_tensors_become_nested_lists_of_their_shape(
    tensor: dict[str, Any], expected: Any
) -> None:
    x, names = oip.features(_request(tensor))
    assert (x, names) == (expected, ["x"])


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        (t([3], "FP32", [1, 2]), "holds 3 elements but data has 2"),
        (t([1], "STRING", ["a"]), "unknown datatype 'STRING'"),
        (t([1], "BOOL", [1]), "must be true or false"),
        (t([1], "FP32", ["1"]), "must be a number"),
        (t([1], "UINT8", [-1]), "cannot be negative"),
        (t([-1], "FP32", []), "negative dimension"),
    ],
)
def test_bad_tensors_say_what_is_wrong(tensor: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        oip.features(_request(tensor))


def test_several_inputs_are_a_dict_by_name() -> None:
    a = {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.5]}
    b = {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["t"]}
    assert oip.features(_request(a, b)) == ({"a": [1.5], "b": ["t"]}, ["a", "b"])
    with pytest.raises(ProtocolError, match="same name"):
        oip.features(_request(a, a))


def test_a_request_that_is_not_an_inference_request_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="inputs"):
        oip.parse_request(b'{"data": {"ndarray": [1]}}')
    with pytest.raises(ProtocolError):
        oip.parse_request(b"[1, 2]")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (np.array([[1, 2]], dtype=np.int32), ([1, 2], "INT32", [1, 2])),
        (np.array([0.5], dtype=np.float32), ([1], "FP32", [0.5])),
        ([[1, 2], [3, 4]], ([2, 2], "INT64", [1, 2, 3, 4])),
        ([1, 2.5], ([2], "FP64", [1, 2.5])),
        ([True, False], ([2], "BOOL", [True, False])),
        ("a sonnet", ([1], "BYTES", ["a sonnet"])),
        ([b"raw", b"bytes"], ([2], "BYTES", ["raw", "bytes"])),
        (np.array(["x", "y"]), ([2], "BYTES", ["x", "y"])),
        (3.0, ([1], "FP64", [3.0])),
    ],
)
def test_outputs_become_v2_tensors(output: Any, expected: tuple[list[int], str, list[Any]]) -> None:
    tensor = oip.output_tensor("out", output)
    assert (tensor["shape"], tensor["datatype"], tensor["data"]) == expected


@pytest.mark.parametrize("output", [[[1, 2], [3]], [1, "a"], {"not": "a list"}])
def test_outputs_that_are_no_tensor_are_refused(output: Any) -> None:
    with pytest.raises(TypeError):
        oip.output_tensor("out", output)


def test_the_answer_names_model_version_id_and_requested_output() -> None:
    request = _request(
        t([1], "FP64", [1.0]),
        id="7",
        outputs=[{"name": "y"}],
    )
    body = oip.answer([2.0], request, model_name="m", model_version="3")
    assert body == {
        "model_name": "m",
        "model_version": "3",
        "id": "7",
        "outputs": [{"name": "y", "shape": [1], "datatype": "FP64", "data": [2.0]}],
    }
    several = oip.answer({"y": [1], "z": [2]}, request, model_name="m", model_version="")
    assert [o["name"] for o in several["outputs"]] == ["y"]
    assert "model_version" not in several


def test_limits_come_from_flags_then_the_environment_then_defaults() -> None:
    env = {"RANVIER_MAX_BODY_BYTES": "100", "RANVIER_MAX_IN_FLIGHT": "3"}
    assert limits_from(env) == Limits(max_body_bytes=100, max_in_flight=3)
    assert limits_from(env, max_in_flight=5, timeout_s=2) == Limits(100, 5, 2.0)
    assert limits_from({}) == Limits()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"RANVIER_MAX_IN_FLIGHT": "many"}, "RANVIER_MAX_IN_FLIGHT='many' is not a whole number"),
        ({"RANVIER_PREDICT_TIMEOUT": "soon"}, "RANVIER_PREDICT_TIMEOUT='soon' is not a number"),
        ({"RANVIER_MAX_BODY_BYTES": "0"}, "maximum body size 0 is not positive"),
    ],
)
def test_bad_limits_say_which_setting(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(LimitError, match=fragment):
        limits_from(env)
