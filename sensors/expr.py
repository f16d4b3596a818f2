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

import difflib
import functools
import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from math import isnan
from typing import NamedTuple, TypeAlias

from events.errors import RanvierError

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

MAX_CONDITION_LENGTH = 8192
MAX_NESTING = 64
MAX_OPERATORS = 256


class ExprError(RanvierError, ValueError):
    """A condition that cannot be parsed or evaluated; `column` is 1-based in the condition."""

    def __init__(self, message: str, column: int = 1) -> None:
        super().__init__(message)
        self.column = column

    def __str__(self) -> str:
        return f"column {self.column}: {self.message}"

    def __reduce__(self) -> tuple[type[ExprError], tuple[str, int]]:
        return (type(self), (self.message, self.column))


# --------------------------------------------------------------------------------------------
# The AST. `pos`/`end` are 0-based offsets into the condition text; they take no part in
# equality, so equal queries written differently compare (and hash) equal.


def _span() -> int:
    return field(default=0, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher of a selector: `label="v"`, `!=`, `=~` or `!~` (regex fully anchored)."""

    label: str
    op: str
    value: str
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, value: str) -> bool:
        """Whether a series' label value (empty string when absent) satisfies this matcher."""
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self.pattern is not None  # set by the parser for every regex matcher
        found = self.pattern.fullmatch(value) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True, slots=True)
class Number:
    """A numeric literal (constant sub-expressions are folded into one)."""

    value: float
    pos: int = _span()
    end: int = _span()


@dataclass(frozen=True, slots=True)
class String:
    """A string literal; only allowed as a function or aggregation argument."""

    value: str
    pos: int = _span()
    end: int = _span()


@dataclass(frozen=True, slots=True)
class Selector:
    """An instant vector selector `name{matchers}`; `templated` when written `{{name}}`."""

    name: str
    matchers: tuple[Matcher, ...] = ()
    templated: bool = False
    offset: float | None = None
    pos: int = _span()
    end: int = _span()


@dataclass(frozen=True, slots=True)
class RangeSelector:
    """A range vector selector `name{matchers}[range]`; only a range function's argument."""

    selector: Selector
    range: float
    pos: int = _span()
    end: int = _span()


@dataclass(frozen=True, slots=True)
class Call:
    """A function call such as `rate(x[5m])`."""

    func: str
    args: tuple[Arg, ...]
    pos: int = _span()
    end: int = _span()


@dataclass(frozen=True, slots=True)
class Aggregate:
    """An aggregation such as `sum by (job) (x)`; `grouping` is None without a by/without clause."""

    op: str
    arg: Expr
    param: Expr | String | None = None
    grouping: tuple[str, ...] | None = None
    without: bool = False
    pos: int = _span()
    end: int = _span()


@dataclass(frozen=True, slots=True)
class Binary:
    """Scalar arithmetic `left op right`, op in + - * /."""

    op: str
    left: Expr
    right: Expr
    pos: int = _span()
    end: int = _span()


@dataclass(frozen=True, slots=True)
class Negate:
    """Unary minus of a non-constant expression."""

    operand: Expr
    pos: int = _span()
    end: int = _span()


Expr: TypeAlias = Number | Selector | Call | Aggregate | Binary | Negate
Arg: TypeAlias = Expr | RangeSelector | String


@dataclass(frozen=True, slots=True)
class Query:
    """An operand of a comparison that is not a plain number; equal keys mean equal queries."""

    key: str
    text: str = field(compare=False)
    templated: bool = field(compare=False)
    expr: Expr = field(compare=False, repr=False)
    metric_names: frozenset[str] = field(compare=False, repr=False)
    column: int = field(default=1, compare=False, repr=False)


Operand: TypeAlias = Query | float


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True, slots=True)
class Compare:
    """`left op right`; a side that is a Query reads its value from the values mapping."""

    op: str
    left: Operand
    right: Operand
    pos: int = _span()
    end: int = _span()
    # Precomputed once so that `evaluate`, run for every metric event, is a few lookups.
    _fn: Callable[[float, float], bool] = field(init=False, compare=False, repr=False)
    _left_key: str | None = field(init=False, compare=False, repr=False)
    _left_const: float = field(init=False, compare=False, repr=False)
    _right_key: str | None = field(init=False, compare=False, repr=False)
    _right_const: float = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fn", _COMPARE[self.op])
        for side, operand in (("_left", self.left), ("_right", self.right)):
            if isinstance(operand, Query):
                object.__setattr__(self, side + "_key", operand.key)
                object.__setattr__(self, side + "_const", math.nan)
            else:
                object.__setattr__(self, side + "_key", None)
                object.__setattr__(self, side + "_const", operand)

    def evaluate(self, values: Mapping[str, float]) -> bool | None:
        """True/False, or None when either side is unknown (missing or NaN)."""
        key = self._left_key
        left = self._left_const if key is None else values.get(key)
        if left is None or isnan(left):
            return None
        key = self._right_key
        right = self._right_const if key is None else values.get(key)
        if right is None or isnan(right):
            return None
        return self._fn(left, right)


