"""Safe condition language: `{{metric}}` templates, a PromQL subset, comparisons, and/or/not.

Conditions come from users' YAML and run inside the engine for every metric event, so they
are parsed once (cached) into an immutable AST of frozen dataclasses and evaluated by a cheap
walk over it: no eval(), no Python expressions, no regex compiled per call, no I/O.

A condition compares *queries* (any operand that is not a plain number) with thresholds. The
watcher evaluates each query (itself for the `scrape` source, see `sensors.promql`, or through
Prometheus, see `render_prometheus`) and publishes its value keyed by `Query.key`, the query's
canonical text; the engine then calls `evaluate` with those values. A missing value is unknown,
never false: the boolean logic is three-valued (Kleene), so nothing fires on missing data.

The parser accepts the PromQL a real Prometheus would evaluate for us (known functions and
aggregations, `offset`); `validate_for_scrape` reports what the built-in `scrape` source cannot
evaluate. Constructs outside that (subqueries, `@`, `bool`, vector matching, `%`, `^`, `unless`)
are rejected by the parser with an `ExprError` naming the construct and its column.

Grammar (loosest binding first; `and` binds tighter than `or`, comparisons do not chain):

    condition  := condition "or" condition | condition "and" condition | "not" condition
                | value CMP value | "(" condition ")"              CMP: < <= > >= == !=
    value      := value ("+" | "-" | "*" | "/") value | "-" value | "(" value ")" | NUMBER
                | selector | FUNCTION "(" args ")" | AGG [grouping] "(" [param ","] value ")"
                  [grouping]
    selector   := (NAME | "{{" NAME "}}") ["{" label ("="|"!="|"=~"|"!~") STRING, ... "}"]
                  ["[" DURATION "]"] ["offset" DURATION]     (a range only as a function arg)
    grouping   := ("by" | "without") "(" label, ... ")"
"""

from __future__ import annotations

from sensors.expr.catalog import AGGREGATIONS, FUNCTIONS, SCRAPE_AGGREGATIONS, SCRAPE_FUNCTIONS
from sensors.expr.lexer import format_duration
from sensors.expr.nodes import (
    Aggregate,
    And,
    Binary,
    BoolNode,
    Call,
    Compare,
    Condition,
    Expr,
    ExprError,
    Matcher,
    Negate,
    Not,
    Number,
    Or,
    Query,
    RangeSelector,
    Selector,
    String,
    bare_template,
    evaluate,
)
from sensors.expr.parser import parse_condition
from sensors.expr.render import render_prometheus, scrape_problems, validate_for_scrape

__all__ = [
    "AGGREGATIONS",
    "FUNCTIONS",
    "SCRAPE_AGGREGATIONS",
    "SCRAPE_FUNCTIONS",
    "Aggregate",
    "And",
    "Binary",
    "BoolNode",
    "Call",
    "Compare",
    "Condition",
    "Expr",
    "ExprError",
    "Matcher",
    "Negate",
    "Not",
    "Number",
    "Or",
    "Query",
    "RangeSelector",
    "Selector",
    "String",
    "bare_template",
    "evaluate",
    "format_duration",
    "parse_condition",
    "render_prometheus",
    "scrape_problems",
    "validate_for_scrape",
]
