"""Window evaluation of the PromQL subset, for the `scrape` source that needs no Prometheus.

The metric watcher scrapes model servers and feeds each sample into a `SeriesStore`; every
interval it calls `evaluate_query` for each condition's query and publishes the number. Both
are pure (the clock is the `now` argument), so tests drive them with made-up samples and the
results match what Prometheus would compute for the same samples.

Semantics, following Prometheus where it has an answer:
- an instant selector takes each matching series' latest sample in (now - 5m, now];
- a range `[d]` takes the samples in (now - d, now] (left-open, as Prometheus 3);
- `rate`/`increase` handle counter resets and extrapolate to the window edges exactly like
  Prometheus' `extrapolatedRate`; a series needs two samples in the window;
- arithmetic between two vectors matches series one-to-one on their labels (the metric name
  is dropped); series without a partner are dropped; a scalar applies to every series;
- division by zero gives no value (a scalar becomes unknown, a vector loses that series);
- the result is a number when it is a scalar or a vector of exactly one series; no series or
  several series (e.g. `sum by (model) (x)` with two models) is unknown (None), because a
  threshold cannot be compared with several values: aggregate them first.
Anything `validate_for_scrape` reports is refused here with the same ExprError.
"""

from __future__ import annotations

import functools
import math
import operator
import struct
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeAlias

from sensors.expr import (
    Aggregate,
    Binary,
    Call,
    Expr,
    ExprError,
    Matcher,
    Negate,
    Number,
    Query,
    RangeSelector,
    Selector,
    String,
    scrape_problems,
)

__all__ = [
    "LOOKBACK",
    "STALE",
    "Labels",
    "SeriesStore",
    "evaluate_query",
    "window_seconds",
]

LOOKBACK = 300.0
"""How far back an instant selector looks for a series' latest sample, in seconds."""

_STALE_BYTES = struct.pack("<Q", 0x7FF0000000000002)
STALE: float = struct.unpack("<d", _STALE_BYTES)[0]
"""Prometheus' staleness marker: a NaN with a distinct bit pattern; see SeriesStore.mark_stale."""

Labels: TypeAlias = tuple[tuple[str, str], ...]
"""A series' labels without its metric name, sorted by label name."""

Sample: TypeAlias = tuple[float, float]
"""(timestamp in seconds, value)."""

_Vector: TypeAlias = dict[Labels, float]
_Value: TypeAlias = float | _Vector | None


class SeriesStore:
    """A bounded window of (timestamp, value) samples per series, indexed by metric name."""

    def __init__(
        self,
        retention: float = 3600.0,
        max_samples_per_series: int = 4096,
        max_series: int = 100_000,
    ) -> None:
        if retention <= 0 or max_samples_per_series < 2 or max_series < 1:
            raise ValueError("retention > 0, max_samples_per_series >= 2, max_series >= 1")
        self.retention = retention
        self.max_samples_per_series = max_samples_per_series
        self.max_series = max_series
        self._series: dict[str, dict[Labels, deque[Sample]]] = {}
        self._count = 0

    def __len__(self) -> int:
        """The number of series held."""
        return self._count

    def add(self, name: str, labels: Mapping[str, str], value: float, timestamp: float) -> bool:
        """Record one sample; False when refused (older than the series' last, or store full).

        Samples older than `retention` before this one are dropped from its series.
        """
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))
        by_labels = self._series.setdefault(name, {})
        samples = by_labels.get(key)
        if samples is None:
            if self._count >= self.max_series:
                if not by_labels:
                    del self._series[name]
                return False
            samples = by_labels[key] = deque(maxlen=self.max_samples_per_series)
            self._count += 1
        elif samples and timestamp <= samples[-1][0]:
            return False
        samples.append((timestamp, value))
        horizon = timestamp - self.retention
        while samples[0][0] < horizon:
            samples.popleft()
        return True

    def mark_stale(self, timestamp: float, labels: Mapping[str, str]) -> int:
        """End every series whose labels include `labels` (e.g. a target that stopped answering).

        Like Prometheus' staleness markers: from `timestamp` on, an instant selector finds no
        value for these series (instead of the last one for five more minutes), and range
        functions ignore the marker. A later sample revives the series. Returns how many
        series were marked.
        """
        wanted = tuple(labels.items())
        marked = 0
        for by_labels in self._series.values():
            for key, samples in by_labels.items():
                if samples and timestamp <= samples[-1][0]:
                    continue
                if samples and _is_stale(samples[-1][1]):
                    continue
                if all(pair in key for pair in wanted):
                    samples.append((timestamp, STALE))
                    marked += 1
        return marked

    def prune(self, now: float) -> None:
        """Drop samples older than `now - retention` and series left without samples."""
        horizon = now - self.retention
        for name in list(self._series):
            by_labels = self._series[name]
            for key in list(by_labels):
                samples = by_labels[key]
                while samples and samples[0][0] < horizon:
                    samples.popleft()
                if not samples:
                    del by_labels[key]
                    self._count -= 1
            if not by_labels:
                del self._series[name]

    def select(
        self, name: str, matchers: Sequence[Matcher] = ()
    ) -> Iterator[tuple[Labels, deque[Sample]]]:
        """The series of metric `name` whose labels satisfy every matcher."""
        for labels, samples in self._series.get(name, {}).items():
            if matchers:
                found = dict(labels)
                if not all(m.matches(found.get(m.label, "")) for m in matchers):
                    continue
            yield labels, samples


