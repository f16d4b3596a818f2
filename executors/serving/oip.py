"""The Open Inference Protocol (KServe / Triton "v2") REST messages, as plain data.

Clients built for KServe or Triton speak this protocol: `POST /v2/models/{name}/infer` with
`{"inputs": [{"name", "shape", "datatype", "data"}]}` and tensors laid out row-major. This
module reads such a request into what a user's `predict(X, feature_names)` receives and writes
its output back as v2 output tensors, with no HTTP in sight (the server and the router do that).

What `predict` receives: one input tensor becomes X as nested lists of its shape (numbers,
booleans, or strings for BYTES), and `feature_names` is `[input name]`; several input tensors
become a dict from input name to nested lists. What it returns: an array-like becomes one
output tensor (datatype from a numpy dtype when it has one, else from the values: BOOL, INT64,
FP64 or BYTES), a string becomes a BYTES tensor of shape [1], and a dict of name -> array-like
becomes one output per entry. Only the JSON tensor encoding is supported (not the binary
extension), so BYTES elements are UTF-8 strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from executors.serving.protocol import ProtocolError, parse_object, to_plain

DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
)
_NUMPY_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
DEFAULT_OUTPUT = "output-0"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Message):
    """One input tensor of an inference request."""

    name: str = Field(description="Input tensor name.")
    shape: list[int] = Field(description="Dimensions; their product is the element count.")
    datatype: str = Field(description="Element type: BOOL, INT*, UINT*, FP16/32/64 or BYTES.")
    parameters: dict[str, Any] | None = Field(None, description="Optional parameters.")
    data: Any = Field(description="Elements, row-major, flat or nested.")


class RequestOutput(_Message):
    """An output the client asks for by name."""

    name: str = Field(description="Output tensor name.")
    parameters: dict[str, Any] | None = Field(None, description="Optional parameters.")


class InferenceRequest(_Message):
    """`POST /v2/models/{name}/infer` body."""

    id: str | None = Field(None, description="Request id, echoed in the answer.")
    parameters: dict[str, Any] | None = Field(None, description="Optional parameters.")
    inputs: list[RequestInput] = Field(min_length=1, description="Input tensors.")
    outputs: list[RequestOutput] | None = Field(None, description="Requested outputs.")


def error_body(reason: str) -> dict[str, str]:
    """The protocol's error answer."""
    return {"error": reason}


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flat(item)]
    return [data]


def _element(value: Any, datatype: str, where: str) -> Any:
    if datatype == "BYTES":
        if isinstance(value, str):
            return value
        raise ProtocolError(f"{where}: a BYTES element must be a string, got {value!r}")
    if datatype == "BOOL":
        if isinstance(value, bool):
            return value
        raise ProtocolError(f"{where}: a BOOL element must be true or false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{where}: a {datatype} element must be a number, got {value!r}")
    if datatype.startswith(("INT", "UINT")):
        if isinstance(value, float) and not value.is_integer():
            raise ProtocolError(f"{where}: a {datatype} element must be whole, got {value!r}")
        if datatype.startswith("UINT") and value < 0:
            raise ProtocolError(f"{where}: a {datatype} element cannot be negative: {value!r}")
        return int(value)
    return float(value)


def _reshape(values: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return list(values)
    step = math.prod(shape[1:])
    return [_reshape(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def tensor_value(tensor: RequestInput) -> Any:
    """An input tensor's elements as nested lists of its shape; `ProtocolError` when invalid."""
    where = f"input {tensor.name!r}"
    if tensor.datatype not in DATATYPES:
        raise ProtocolError(
            f"{where}: unknown datatype {tensor.datatype!r}; "
            f"use one of {', '.join(sorted(DATATYPES))}"
        )
    if any(d < 0 for d in tensor.shape):
        raise ProtocolError(f"{where}: shape {tensor.shape} has a negative dimension")
    flat = _flat(tensor.data)
    expected = math.prod(tensor.shape)
    if len(flat) != expected:
        raise ProtocolError(
            f"{where}: shape {tensor.shape} holds {expected} elements but data has {len(flat)}"
        )
    values = [_element(v, tensor.datatype, where) for v in flat]
    return _reshape(values, tensor.shape)


def parse_request(body: bytes, content_type: str = "application/json") -> InferenceRequest:
    """An inference request from an HTTP body; `ProtocolError` says what is wrong."""
    example = '{"inputs": [...]}'
    return parse_object(body, content_type, InferenceRequest, "an inference request", example)


def features(request: InferenceRequest) -> tuple[Any, list[str]]:
    """What `predict(X, feature_names)` receives for an inference request."""
    names = [t.name for t in request.inputs]
    if len(names) != len(set(names)):
        raise ProtocolError("two input tensors have the same name; name each input once")
    if len(request.inputs) == 1:
        return tensor_value(request.inputs[0]), names
    return {t.name: tensor_value(t) for t in request.inputs}, names


def _datatype_of(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, str) for v in values):
        return "BYTES"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP64"
    raise TypeError("the output mixes strings, booleans and numbers; a tensor holds one type")


def _strings(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list | tuple):
        return [_strings(v) for v in value]
    return value


def output_tensor(name: str, output: Any) -> dict[str, Any]:
    """One v2 output tensor for a model's output (`TypeError` when it is not a tensor)."""
    dtype = getattr(getattr(output, "dtype", None), "name", None)
    plain = to_plain(_strings(output.tolist() if hasattr(output, "tolist") else output))
    if not isinstance(plain, list):
        plain = [plain]
    shape = _shape(plain)
    if shape is None:
        raise TypeError("the output is not a rectangular array; return equal-length rows")
    flat = _flat(plain)
    datatype = _NUMPY_DATATYPES.get(dtype or "") or (_datatype_of(flat) if flat else "FP64")
    return {"name": name, "shape": shape, "datatype": datatype, "data": flat}


def _shape(value: Any) -> list[int] | None:
    """The shape of a rectangular nested list (any leaves), or None when it is ragged."""
    if not isinstance(value, list):
        return []
    shapes = [_shape(v) for v in value]
    if not shapes:
        return [0]
    first = shapes[0]
    if first is None or any(s != first for s in shapes):
        return None
    return [len(value), *first]


def answer(
    output: Any,
    request: InferenceRequest,
    *,
    model_name: str,
    model_version: str,
) -> dict[str, Any]:
    """The inference answer for a model's output (`TypeError` when it is no tensor)."""
    requested = [o.name for o in request.outputs or []]
    if isinstance(output, Mapping):
        outputs = [output_tensor(str(k), v) for k, v in output.items()]
        if requested:
            outputs = [o for o in outputs if o["name"] in requested]
    else:
        name = requested[0] if len(requested) == 1 else DEFAULT_OUTPUT
        outputs = [output_tensor(name, output)]
    body: dict[str, Any] = {"model_name": model_name, "outputs": outputs}
    if model_version:
        body["model_version"] = model_version
    if request.id is not None:
        body["id"] = request.id
    return body


def model_metadata(name: str, version: str) -> dict[str, Any]:
    """`GET /v2/models/{name}`: the class declares no tensors, so inputs and outputs are open."""
    return {
        "name": name,
        "versions": [version] if version else [],
        "platform": "ranvier",
        "inputs": [],
        "outputs": [],
    }
