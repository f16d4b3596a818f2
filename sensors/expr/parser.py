"""The parser: one precedence-climbing pass over every level, with errors that name the column."""

from __future__ import annotations

import difflib
import functools
import operator
import re
import warnings
from collections.abc import Callable
from dataclasses import replace

from sensors.expr.catalog import AGGREGATIONS, FUNCTIONS, KEYWORDS
from sensors.expr.lexer import Tok, tokenize
from sensors.expr.nodes import (
    COMPARE,
    INFIX,
    MAX_CONDITION_LENGTH,
    MAX_NESTING,
    MAX_OPERATORS,
    PREC_NOT,
    PREC_UNARY,
    Aggregate,
    And,
    Arg,
    Binary,
    BoolNode,
    Call,
    Compare,
    Condition,
    Expr,
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
from sensors.expr.render import render_bool, render_node

# --------------------------------------------------------------------------------------------
# Parser: one precedence-climbing pass over every level (or < and < not < comparison < + - <
# * / < unary), checking kinds as it combines so errors point at the offending operand.

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
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0
        self.operators = 0

    # -- token helpers

    def peek(self, ahead: int = 0) -> Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def advance(self) -> Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def is_op(self, tok: Tok, *ops: str) -> bool:
        return tok.kind == "op" and tok.text in ops

    def is_word(self, tok: Tok, *words: str) -> bool:
        return tok.kind == "ident" and tok.text in words

    def fail(self, message: str, pos: int) -> ExprError:
        return ExprError(message, pos + 1)

    def shown(self, tok: Tok) -> str:
        return "the end of the condition" if tok.kind == "eof" else repr(tok.text)

    def expect(self, op: str, what: str) -> Tok:
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
            prec = INFIX.get(name)
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

    def infix(self, left: Node, tok: Tok, prec: int) -> Node:
        op = tok.text
        self.operators += 1
        if self.operators > MAX_OPERATORS:
            raise self.fail(f"the condition has more than {MAX_OPERATORS} operators", tok.pos)
        if op in ("and", "or"):
            left_cond = self.need_condition(left, f"`{op}`")
            right_cond = self.need_condition(self.expression(prec + 1), f"`{op}`")
            cls = And if op == "and" else Or
            return cls(left_cond, right_cond, pos=left_cond.pos, end=right_cond.end)
        if op in COMPARE and isinstance(left, Compare):
            raise self.fail("comparisons cannot be chained; join them with `and`", tok.pos)
        left_value = self.need_value(left, f"{op!r}")
        nxt = self.peek()
        if op in COMPARE and self.is_word(nxt, "bool"):
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
        if op in COMPARE:
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
            key=render_node(node, None),
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

    def prefix_op(self, tok: Tok) -> Node:
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
        operand = self.need_value(self.expression(PREC_UNARY), f"unary {tok.text!r}")
        if tok.text == "+":
            return replace(operand, pos=tok.pos)
        if isinstance(operand, Number):
            return Number(-operand.value, pos=tok.pos, end=operand.end)
        return Negate(operand, pos=tok.pos, end=operand.end)

    def word(self, tok: Tok) -> Node:
        name = tok.text
        nxt = self.peek()
        if name == "not":
            operand = self.need_condition(self.expression(PREC_NOT), "`not`")
            return Not(operand, pos=tok.pos, end=operand.end)
        if name in KEYWORDS:
            raise self.fail(f"expected a value before `{name}`", tok.pos)
        if name in AGGREGATIONS and (self.is_op(nxt, "(") or self.is_word(nxt, "by", "without")):
            return self.aggregate(tok)
        if self.is_op(nxt, "("):
            return self.call(tok)
        return self.selector(name, tok, templated=False)

    def selector(self, name: str, tok: Tok, *, templated: bool) -> Node:
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

    def aggregate(self, tok: Tok) -> Aggregate:
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

    def call(self, tok: Tok) -> Call:
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
    return Condition(text, root, tuple(queries.values()), render_bool(root))
