"""Seldon-style prediction messages, as Myelin's model servers speak them.

Myelin's users call their models with `curl -d '{"data": {"ndarray": [[1, 2]]}}' URL/predict`,
which sends JSON labelled as a form, or with a form field `json=...`; answers come back in the
request's own form (`ndarray`, `tensor`, `strData`, `jsonData`) plus `meta`. Keeping the
parsing and conversion here, as pure functions over bytes and plain data, lets the model server
and the router share one reading of the protocol and lets tests cover it without a server.

Tensors are nested lists: numpy is optional, and a user's `predict` may return a numpy array
(anything with `.tolist()`), which is converted on the way out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from events.errors import RanvierError

Form = Literal["ndarray", "tensor", "strData", "jsonData"]

MAX_BODY_BYTES = 64 * 1024 * 1024

_Model = TypeVar("_Model", bound=BaseModel)


class ProtocolError(RanvierError, ValueError):
    """A request that is not a valid prediction or feedback message (answered with a 400)."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Tensor(_Message):
    """A dense tensor: its shape and its values in row-major order."""

    shape: list[int] = Field(description="Dimensions, e.g. [2, 3].")
    values: list[float] = Field(description="Row-major values; as many as the shape's product.")

    @model_validator(mode="after")
    def _sizes_agree(self) -> Tensor:
        if any(dim < 0 for dim in self.shape):
            raise ValueError("tensor.shape has a negative dimension")
        if math.prod(self.shape) != len(self.values):
            raise ValueError(
                f"tensor.shape {self.shape} holds {math.prod(self.shape)} values "
                f"but tensor.values has {len(self.values)}"
            )
        return self


class DefaultData(_Message):
    """Numeric data: an `ndarray` (nested lists) or a `tensor`, with optional column names."""

    names: list[str] | None = Field(None, description="Feature (column) names.")
    ndarray: list[Any] | None = Field(None, description="Nested lists, one row per instance.")
    tensor: Tensor | None = Field(None, description="Shape and flat values.")

    @model_validator(mode="after")
    def _one_payload(self) -> DefaultData:
        if (self.ndarray is None) == (self.tensor is None):
            raise ValueError("data needs exactly one of 'ndarray' or 'tensor'")
        return self


class Metric(_Message):
    """A metric a model reports with its answer (Seldon's custom metrics)."""

    key: str = Field(description="Metric name.")
    type: Literal["COUNTER", "GAUGE", "TIMER"] = Field("GAUGE", description="Metric kind.")
    value: float = Field(description="Value (increment for counters, seconds for timers).")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra labels.")


class Meta(_Message):
    """What the server adds to an answer: who answered and what it reported."""

    puid: str | None = Field(None, description="Prediction id, if the caller set one.")
    tags: dict[str, Any] = Field(default_factory=dict, description="The model's tags().")
    metrics: list[Metric] = Field(default_factory=list, description="The model's metrics().")
    model_name: str | None = Field(None, alias="modelName", description="Model that answered.")
    model_version: str | None = Field(
        None, alias="modelVersion", description="Version that answered."
    )
    request_path: dict[str, str] = Field(
        default_factory=dict,
        alias="requestPath",
        description="Model name -> the version that answered it; feedback follows it back.",
    )


class SeldonMessage(_Message):
    """A prediction request or answer: exactly one of `data`, `strData`, `jsonData`."""

    data: DefaultData | None = Field(None, description="Numeric data.")
    str_data: str | None = Field(None, alias="strData", description="A string, e.g. a prompt.")
    json_data: Any = Field(None, alias="jsonData", description="Any JSON value.")
    meta: Meta | None = Field(None, description="Set on answers; may be sent back with feedback.")

    @model_validator(mode="after")
    def _one_payload(self) -> SeldonMessage:
        present = [
            name
            for name, value in (
                ("data", self.data),
                ("strData", self.str_data),
                ("jsonData", self.json_data),
            )
            if value is not None
        ]
        if len(present) != 1:
            raise ValueError(
                "a message needs exactly one of 'data', 'strData' or 'jsonData'"
                + (f" (got {', '.join(present)})" if present else "")
            )
        return self

    def form(self) -> Form:
        """Which of the four payload forms this message uses."""
        if self.data is not None:
            return "tensor" if self.data.tensor is not None else "ndarray"
        return "strData" if self.str_data is not None else "jsonData"


class Feedback(_Message):
    """Feedback on an earlier prediction: what was asked, what came back, how good it was."""

    request: SeldonMessage | None = Field(None, description="The prediction request.")
    response: SeldonMessage | None = Field(
        None,
        description=(
            "The answer, with its meta.requestPath: the router sends the feedback to the versions "
            "it names. Without it, the router sends it to every version serving /predict now."
        ),
    )
    reward: float | None = Field(None, description="How good the answer was, e.g. 0..1.")
    truth: SeldonMessage | None = Field(None, description="The right answer, if known.")


class ErrorStatus(_Message):
    """Why a request failed."""

    code: int = Field(description="HTTP status code.")
    reason: str = Field(description="What went wrong, and what to do.")
    status: Literal["FAILURE"] = "FAILURE"


class ErrorResponse(_Message):
    """The body of every 4xx/5xx answer."""

    status: ErrorStatus


def error_body(code: int, reason: str) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"status": {"code": code, "reason": reason, "status": "FAILURE"}}


# ---------------------------------------------------------------------------------------------
# Reading requests