def _is_stale(value: float) -> bool:
    return value != value and struct.pack("<d", value) == _STALE_BYTES  # noqa: PLR0124  # cheap NaN test first


def _latest(samples: deque[Sample], start: float, end: float) -> float | None:
    for timestamp, value in reversed(samples):
        if timestamp <= end:
            return None if timestamp <= start or _is_stale(value) else value
    return None


def _window(samples: deque[Sample], start: float, end: float) -> list[Sample]:
    picked: list[Sample] = []
    for sample in reversed(samples):
        if sample[0] <= start:
            break
        if sample[0] <= end and not _is_stale(sample[1]):
            picked.append(sample)
    picked.reverse()
    return picked


def _extrapolated(
    samples: list[Sample], start: float, end: float, *, is_rate: bool
) -> float | None:
    """Prometheus' extrapolatedRate for counters: resets, then extrapolation to the edges."""
    if len(samples) < 2:
        return None
    first_t, first_v = samples[0]
    last_t, last_v = samples[-1]
    result = last_v - first_v
    previous = first_v
    for _, value in samples[1:]:
        if value < previous:  # a counter reset: the counter restarted from zero
            result += previous
        previous = value
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    average_gap = sampled / (len(samples) - 1)
    to_start = first_t - start
    to_end = end - last_t
    if result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)  # a counter does not extrapolate below zero
        to_start = min(to_start, to_zero)
    threshold = average_gap * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average_gap / 2
    interval += to_end if to_end < threshold else average_gap / 2
    result *= interval / sampled
    return result / (end - start) if is_rate else result


