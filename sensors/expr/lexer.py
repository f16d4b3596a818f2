"""Tokens of a condition: numbers, strings with PromQL escapes, durations, `{{name}}` templates."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from sensors.expr.nodes import ExprError

# --------------------------------------------------------------------------------------------
# Lexer


class Tok(NamedTuple):
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


def _lex_string(text: str, start: int) -> Tok:
    quote = text[start]
    if quote == "`":
        close = text.find("`", start + 1)
        if close < 0:
            raise ExprError("unterminated string; close it with `", start + 1)
        return Tok("str", text[start : close + 1], start, close + 1, text[start + 1 : close])
    out: list[str] = []
    i = start + 1
    while True:
        if i >= len(text) or text[i] == "\n":
            raise ExprError(f"unterminated string; close it with {quote}", start + 1)
        ch = text[i]
        if ch == quote:
            return Tok("str", text[start : i + 1], start, i + 1, "".join(out))
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


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
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
            toks.append(Tok("tmpl", m.group(0), i, m.end(), m.group(1)))
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
            toks.append(Tok("num", m.group(), i, m.end(), float(m.group())))
        elif kind == "dur":
            toks.append(Tok("dur", m.group(), i, m.end(), _parse_duration(m.group(), i)))
        elif kind == "ident":
            word = m.group()
            if word.lower() in ("inf", "nan"):
                toks.append(Tok("num", word, i, m.end(), float(word)))
            else:
                toks.append(Tok("ident", word, i, m.end(), word))
        elif kind == "op":
            toks.append(Tok("op", m.group(), i, m.end(), m.group()))
        i = m.end()
    toks.append(Tok("eof", "", len(text), len(text)))
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