def _json_text(body: bytes, content_type: str) -> str:
    """The JSON text in a body: the body itself, or its `json=` form field."""
    if len(body) > MAX_BODY_BYTES:
        raise ProtocolError(f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("request body is not UTF-8; send JSON") from exc
    stripped = text.lstrip()
    if not stripped:
        raise ProtocolError('request body is empty; send JSON like {"data": {"ndarray": [[1]]}}')
    # `curl -d '{...}'` labels JSON as a form, so the body's first character decides, not the
    # header; a form is recognised by its `json=` field.
    if stripped[0] in "{[" or ("form-urlencoded" not in content_type and "json=" not in text):
        return text
    fields = parse_qs(text, keep_blank_values=True)
    if "json" not in fields:
        raise ProtocolError("form body has no 'json' field; send json=<message> or a JSON body")
    return fields["json"][0]


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number {text[:20]} is out of range; send finite numbers")
    return value


def _no_constants(name: str) -> Any:
    raise ProtocolError(f"{name} is not JSON; send finite numbers")


def parse_json_body(body: bytes, content_type: str = "application/json") -> Any:
    """The JSON value in a request body (raw JSON, JSON labelled as a form, or `json=`)."""
    text = _json_text(body, content_type)
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc.msg} at char {exc.pos}") from exc


def _validation_reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def parse_object(
    body: bytes, content_type: str, model: type[_Model], what: str, example: str
) -> _Model:
    """A JSON object of `model` from an HTTP body; `ProtocolError` says what is wrong.

    `what` names what the caller sent ("a prediction request"); `example` shows one's shape.
    """
    value = parse_json_body(body, content_type)
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is a JSON object like {example}")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        name = what.removeprefix("a ").removeprefix("an ")
        raise ProtocolError(f"invalid {name}: {_validation_reason(exc)}") from exc


def parse_message(body: bytes, content_type: str = "application/json") -> SeldonMessage:
    """A prediction request from an HTTP body; `ProtocolError` says what is wrong."""
    example = '{"data": {"ndarray": []}}'
    return parse_object(body, content_type, SeldonMessage, "a prediction request", example)


def parse_feedback(body: bytes, content_type: str = "application/json") -> Feedback:
    """A feedback message from an HTTP body; `ProtocolError` says what is wrong."""
    example = '{"request": ..., "reward": 1}'
    return parse_object(body, content_type, Feedback, "feedback", example)


def reshape(values: list[float], shape: list[int]) -> Any:
    """Row-major flat values as nested lists of `shape` (a 0-d shape gives the scalar)."""
    if not shape:
        return values[0]
    if len(shape) == 1:
        return list(values)
    step = math.prod(shape[1:])
    return [reshape(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def features(message: SeldonMessage) -> tuple[Any, list[str]]:
    """What `predict(X, feature_names)` receives for a message: X and the names."""
    if message.data is not None:
        names = list(message.data.names or [])
        if message.data.tensor is not None:
            return reshape(message.data.tensor.values, message.data.tensor.shape), names
        return message.data.ndarray, names
    if message.str_data is not None:
        return message.str_data, []
    return message.json_data, []


# ---------------------------------------------------------------------------------------------
# Writing answers


def to_plain(value: Any) -> Any:
    """A JSON-ready copy of a model's output (numpy arrays and scalars via .tolist()/.item())."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return to_plain(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return to_plain(item())
    raise TypeError(f"cannot send a {type(value).__name__} as JSON")


def shape_of(value: Any) -> list[int] | None:
    """The shape of a rectangular nested list of numbers, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return []
    if not isinstance(value, list) or not value:
        return [0] if value == [] else None
    shapes = [shape_of(v) for v in value]
    first = shapes[0]
    if first is None or any(s != first for s in shapes):
        return None
    return [len(value), *first]


def flatten(value: Any) -> list[float]:
    """Row-major values of a rectangular nested list."""
    if isinstance(value, list):
        return [x for v in value for x in flatten(v)]
    return [float(value)]


def answer(
    output: Any,
    form: Form,
    *,
    names: list[str] | None = None,
    meta: Meta | None = None,
) -> dict[str, Any]:
    """The JSON answer for a model's output, in the request's form where the output fits it.

    ndarray -> ndarray; tensor -> tensor when the output is a rectangular array of numbers,
    else ndarray; strData -> strData when the output is a string, else jsonData; jsonData ->
    jsonData. A non-list output to a numeric request is sent as jsonData.
    """
    plain = to_plain(output)
    body: dict[str, Any]
    if form in ("ndarray", "tensor") and isinstance(plain, list):
        shape = shape_of(plain) if form == "tensor" else None
        if shape is not None:
            payload: dict[str, Any] = {"tensor": {"shape": shape, "values": flatten(plain)}}
        else:
            payload = {"ndarray": plain}
        body = {"data": {"names": list(names or []), **payload}}
    elif isinstance(plain, str) and form != "jsonData":
        body = {"strData": plain}
    else:
        body = {"jsonData": plain}
    if meta is not None:
        body["meta"] = meta.model_dump(by_alias=True, exclude_none=True)
    return body


def merge_request_path(body: dict[str, Any], entries: Mapping[str, str]) -> dict[str, Any]:
    """`body` with `entries` added to `meta.requestPath` (the router records who answered)."""
    meta = body.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    path = meta.get("requestPath")
    path = dict(path) if isinstance(path, dict) else {}
    path.update(entries)
    meta["requestPath"] = path
    return {**body, "meta": meta}