@dataclass(frozen=True, slots=True)
class And:
    """Kleene conjunction: False wins over unknown."""

    left: BoolNode
    right: BoolNode
    pos: int = _span()
    end: int = _span()

    def evaluate(self, values: Mapping[str, float]) -> bool | None:
        """False if either side is False, True if both are True, else None."""
        left = self.left.evaluate(values)
        if left is False:
            return False
        right = self.right.evaluate(values)
        if right is False:
            return False
        return True if left and right else None


@dataclass(frozen=True, slots=True)
class Or:
    """Kleene disjunction: True wins over unknown."""

    left: BoolNode
    right: BoolNode
    pos: int = _span()
    end: int = _span()

    def evaluate(self, values: Mapping[str, float]) -> bool | None:
        """True if either side is True, False if both are False, else None."""
        left = self.left.evaluate(values)
        if left is True:
            return True
        right = self.right.evaluate(values)
        if right is True:
            return True
        return False if left is False and right is False else None


@dataclass(frozen=True, slots=True)
class Not:
    """Kleene negation: not unknown is unknown."""

    operand: BoolNode
    pos: int = _span()
    end: int = _span()

    def evaluate(self, values: Mapping[str, float]) -> bool | None:
        """The negated value, None stays None."""
        value = self.operand.evaluate(values)
        return None if value is None else not value


