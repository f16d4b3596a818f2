"""Rendering a query: its canonical text (the key values travel under) and PromQL for a real
Prometheus; and what the built-in scrape source cannot evaluate."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeAlias

from sensors.expr.catalog import SCRAPE_AGGREGATIONS, SCRAPE_FUNCTIONS
from sensors.expr.lexer import format_duration
from sensors.expr.nodes import (
    INFIX,
    PREC_UNARY,
    Aggregate,
    And,
    Binary,
    BoolNode,
    Call,
    Compare,
    Condition,
    ExprError,
    Matcher,
    Negate,
    Node,
    Not,
    Number,
    Operand,
    Or,
    Query,
    RangeSelector,
    Selector,
    String,
)

# --------------------------------------------------------------------------------------------
# Rendering: canonical text (the key) and PromQL for a real Prometheus.

_Pins: TypeAlias = tuple[Matcher, ...] | None


def _format_number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _quote(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _render_selector(sel: Selector, pins: _Pins) -> str:
    matchers = sel.matchers
    if pins and sel.templated:
        merged = set(matchers) | set(pins)
        matchers = tuple(sorted(merged, key=lambda m: (m.label, m.op, m.value)))
    if not matchers:
        return sel.name
    inner = ",".join(f"{m.label}{m.op}{_quote(m.value)}" for m in matchers)
    return f"{sel.name}{{{inner}}}"


def _offset(sel: Selector) -> str:
    return "" if sel.offset is None else f" offset {format_duration(sel.offset)}"


def _precedence(node: Node) -> int:
    if isinstance(node, Binary):
        return INFIX[node.op]
    if isinstance(node, Negate):
        return PREC_UNARY
    return PREC_UNARY + 1


def render_node(node: Node, pins: _Pins) -> str:
    match node:
        case Number():
            return _format_number(node.value)
        case String():
            return _quote(node.value)
        case Selector():
            return _render_selector(node, pins) + _offset(node)
        case RangeSelector():
            sel = node.selector
            return f"{_render_selector(sel, pins)}[{format_duration(node.range)}]{_offset(sel)}"
        case Call():
            return f"{node.func}({', '.join(render_node(a, pins) for a in node.args)})"
        case Aggregate():
            clause = ""
            if node.grouping is not None and (node.grouping or node.without):
                word = "without" if node.without else "by"
                clause = f" {word} ({', '.join(node.grouping)})"
            param = f"{render_node(node.param, pins)}, " if node.param is not None else ""
            space = " " if clause else ""
            return f"{node.op}{clause}{space}({param}{render_node(node.arg, pins)})"
        case Binary():
            prec = INFIX[node.op]
            left = render_node(node.left, pins)
            right = render_node(node.right, pins)
            if _precedence(node.left) < prec:
                left = f"({left})"
            if _precedence(node.right) <= prec:
                right = f"({right})"
            return f"{left} {node.op} {right}"
        case Negate():
            inner = render_node(node.operand, pins)
            return f"-({inner})" if isinstance(node.operand, Binary) else f"-{inner}"
    raise AssertionError(node)  # pragma: no cover - boolean nodes are rendered elsewhere


def _render_operand(operand: Operand) -> str:
    return operand.key if isinstance(operand, Query) else _format_number(operand)


def render_bool(node: BoolNode) -> str:
    match node:
        case Compare():
            return f"{_render_operand(node.left)} {node.op} {_render_operand(node.right)}"
        case And():
            parts = [
                f"({render_bool(side)})" if isinstance(side, Or) else render_bool(side)
                for side in (node.left, node.right)
            ]
            return " and ".join(parts)
        case Or():
            right = render_bool(node.right)
            if isinstance(node.right, Or):
                right = f"({right})"
            return f"{render_bool(node.left)} or {right}"
        case Not():
            inner = render_bool(node.operand)
            return f"not {inner}" if isinstance(node.operand, Compare | Not) else f"not ({inner})"
    raise AssertionError(node)  # pragma: no cover - the union is exhaustive


def render_prometheus(query: Query, extra_labels: Mapping[str, str]) -> str:
    """PromQL text for Prometheus: each `{{name}}` becomes `name{...}` pinning `extra_labels`.

    A pinned label is added next to the user's own matchers (Prometheus ANDs them), so a user
    matcher on the same label can narrow the result but never widen it past the pin.
    """
    pins = tuple(Matcher(label, "=", value) for label, value in extra_labels.items())
    return render_node(query.expr, pins)


# --------------------------------------------------------------------------------------------
# What the built-in scrape source cannot evaluate.

_USE_PROMETHEUS = "is not supported by the scrape source; use `source: prometheus`"


def _scrape_problems(node: Node) -> list[ExprError]:
    problems: list[ExprError] = []
    match node:
        case Selector() if node.offset is not None:
            problems.append(ExprError(f"`offset` {_USE_PROMETHEUS}", node.pos + 1))
        case RangeSelector():
            problems += _scrape_problems(node.selector)
        case Call():
            if node.func not in SCRAPE_FUNCTIONS:
                problems.append(
                    ExprError(f"function {node.func!r} {_USE_PROMETHEUS}", node.pos + 1)
                )
            for arg in node.args:
                problems += _scrape_problems(arg)
        case Aggregate():
            if node.op not in SCRAPE_AGGREGATIONS:
                problems.append(
                    ExprError(f"aggregation {node.op!r} {_USE_PROMETHEUS}", node.pos + 1)
                )
            problems += _scrape_problems(node.arg)
        case Binary():
            problems += _scrape_problems(node.left) + _scrape_problems(node.right)
        case Negate():
            problems += _scrape_problems(node.operand)
    return problems


def scrape_problems(query: Query) -> list[ExprError]:
    """Every construct of `query` the built-in scrape source cannot evaluate (empty when fine)."""
    return _scrape_problems(query.expr)


def validate_for_scrape(cond: Condition) -> list[ExprError]:
    """Every construct of `cond` the built-in scrape source cannot evaluate (empty when fine)."""
    return [problem for query in cond.queries for problem in scrape_problems(query)]
