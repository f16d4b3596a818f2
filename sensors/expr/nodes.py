"""The condition language's AST (frozen dataclasses, positions for errors) and its three-valued
evaluation."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from math import isnan
from typing import TypeAlias

from events.errors import RanvierError

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


COMPARE: dict[str, Callable[[float, float], bool]] = {
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
        object.__setattr__(self, "_fn", COMPARE[self.op])
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


# Operator precedence, loosest first (the parser climbs it; rendering parenthesises by it).
PREC_OR, PREC_AND, PREC_NOT, PREC_CMP, PREC_ADD, PREC_MUL, PREC_UNARY = range(1, 8)
INFIX: dict[str, int] = {
    "or": PREC_OR,
    "and": PREC_AND,
    **dict.fromkeys(COMPARE, PREC_CMP),
    "+": PREC_ADD,
    "-": PREC_ADD,
    "*": PREC_MUL,
    "/": PREC_MUL,
}


def bare_template(query: Query) -> str | None:
    """The metric name of a bare `{{name}}` query (no matchers, no offset), else None.

    A Metric condition with a `task` reads the metrics that task reported by name, and only
    this form names one metric without asking for series, ranges or aggregation.
    """
    expr = query.expr
    if isinstance(expr, Selector) and expr.templated and not expr.matchers and expr.offset is None:
        return expr.name
    return None
