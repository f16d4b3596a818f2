"""The building blocks every Axon model uses: durations, scalar strings, the strict base."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
)

from events.errors import RanvierError


class DurationError(RanvierError, ValueError):
    """A duration string that is not a number of seconds nor like `30s`, `5m`, `1h30m`."""


_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
DURATION_PATTERN = r"^(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h|d))+)$"


def parse_duration(text: str) -> float:
    """Seconds in a duration like "30s", "5m", "1h30m", "250ms", "2d" or a plain "90"."""
    value = text.strip()
    if _NUMBER.fullmatch(value):
        return float(value)
    if not _DURATION_FULL.fullmatch(value):
        raise DurationError(
            f"invalid duration {text!r}",
            hint="use seconds or a string like 30s, 5m, 1h30m, 250ms, 2d",
        )
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))


def format_duration(seconds: float) -> str:
    """The shortest duration string for `seconds`: 90 -> "1m30s", 0.25 -> "250ms", 0 -> "0s"."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def _to_seconds(value: object) -> object:
    if isinstance(value, bool):
        raise DurationError("a duration cannot be true or false", hint="use e.g. 30s")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise DurationError(f"invalid duration {value!r}", hint="use a non-negative number")
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    return value  # let pydantic report the type error


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": 'Seconds, or a string like "30s", "5m", "1h30m", "250ms", "2d".',
        }
    ),
]
"""Seconds as a float; YAML may say `30`, `"30s"`, `"1h30m"`; it serialises back to "30s"."""


def _above_zero(value: float, info: ValidationInfo) -> float:
    if value <= 0:
        raise ValueError(f"{info.field_name} must be greater than 0")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_above_zero)]
"""A duration above zero: an interval or a window of 0 would never advance."""


def _scalar_to_str(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


ScalarStr = Annotated[
    str,
    BeforeValidator(_scalar_to_str),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]
"""A string that YAML may also have written as a number or a boolean (`storage: 1`, `"1Gi"`)."""


class SpecModel(BaseModel):
    """Strict, immutable base: unknown keys are errors, YAML names and Python names both work."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def exactly_one(model: BaseModel, fields: dict[str, str], what: str) -> None:
    """Raise when not exactly one of `fields` (python name -> YAML name) is set."""
    present = [yaml for name, yaml in fields.items() if getattr(model, name) is not None]
    names = ", ".join(fields.values())
    if not present:
        raise ValueError(f"{what} needs exactly one of: {names}")
    if len(present) > 1:
        raise ValueError(f"{what} has {' and '.join(present)}; give exactly one of: {names}")