BoolNode: TypeAlias = Compare | And | Or | Not
Node: TypeAlias = Expr | RangeSelector | String | BoolNode


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: its boolean tree and the distinct queries it reads."""

    text: str
    root: BoolNode = field(compare=False)
    queries: tuple[Query, ...] = field(compare=False)
    key: str = field(compare=False, default="")

    def evaluate(self, values: Mapping[str, float]) -> bool | None:
        """Same as `evaluate(self, values)`."""
        return self.root.evaluate(values)


def evaluate(cond: Condition, values: Mapping[str, float]) -> bool | None:
    """Three-valued truth of `cond` given query values by `Query.key` (missing or NaN: unknown)."""
    return cond.root.evaluate(values)


# --------------------------------------------------------------------------------------------
# What PromQL functions and aggregations the parser knows, and which the scrape source runs.
# A signature lists argument kinds: v value, r range selector, s string; `required` of them
# must be given; `more` is the kind of any further arguments (variadic), "" for none.


class _Signature(NamedTuple):
    kinds: str
    required: int
    more: str = ""


def _sig(kinds: str, required: int | None = None, more: str = "") -> _Signature:
    return _Signature(kinds, len(kinds) if required is None else required, more)


FUNCTIONS: dict[str, _Signature] = {
    **{
        name: _sig("r")
        for name in [
            "avg_over_time",
            "sum_over_time",
            "min_over_time",
            "max_over_time",
            "count_over_time",
            "last_over_time",
            "stddev_over_time",
            "stdvar_over_time",
            "present_over_time",
            "absent_over_time",
            "mad_over_time",
            "rate",
            "irate",
            "increase",
            "delta",
            "idelta",
            "deriv",
            "changes",
            "resets",
        ]
    },
    **{
        name: _sig("v")
        for name in [
            "abs",
            "absent",
            "ceil",
            "floor",
            "exp",
            "ln",
            "log2",
            "log10",
            "sqrt",
            "sgn",
            "sort",
            "sort_desc",
            "scalar",
            "vector",
            "timestamp",
            "acos",
            "acosh",
            "asin",
            "asinh",
            "atan",
            "atanh",
            "cos",
            "cosh",
            "sin",
            "sinh",
            "tan",
            "tanh",
            "deg",
            "rad",
            "histogram_avg",
            "histogram_count",
            "histogram_sum",
            "histogram_stddev",
            "histogram_stdvar",
        ]
    },
    **{
        name: _sig("v", 0)
        for name in [
            "day_of_month",
            "day_of_week",
            "day_of_year",
            "days_in_month",
            "hour",
            "minute",
            "month",
            "year",
        ]
    },
    "time": _sig(""),
    "pi": _sig(""),
    "quantile_over_time": _sig("vr"),
    "predict_linear": _sig("rv"),
    "holt_winters": _sig("rvv"),
    "double_exponential_smoothing": _sig("rvv"),
    "clamp": _sig("vvv"),
    "clamp_max": _sig("vv"),
    "clamp_min": _sig("vv"),
    "round": _sig("vv", 1),
    "histogram_quantile": _sig("vv"),
    "histogram_fraction": _sig("vvv"),
    "label_replace": _sig("vssss"),
    "label_join": _sig("vsss", 3, "s"),
    "sort_by_label": _sig("v", 1, "s"),
    "sort_by_label_desc": _sig("v", 1, "s"),
}

# aggregation -> kind of its leading parameter ("" for none)
AGGREGATIONS: dict[str, str] = {
    "avg": "",
    "sum": "",
    "min": "",
    "max": "",
    "count": "",
    "group": "",
    "stddev": "",
    "stdvar": "",
    "topk": "v",
    "bottomk": "v",
    "quantile": "v",
    "limitk": "v",
    "limit_ratio": "v",
    "count_values": "s",
}

SCRAPE_FUNCTIONS = frozenset(
    [
        "avg_over_time",
        "sum_over_time",
        "min_over_time",
        "max_over_time",
        "count_over_time",
        "last_over_time",
        "rate",
        "increase",
    ]
)
SCRAPE_AGGREGATIONS = frozenset({"avg", "sum", "min", "max", "count"})

_KEYWORDS = frozenset(
    [
        "and",
        "or",
        "not",
        "unless",
        "by",
        "without",
        "offset",
        "bool",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ]
)

# --------------------------------------------------------------------------------------------
# Lexer


class _Tok(NamedTuple):
    kind: str  # num dur ident tmpl str op eof
    text: str
    pos: int
    end: int
    value: float | str = ""


_LEX = re.compile(
    r"""
     (?P<ws>[ \t\r\n]+)
    |(?P<dur>(?:[0-9]+(?:ms|[smhdwy]))+)(?![A-Za-z0-9_.])
    |(?P<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<op><=|>=|==|!=|=~|!~|&&|\|\||[-+*/%^<>=!(){}\[\],@:&|;])
    """,
    re.VERBOSE,
)
_TEMPLATE = re.compile(r"\{\{[ \t]*([A-Za-z_:][A-Za-z0-9_:]*)[ \t]*\}\}")
_DURATION_PART = re.compile(r"([0-9]+)(ms|[smhdwy])")
_UNITS: dict[str, float] = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _lex_string(text: str, start: int) -> _Tok:
    quote = text[start]
    if quote == "`":
        close = text.find("`", start + 1)
        if close < 0:
            raise ExprError("unterminated string; close it with `", start + 1)
        return _Tok("str", text[start : close + 1], start, close + 1, text[start + 1 : close])
    out: list[str] = []
    i = start + 1
    while True:
        if i >= len(text) or text[i] == "\n":
            raise ExprError(f"unterminated string; close it with {quote}", start + 1)
        ch = text[i]
        if ch == quote:
            return _Tok("str", text[start : i + 1], start, i + 1, "".join(out))
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = text[i + 1 : i + 2]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc in _HEX_ESCAPES:
            width = _HEX_ESCAPES[esc]
            digits = text[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ExprError(f"escape \\{esc} needs {width} hex digits", i + 1)
            code = int(digits, 16)
            if esc == "x" and code >= 0x80:
                raise ExprError(f"escape \\x{digits} is a raw byte; write \\u00{digits}", i + 1)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ExprError(f"escape \\{esc}{digits} is not a Unicode character", i + 1)
            out.append(chr(code))
            i += 2 + width
        else:
            shown = esc or "at the end"
            raise ExprError(f"unknown escape \\{shown} in string; use \\\\ for a backslash", i + 1)


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    while i < len(text):
        if text.startswith("{{", i):
            m = _TEMPLATE.match(text, i)
            if m is None:
                close = text.find("}}", i)
                shown = text[i : close + 2] if 0 <= close < i + 80 else text[i : i + 20]
                raise ExprError(
                    f"malformed template {shown!r}; a template holds one metric name, "
                    "e.g. {{accuracy}}",
                    i + 1,
                )
            toks.append(_Tok("tmpl", m.group(0), i, m.end(), m.group(1)))
            i = m.end()
            continue
        if text[i] in "\"'`":
            tok = _lex_string(text, i)
            toks.append(tok)
            i = tok.end
            continue
        m = _LEX.match(text, i)
        if m is None:
            raise ExprError(f"unexpected character {text[i]!r}", i + 1)
        kind = m.lastgroup
        assert kind is not None  # every alternative is a named group
        if kind == "num":
            toks.append(_Tok("num", m.group(), i, m.end(), float(m.group())))
        elif kind == "dur":
            toks.append(_Tok("dur", m.group(), i, m.end(), _parse_duration(m.group(), i)))
        elif kind == "ident":
            word = m.group()
            if word.lower() in ("inf", "nan"):
                toks.append(_Tok("num", word, i, m.end(), float(word)))
            else:
                toks.append(_Tok("ident", word, i, m.end(), word))
        elif kind == "op":
            toks.append(_Tok("op", m.group(), i, m.end(), m.group()))
        i = m.end()
    toks.append(_Tok("eof", "", len(text), len(text)))
    return toks


def _parse_duration(text: str, pos: int) -> float:
    total = 0.0
    last = math.inf
    for m in _DURATION_PART.finditer(text):
        if len(m.group(1)) > 12:
            raise ExprError(f"duration {text!r} is too long", pos + 1)
        unit = _UNITS[m.group(2)]
        if unit >= last:
            raise ExprError(
                f"duration {text!r} repeats or misorders its units; write e.g. 1h30m", pos + 1
            )
        last = unit
        total += int(m.group(1)) * unit
    return total


def format_duration(seconds: float) -> str:
    """Canonical PromQL duration text (largest units first), e.g. 5400 -> `1h30m`."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _UNITS.items():
        step = round(size * 1000)
        if ms >= step:
            parts.append(f"{ms // step}{unit}")
            ms %= step
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Parser: one precedence-climbing pass over every level (or < and < not < comparison < + - <
# * / < unary), checking kinds as it combines so errors point at the offending operand.

_PREC_OR, _PREC_AND, _PREC_NOT, _PREC_CMP, _PREC_ADD, _PREC_MUL, _PREC_UNARY = range(1, 8)
_INFIX: dict[str, int] = {
    "or": _PREC_OR,
    "and": _PREC_AND,
    **dict.fromkeys(_COMPARE, _PREC_CMP),
    "+": _PREC_ADD,
    "-": _PREC_ADD,
    "*": _PREC_MUL,
    "/": _PREC_MUL,
}
_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_UNSUPPORTED_INFIX: dict[str, str] = {
    "%": "operator '%' is not supported; use + - * /",
    "^": "operator '^' is not supported; use + - * /",
    "unless": "`unless` is not supported; use `and not`",
    "&&": "use `and` instead of `&&`",
    "&": "use `and` instead of `&`",
    "||": "use `or` instead of `||`",
    "|": "use `or` instead of `|`",
    "=": "use `==` to compare for equality",
    "=~": '`=~` only matches labels inside braces, e.g. x{code=~"5.."}',
    "!~": '`!~` only matches labels inside braces, e.g. x{code!~"5.."}',
    "@": "the `@` modifier is not supported",
    "offset": "`offset` must follow a selector, e.g. x offset 5m",
    "{": 'label matchers `{...}` must follow a metric name, e.g. x{job="a"}',
    "[": "a range `[...]` must follow a selector, e.g. avg_over_time(x[5m]); "
    "subqueries are not supported",
}


def _kind(node: Node) -> str:
    if isinstance(node, Compare | And | Or | Not):
        return "condition"
    if isinstance(node, RangeSelector):
        return "range"
    if isinstance(node, String):
        return "string"
    return "value"


class _Parser:
    """Recursive precedence climbing over a token list; raises ExprError on the first problem."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.operators = 0

    # -- token helpers

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def advance(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def is_op(self, tok: _Tok, *ops: str) -> bool:
        return tok.kind == "op" and tok.text in ops

    def is_word(self, tok: _Tok, *words: str) -> bool:
        return tok.kind == "ident" and tok.text in words

    def fail(self, message: str, pos: int) -> ExprError:
        return ExprError(message, pos + 1)

    def shown(self, tok: _Tok) -> str:
        return "the end of the condition" if tok.kind == "eof" else repr(tok.text)

    def expect(self, op: str, what: str) -> _Tok:
        tok = self.advance()
        if not self.is_op(tok, op):
            raise self.fail(f"expected {op!r} {what}, found {self.shown(tok)}", tok.pos)
        return tok

    def snippet(self, node: Node) -> str:
        text = self.text[node.pos : node.end].strip()
        return text if len(text) <= 60 else text[:57] + "..."

    # -- expressions

    def parse(self) -> BoolNode:
        if not self.text.strip():
            raise self.fail("the condition is empty; write e.g. {{accuracy}} < 0.9", 0)
        node = self.expression(0)
        tok = self.peek()
        if tok.kind != "eof":
            if self.is_op(tok, ")"):
                raise self.fail("unbalanced ')': no '(' to close", tok.pos)
            raise self.fail(
                f"unexpected {self.shown(tok)}; expected an operator such as and, or, <, +",
                tok.pos,
            )
        if isinstance(node, Number | Selector | Call | Aggregate | Binary | Negate):
            shown = self.snippet(node)
            raise self.fail(
                f"{shown!r} is a value, not a condition; compare it, e.g. {shown} < 0.9", node.pos
            )
        return self.need_condition(node, "a condition")

    def range_misplaced(self, node: RangeSelector) -> ExprError:
        return self.fail(
            f"range selector {self.snippet(node)!r} needs a range function around it, "
            f"e.g. avg_over_time({self.snippet(node)})",
            node.pos,
        )

    def expression(self, min_prec: int) -> Node:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail("the condition is nested too deeply", self.peek().pos)
        left = self.prefix()
        while True:
            tok = self.peek()
            name = tok.text if tok.kind in ("op", "ident") else ""
            prec = _INFIX.get(name)
            if prec is None:
                if name in _UNSUPPORTED_INFIX:
                    raise self.fail(_UNSUPPORTED_INFIX[name], tok.pos)
                break
            if prec < min_prec:
                break
            self.advance()
            left = self.infix(left, tok, prec)
        self.depth -= 1
        return left

    def infix(self, left: Node, tok: _Tok, prec: int) -> Node:
        op = tok.text
        self.operators += 1
        if self.operators > MAX_OPERATORS:
            raise self.fail(f"the condition has more than {MAX_OPERATORS} operators", tok.pos)
        if op in ("and", "or"):
            left_cond = self.need_condition(left, f"`{op}`")
            right_cond = self.need_condition(self.expression(prec + 1), f"`{op}`")
            cls = And if op == "and" else Or
            return cls(left_cond, right_cond, pos=left_cond.pos, end=right_cond.end)
        if op in _COMPARE and isinstance(left, Compare):
            raise self.fail("comparisons cannot be chained; join them with `and`", tok.pos)
        left_value = self.need_value(left, f"{op!r}")
        nxt = self.peek()
        if op in _COMPARE and self.is_word(nxt, "bool"):
            raise self.fail(
                "the `bool` modifier is not supported; conditions compare values already",
                nxt.pos,
            )
        if self.is_word(nxt, "on", "ignoring", "group_left", "group_right"):
            raise self.fail(
                f"vector matching ({nxt.text}) is not supported; aggregate both sides instead, "
                "e.g. sum(a) / sum(b)",
                nxt.pos,
            )
        right_value = self.need_value(self.expression(prec + 1), f"{op!r}")
        if op == "/" and isinstance(right_value, Number) and right_value.value == 0:
            raise self.fail("division by zero", tok.pos)
        pos, end = left_value.pos, right_value.end
        if op in _COMPARE:
            return Compare(
                op, self.operand(left_value), self.operand(right_value), pos=pos, end=end
            )
        if isinstance(left_value, Number) and isinstance(right_value, Number):
            return Number(_ARITH[op](left_value.value, right_value.value), pos=pos, end=end)
        return Binary(op, left_value, right_value, pos=pos, end=end)

    def need_value(self, node: Node, where: str) -> Expr:
        if isinstance(node, Number | Selector | Call | Aggregate | Binary | Negate):
            return node
        if isinstance(node, RangeSelector):
            raise self.range_misplaced(node)
        if isinstance(node, String):
            raise self.fail(
                "strings cannot be compared or computed with; conditions compare numbers",
                node.pos,
            )
        raise self.fail(
            f"{where} needs a value on each side, but {self.snippet(node)!r} is a condition",
            node.pos,
        )

    def need_condition(self, node: Node, where: str) -> BoolNode:
        if isinstance(node, Compare | And | Or | Not):
            return node
        if isinstance(node, RangeSelector):
            raise self.range_misplaced(node)
        shown = self.snippet(node)
        raise self.fail(
            f"{where} joins conditions, but {shown!r} is a value; compare it, e.g. {shown} < 0.9",
            node.pos,
        )

    def operand(self, node: Expr) -> Operand:
        if isinstance(node, Number):
            return node.value
        selectors = list(_selectors(node))
        return Query(
            key=_render(node, None),
            text=self.text[node.pos : node.end].strip(),
            templated=any(s.templated for s in selectors),
            expr=node,
            metric_names=frozenset(s.name for s in selectors),
            column=node.pos + 1,
        )

    def prefix(self) -> Node:
        tok = self.advance()
        if tok.kind == "num":
            assert isinstance(tok.value, float)
            return Number(tok.value, pos=tok.pos, end=tok.end)
        if tok.kind == "tmpl":
            assert isinstance(tok.value, str)
            return self.selector(tok.value, tok, templated=True)
        if tok.kind == "ident":
            return self.word(tok)
        if self.is_op(tok, "(", ")", "-", "+"):
            return self.prefix_op(tok)
        if tok.kind == "dur":
            raise self.fail(
                f"a duration like {tok.text} belongs in a range selector, e.g. x[{tok.text}], "
                "or after offset",
                tok.pos,
            )
        if tok.kind == "str":
            raise self.fail(
                "strings cannot be compared or computed with; conditions compare numbers",
                tok.pos,
            )
        if tok.kind == "eof":
            raise self.fail("the condition ends too early; expected a value", tok.pos)
        if self.is_op(tok, "{"):
            raise self.fail(
                "a selector needs a metric name before '{', e.g. requests_total{code=\"500\"}",
                tok.pos,
            )
        if self.is_op(tok, "!"):
            raise self.fail("use `not` instead of '!'", tok.pos)
        raise self.fail(f"expected a value, found {self.shown(tok)}", tok.pos)

    def prefix_op(self, tok: _Tok) -> Node:
        if tok.text == ")":
            raise self.fail("unexpected ')'; expected a value", tok.pos)
        if tok.text == "(":
            inner = self.expression(0)
            close = self.advance()
            if not self.is_op(close, ")"):
                raise self.fail(
                    f"expected ')' to close '(' at column {tok.pos + 1}, found {self.shown(close)}",
                    close.pos,
                )
            return replace(inner, pos=tok.pos, end=close.end)
        operand = self.need_value(self.expression(_PREC_UNARY), f"unary {tok.text!r}")
        if tok.text == "+":
            return replace(operand, pos=tok.pos)
        if isinstance(operand, Number):
            return Number(-operand.value, pos=tok.pos, end=operand.end)
        return Negate(operand, pos=tok.pos, end=operand.end)

    def word(self, tok: _Tok) -> Node:
        name = tok.text
        nxt = self.peek()
        if name == "not":
            operand = self.need_condition(self.expression(_PREC_NOT), "`not`")
            return Not(operand, pos=tok.pos, end=operand.end)
        if name in _KEYWORDS:
            raise self.fail(f"expected a value before `{name}`", tok.pos)
        if name in AGGREGATIONS and (self.is_op(nxt, "(") or self.is_word(nxt, "by", "without")):
            return self.aggregate(tok)
        if self.is_op(nxt, "("):
            return self.call(tok)
        return self.selector(name, tok, templated=False)

    def selector(self, name: str, tok: _Tok, *, templated: bool) -> Node:
        matchers: tuple[Matcher, ...] = ()
        end = tok.end
        if self.is_op(self.peek(), "{"):
            matchers, end = self.matchers()
        sel = Selector(name, matchers, templated, pos=tok.pos, end=end)
        node: Selector | RangeSelector = sel
        if self.is_op(self.peek(), "["):
            node = self.range(sel)
        if self.is_word(self.peek(), "offset"):
            self.advance()
            dur = self.advance()
            if dur.kind != "dur":
                raise self.fail(
                    f"expected a duration after offset, e.g. offset 5m, found {self.shown(dur)}",
                    dur.pos,
                )
            assert isinstance(dur.value, float)
            sel = replace(sel, offset=dur.value)
            node = (
                replace(node, selector=sel, end=dur.end)
                if isinstance(node, RangeSelector)
                else replace(sel, end=dur.end)
            )
        if self.is_op(self.peek(), "@"):
            raise self.fail("the `@` modifier is not supported", self.peek().pos)
        return node

    def range(self, sel: Selector) -> RangeSelector:
        self.advance()  # [
        dur = self.advance()
        if dur.kind != "dur":
            if dur.kind == "num":
                raise self.fail(
                    f"a range needs a unit, e.g. [{dur.text}s] or [{dur.text}m]", dur.pos
                )
            raise self.fail(f"expected a duration such as 5m, found {self.shown(dur)}", dur.pos)
        assert isinstance(dur.value, float)
        if dur.value <= 0:
            raise self.fail("a range must be longer than zero", dur.pos)
        close = self.advance()
        if close.text.startswith(":"):
            raise self.fail(
                "subqueries ([range:step]) are not supported; use a range selector", close.pos
            )
        if not self.is_op(close, "]"):
            raise self.fail(f"expected ']' after the range, found {self.shown(close)}", close.pos)
        return RangeSelector(sel, dur.value, pos=sel.pos, end=close.end)

    def matchers(self) -> tuple[tuple[Matcher, ...], int]:
        self.advance()  # {
        found: set[Matcher] = set()
        while not self.is_op(self.peek(), "}"):
            found.add(self.matcher())
            tok = self.peek()
            if self.is_op(tok, ","):
                self.advance()
            elif not self.is_op(tok, "}"):
                raise self.fail(
                    f"expected ',' or '}}' between label matchers, found {self.shown(tok)}",
                    tok.pos,
                )
        close = self.advance()
        return tuple(sorted(found, key=lambda m: (m.label, m.op, m.value))), close.end

    def matcher(self) -> Matcher:
        label = self.advance()
        if label.kind != "ident":
            raise self.fail(f"expected a label name, found {self.shown(label)}", label.pos)
        if ":" in label.text:
            raise self.fail(f"label name {label.text!r} cannot contain ':'", label.pos)
        if label.text == "__name__":
            raise self.fail(
                "matching __name__ is not supported; write the metric name before '{'", label.pos
            )
        op = self.advance()
        if self.is_op(op, "=="):
            raise self.fail("use '=' inside braces, e.g. job=\"a\"", op.pos)
        if not self.is_op(op, "=", "!=", "=~", "!~"):
            raise self.fail(
                f"expected =, !=, =~ or !~ after label {label.text!r}, found {self.shown(op)}",
                op.pos,
            )
        value = self.advance()
        if value.kind != "str":
            raise self.fail(
                f'label values are quoted strings, e.g. {label.text}{op.text}"...", '
                f"found {self.shown(value)}",
                value.pos,
            )
        assert isinstance(value.value, str)
        pattern = None
        if op.text in ("=~", "!~"):
            try:
                with warnings.catch_warnings():
                    # Python warns on constructs it reads differently from Prometheus (RE2),
                    # such as POSIX classes [[:alpha:]]: refuse them rather than mis-match.
                    warnings.simplefilter("error")
                    pattern = re.compile(value.value)
            except (re.error, RecursionError, OverflowError, ValueError, Warning) as exc:
                raise self.fail(f"invalid regular expression: {exc}", value.pos) from None
        return Matcher(label.text, op.text, value.value, pattern)

    def grouping(self) -> tuple[tuple[str, ...], bool]:
        word = self.advance()  # by / without
        self.expect("(", f"after `{word.text}`")
        labels: set[str] = set()
        while not self.is_op(self.peek(), ")"):
            label = self.advance()
            if label.kind != "ident" or ":" in label.text:
                raise self.fail(f"expected a label name, found {self.shown(label)}", label.pos)
            labels.add(label.text)
            if self.is_op(self.peek(), ","):
                self.advance()
            elif not self.is_op(self.peek(), ")"):
                tok = self.peek()
                raise self.fail(f"expected ',' or ')' in `{word.text}`", tok.pos)
        self.advance()
        return tuple(sorted(labels)), word.text == "without"

    def aggregate(self, tok: _Tok) -> Aggregate:
        grouping: tuple[str, ...] | None = None
        without = False
        if self.is_word(self.peek(), "by", "without"):
            grouping, without = self.grouping()
        open_ = self.expect("(", f"after `{tok.text}`")
        param: Expr | String | None = None
        param_kind = AGGREGATIONS[tok.text]
        if param_kind:
            param_arg = self.argument(param_kind, f"{tok.text}'s parameter")
            assert not isinstance(param_arg, RangeSelector)
            param = param_arg
            self.expect(",", f"after {tok.text}'s parameter, then the value to aggregate")
        arg = self.argument("v", f"{tok.text}'s argument")
        assert not isinstance(arg, RangeSelector | String)
        close = self.advance()
        if self.is_op(close, ","):
            raise self.fail(f"`{tok.text}` takes a single argument", close.pos)
        if not self.is_op(close, ")"):
            raise self.fail(
                f"expected ')' to close '(' at column {open_.pos + 1}, found {self.shown(close)}",
                close.pos,
            )
        end = close.end
        if self.is_word(self.peek(), "by", "without"):
            if grouping is not None:
                raise self.fail("by/without given twice", self.peek().pos)
            grouping, without = self.grouping()
            end = self.toks[self.i - 1].end
        if grouping == () and not without:
            grouping = None  # `by ()` aggregates over everything, like no clause at all
        return Aggregate(tok.text, arg, param, grouping, without, pos=tok.pos, end=end)

    def argument(self, kind: str, what: str) -> Arg:
        tok = self.peek()
        if tok.kind == "str" and self.peek(1).kind == "op" and self.peek(1).text in ",)":
            self.advance()
            assert isinstance(tok.value, str)
            node: Node = String(tok.value, pos=tok.pos, end=tok.end)
        else:
            node = self.expression(0)
        got = _kind(node)
        if got == {"v": "value", "r": "range", "s": "string"}[kind]:
            assert not isinstance(node, Compare | And | Or | Not)
            return node
        wanted = {"v": "a value", "r": "a range selector such as x[5m]", "s": "a quoted string"}
        if got == "range" and kind == "v":
            assert isinstance(node, RangeSelector)
            raise self.range_misplaced(node)
        shown = {"value": "a value", "range": "a range selector", "string": "a string"}
        raise self.fail(
            f"{what} must be {wanted[kind]}, not {shown.get(got, 'a condition')}", node.pos
        )

    def call(self, tok: _Tok) -> Call:
        name = tok.text
        sig = FUNCTIONS.get(name)
        if sig is None:
            guess = difflib.get_close_matches(name, [*FUNCTIONS, *AGGREGATIONS], n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            raise self.fail(f"unknown function {name!r}{hint}", tok.pos)
        open_ = self.advance()
        args: list[Arg] = []
        while not self.is_op(self.peek(), ")"):
            n = len(args)
            kind = sig.kinds[n] if n < len(sig.kinds) else sig.more
            if not kind:
                raise self.fail(
                    f"{name}() takes at most {len(sig.kinds)} argument(s)", self.peek().pos
                )
            args.append(self.argument(kind, f"argument {n + 1} of {name}()"))
            sep = self.peek()
            if self.is_op(sep, ","):
                self.advance()
            elif not self.is_op(sep, ")"):
                raise self.fail(
                    f"expected ',' or ')' to close '(' at column {open_.pos + 1}, "
                    f"found {self.shown(sep)}",
                    sep.pos,
                )
        close = self.advance()
        if len(args) < sig.required:
            example = "(x[5m])" if sig.kinds[:1] == "r" else "(...)"
            raise self.fail(
                f"{name}() needs {sig.required} argument(s), e.g. {name}{example}", close.pos
            )
        return Call(name, tuple(args), pos=tok.pos, end=close.end)


def _selectors(node: Node) -> list[Selector]:
    """Every selector in `node`, in order of appearance."""
    match node:
        case Selector():
            return [node]
        case RangeSelector():
            return [node.selector]
        case Call():
            return [s for arg in node.args for s in _selectors(arg)]
        case Aggregate():
            return (_selectors(node.param) if node.param else []) + _selectors(node.arg)
        case Binary():
            return _selectors(node.left) + _selectors(node.right)
        case Negate():
            return _selectors(node.operand)
    return []


def _bool_queries(node: BoolNode) -> list[Query]:
    match node:
        case Compare():
            return [side for side in (node.left, node.right) if isinstance(side, Query)]
        case And() | Or():
            return _bool_queries(node.left) + _bool_queries(node.right)
        case Not():
            return _bool_queries(node.operand)
    raise AssertionError(node)  # pragma: no cover - the union is exhaustive


@functools.lru_cache(maxsize=4096)
def parse_condition(text: str) -> Condition:
    """Parse an Alert or Metric condition; raise ExprError (with a 1-based column) if invalid."""
    if not isinstance(text, str):
        raise ExprError(f"a condition must be a string, not {type(text).__name__}")
    if len(text) > MAX_CONDITION_LENGTH:
        raise ExprError(f"the condition is longer than {MAX_CONDITION_LENGTH} characters")
    root = _Parser(text).parse()
    queries: dict[str, Query] = {}
    for query in _bool_queries(root):
        queries.setdefault(query.key, query)
    if not queries:
        raise ExprError(
            "the condition reads no metric; compare a metric, e.g. {{accuracy}} < 0.9", 1
        )
    return Condition(text, root, tuple(queries.values()), _render_bool(root))


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
        return _INFIX[node.op]
    if isinstance(node, Negate):
        return _PREC_UNARY
    return _PREC_UNARY + 1


def _render(node: Node, pins: _Pins) -> str:
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
            return f"{node.func}({', '.join(_render(a, pins) for a in node.args)})"
        case Aggregate():
            clause = ""
            if node.grouping is not None and (node.grouping or node.without):
                word = "without" if node.without else "by"
                clause = f" {word} ({', '.join(node.grouping)})"
            param = f"{_render(node.param, pins)}, " if node.param is not None else ""
            space = " " if clause else ""
            return f"{node.op}{clause}{space}({param}{_render(node.arg, pins)})"
        case Binary():
            prec = _INFIX[node.op]
            left = _render(node.left, pins)
            right = _render(node.right, pins)
            if _precedence(node.left) < prec:
                left = f"({left})"
            if _precedence(node.right) <= prec:
                right = f"({right})"
            return f"{left} {node.op} {right}"
        case Negate():
            inner = _render(node.operand, pins)
            return f"-({inner})" if isinstance(node.operand, Binary) else f"-{inner}"
    raise AssertionError(node)  # pragma: no cover - boolean nodes are rendered elsewhere


def _render_operand(operand: Operand) -> str:
    return operand.key if isinstance(operand, Query) else _format_number(operand)


def _render_bool(node: BoolNode) -> str:
    match node:
        case Compare():
            return f"{_render_operand(node.left)} {node.op} {_render_operand(node.right)}"
        case And():
            parts = [
                f"({_render_bool(side)})" if isinstance(side, Or) else _render_bool(side)
                for side in (node.left, node.right)
            ]
            return " and ".join(parts)
        case Or():
            right = _render_bool(node.right)
            if isinstance(node.right, Or):
                right = f"({right})"
            return f"{_render_bool(node.left)} or {right}"
        case Not():
            inner = _render_bool(node.operand)
            return f"not {inner}" if isinstance(node.operand, Compare | Not) else f"not ({inner})"
    raise AssertionError(node)  # pragma: no cover - the union is exhaustive


def render_prometheus(query: Query, extra_labels: Mapping[str, str]) -> str:
    """PromQL text for Prometheus: each `{{name}}` becomes `name{...}` pinning `extra_labels`.

    A pinned label is added next to the user's own matchers (Prometheus ANDs them), so a user
    matcher on the same label can narrow the result but never widen it past the pin.
    """
    pins = tuple(Matcher(label, "=", value) for label, value in extra_labels.items())
    return _render(query.expr, pins)


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


def bare_template(query: Query) -> str | None:
    """The metric name of a bare `{{name}}` query (no matchers, no offset), else None.

    A Metric condition with a `task` reads the metrics that task reported by name, and only
    this form names one metric without asking for series, ranges or aggregation.
    """
    expr = query.expr
    if isinstance(expr, Selector) and expr.templated and not expr.matchers and expr.offset is None:
        return expr.name
    return None
