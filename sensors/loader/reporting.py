"""Mistakes as issues at their YAML position: pydantic's errors, `sensors.checks` findings and
condition parse errors, each placed on the node it is about, in words that say what to do.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel
from pydantic_core import ErrorDetails

from sensors.checks import ConditionRef, Finding, Loc, did_you_mean
from sensors.expr import ExprError, parse_condition, validate_for_scrape
from sensors.loader.documents import Document, offset_in
from sensors.spec import TRIGGER_TYPES, UNION_TAGS, Axon


def report_finding(doc: Document, finding: Finding) -> None:
    """Record a cross-reference finding at its node (its key's node when it is about the key)."""
    node = doc.node_for(finding.loc, finding.at)
    offset = 0
    if finding.offset is not None and isinstance(node, yaml.ScalarNode):
        offset = offset_in(node, finding.offset)
    doc.add(node.start_mark if node else None, finding.loc, finding.message, offset)


def report_condition(doc: Document, ref: ConditionRef, *, scrape: bool) -> None:
    """Parse a condition; with the scrape source, also refuse what it cannot evaluate."""
    try:
        condition = parse_condition(ref.text)
    except ExprError as exc:
        problems = [exc]
    else:
        problems = validate_for_scrape(condition) if scrape else []
    for problem in problems:
        offset = max(problem.column - 1, 0)
        report_finding(doc, Finding(ref.loc, problem.message, offset=offset))


def report_validation_error(doc: Document, error: ErrorDetails) -> None:
    """Record one pydantic error at the node it is about, with a message for people."""
    raw = error["loc"]
    loc = _strip_tags(raw)
    kind = error["type"]
    at: Literal["value", "key"] = "value"
    message = error["msg"]
    if kind == "missing":
        message = f"missing required field {loc[-1]!r}"
        loc_for_node = loc[:-1]
    elif kind == "extra_forbidden":
        at = "key"
        allowed = _allowed_keys(raw[:-1])
        key = str(loc[-1])
        hint = did_you_mean(key, allowed)
        message = f"unknown field {key!r}" + (
            hint if hint else f"; allowed here: {', '.join(allowed)}" if allowed else ""
        )
        loc_for_node = loc
    else:
        loc_for_node = loc
        message = _friendly(error, loc)
    node = doc.node_for(loc_for_node, at)
    if kind == "union_tag_invalid":
        node = doc.values.get((*loc, "type"), node)
    doc.add(node.start_mark if node else None, loc, message)


def _strip_tags(loc: tuple[int | str, ...]) -> Loc:
    """Drop the union tags pydantic inserts after a list index ("Alert", "action", ...)."""
    out: list[int | str] = []
    for i, segment in enumerate(loc):
        if i and isinstance(loc[i - 1], int) and segment in UNION_TAGS:
            continue
        out.append(segment)
    return tuple(out)


def _friendly(error: ErrorDetails, loc: Loc) -> str:
    kind = error["type"]
    message = error["msg"]
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        return re.sub(r"^Value error, ", "", message)
    if kind == "union_tag_invalid":
        tag = ctx.get("tag", "")
        if "triggers" in loc:
            hint = did_you_mean(str(tag), TRIGGER_TYPES)
            return f"unknown trigger type {tag!r}{hint}; use one of {', '.join(TRIGGER_TYPES)}"
        return message
    if kind == "union_tag_not_found":
        return f"missing required field 'type' (one of {', '.join(TRIGGER_TYPES)})"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        value = error.get("input")
        hint = did_you_mean(str(value), expected) if isinstance(value, str) else ""
        return f"{value!r} is not allowed{hint}; use one of {', '.join(expected)}"
    if kind in {"model_type", "model_attributes_type"}:
        return f"expected a mapping, found {_kind_of(error.get('input'))}"
    if kind == "list_type":
        return f"expected a list, found {_kind_of(error.get('input'))}"
    if kind == "dict_type":
        return f"expected a mapping, found {_kind_of(error.get('input'))}"
    if kind == "string_type":
        return f"expected a string, found {_kind_of(error.get('input'))}"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        bound = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">"}
        op = bound.get(kind, "<")
        limit = next(iter(ctx.values()), "")
        return f"{error.get('input')!r} is out of range; it must be {op} {limit}"
    if kind == "too_short" and isinstance(error.get("input"), list):
        return f"needs at least {ctx.get('min_length', 1)} item(s)"
    return message


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return type(value).__name__


# Walking the model types along an error location, to list the keys allowed there.


def _members(tp: Any) -> Iterator[Any]:
    """The concrete types behind Annotated / Optional / unions."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        yield from _members(typing.get_args(tp)[0])
    elif origin is Union or isinstance(tp, types.UnionType):
        for arg in typing.get_args(tp):
            yield from _members(arg)
    elif tp is not type(None):
        yield tp


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class at a pydantic error location (with its union tags), if one fits."""
    candidates: list[Any] = [Axon]
    for i, segment in enumerate(loc):
        members = [m for c in candidates for m in _members(c)]
        if i and isinstance(loc[i - 1], int) and segment in UNION_TAGS:
            candidates = [m for m in members if _has_tag(m, str(segment))]
            continue
        nxt: list[Any] = []
        for tp in members:
            origin = typing.get_origin(tp)
            if isinstance(segment, int) and origin in (list, tuple):
                nxt.append(typing.get_args(tp)[0])
            elif isinstance(segment, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
                for name, field in tp.model_fields.items():
                    if segment in (name, field.alias):
                        nxt.append(field.annotation)
        candidates = nxt
    models = [
        m
        for c in candidates
        for m in _members(c)
        if isinstance(m, type) and issubclass(m, BaseModel)
    ]
    return models[0] if len(models) == 1 else None


def _has_tag(tp: Any, tag: str) -> bool:
    if tag == "group":
        return typing.get_origin(tp) in (list, tuple)
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return False
    if tag == "action":
        return True
    field = tp.model_fields.get("type")
    return field is not None and tag in typing.get_args(field.annotation)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]
