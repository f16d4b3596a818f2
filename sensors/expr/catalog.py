"""The PromQL functions and aggregations the parser knows, and which the scrape source runs."""

from __future__ import annotations

from typing import NamedTuple

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

KEYWORDS = frozenset(
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