def _avg(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _min(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return min(clean) if clean else math.nan


def _max(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return max(clean) if clean else math.nan


_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "avg": _avg,
    "sum": math.fsum,
    "min": _min,
    "max": _max,
    "count": lambda values: float(len(values)),
}
_OVER_TIME: dict[str, Callable[[list[float]], float]] = {
    "avg_over_time": _avg,
    "sum_over_time": math.fsum,
    "min_over_time": _min,
    "max_over_time": _max,
    "count_over_time": lambda values: float(len(values)),
    "last_over_time": lambda values: values[-1],
}


def _divide(left: float, right: float) -> float | None:
    return None if right == 0 else left / right


_ARITH: dict[str, Callable[[float, float], float | None]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}


def _apply(op: str, left: _Value, right: _Value) -> _Value:
    if left is None or right is None:
        return None
    fn = _ARITH[op]
    if isinstance(left, float) and isinstance(right, float):
        return fn(left, right)
    result: _Vector = {}
    if isinstance(left, dict) and isinstance(right, dict):
        pairs = ((k, v, right[k]) for k, v in left.items() if k in right)
    elif isinstance(left, dict):
        assert isinstance(right, float)
        pairs = ((k, v, right) for k, v in left.items())
    else:
        assert isinstance(right, dict)
        pairs = ((k, left, v) for k, v in right.items())
    for key, a, b in pairs:
        value = fn(a, b)
        if value is not None:
            result[key] = value
    return result


def _group(labels: Labels, node: Aggregate) -> Labels:
    if node.grouping is None:
        return ()
    if node.without:
        return tuple(pair for pair in labels if pair[0] not in node.grouping)
    return tuple(pair for pair in labels if pair[0] in node.grouping)


def _eval(node: Expr, store: SeriesStore, now: float) -> _Value:
    match node:
        case Number():
            return node.value
        case Selector():
            vector: _Vector = {}
            for labels, samples in store.select(node.name, node.matchers):
                value = _latest(samples, now - LOOKBACK, now)
                if value is not None:
                    vector[labels] = value
            return vector
        case Call():
            return _call(node, store, now)
        case Aggregate():
            return _aggregate(node, store, now)
        case Binary():
            return _apply(node.op, _eval(node.left, store, now), _eval(node.right, store, now))
        case Negate():
            return _apply("*", _eval(node.operand, store, now), -1.0)
    raise AssertionError(node)  # pragma: no cover - the Expr union is exhaustive


def _call(node: Call, store: SeriesStore, now: float) -> _Vector:
    (arg,) = node.args
    assert isinstance(arg, RangeSelector)  # the parser allows only a range selector here
    start = now - arg.range
    sel = arg.selector
    result: _Vector = {}
    for labels, samples in store.select(sel.name, sel.matchers):
        window = _window(samples, start, now)
        if not window:
            continue
        value: float | None
        if node.func in ("rate", "increase"):
            value = _extrapolated(window, start, now, is_rate=node.func == "rate")
        else:
            value = _OVER_TIME[node.func]([v for _, v in window])
        if value is not None:
            result[labels] = value
    return result


def _aggregate(node: Aggregate, store: SeriesStore, now: float) -> _Vector | None:
    value = _eval(node.arg, store, now)
    if value is None:
        return None
    vector = {(): value} if isinstance(value, float) else value
    groups: dict[Labels, list[float]] = {}
    for labels, sample in vector.items():
        groups.setdefault(_group(labels, node), []).append(sample)
    reduce = _REDUCERS[node.op]
    return {key: reduce(values) for key, values in groups.items()}


def evaluate_query(query: Query, store: SeriesStore, now: float) -> float | None:
    """The query's value at `now` from the stored samples, or None when it has no single value.

    Raises ExprError for constructs the scrape source cannot evaluate (see validate_for_scrape).
    """
    problems = _scrape_problems(query)
    if problems:
        raise problems[0]
    value = _eval(query.expr, store, now)
    if isinstance(value, dict):
        if len(value) != 1:
            return None
        (value,) = value.values()
    if value is None or math.isnan(value):
        return None
    return value


@functools.lru_cache(maxsize=4096)
def _scrape_problems(query: Query) -> tuple[ExprError, ...]:
    return tuple(scrape_problems(query))


def _longest(node: Expr | RangeSelector | String) -> float:
    match node:
        case Selector():
            return LOOKBACK
        case RangeSelector():
            return node.range
        case Call():
            return max((_longest(a) for a in node.args), default=0.0)
        case Aggregate():
            return _longest(node.arg)
        case Binary():
            return max(_longest(node.left), _longest(node.right))
        case Negate():
            return _longest(node.operand)
    return 0.0


def window_seconds(queries: Sequence[Query]) -> float:
    """How much history a SeriesStore must keep to evaluate these queries (at least LOOKBACK)."""
    return max((_longest(q.expr) for q in queries), default=LOOKBACK)
