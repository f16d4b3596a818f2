"""Window evaluation for the scrape source: selectors, *_over_time, rate/increase, aggregation."""

from __future__ import annotations

import math

import pytest

from sensors.expr import ExprError, evaluate, parse_condition
from sensors.promql import LOOKBACK, SeriesStore, evaluate_query, window_seconds

Series = tuple[str, dict[str, str], list[tuple[float, float]]]


def _store(*series: Series) -> SeriesStore:
    store = SeriesStore(retention=7200)
    for name, labels, samples in series:
        for timestamp, value in samples:
            assert store.add(name, labels, value, timestamp)
    return store


def _value(query_text: str, store: SeriesStore, now: float) -> float | None:
    (query,) = parse_condition(f"{query_text} > 0").queries
    return evaluate_query(query, store, now)


def _every_10s(*values: float, start: float = 10) -> list[tuple[float, float]]:
    return [(start + 10 * i, v) for i, v in enumerate(values)]


# A counter scraped every 10 s at t=10..60 that restarts between t=30 and t=40.
RESET = _store(("c_total", {}, _every_10s(100, 110, 120, 5, 15, 25)))
# A counter starting from zero, and one seen only in the middle of a 2-minute window.
FROM_ZERO = _store(("c_total", {}, _every_10s(0, 10, 20, 30, 40, 50)))
SPARSE = _store(("c_total", {}, [(30, 100), (40, 110)]))

# (store, query, now, expected) -- values worked out by hand from Prometheus' extrapolatedRate
RATES: list[tuple[SeriesStore, str, float, float | None]] = [
    # reset adds the pre-reset value: 25 - 100 + 120 = 45, extrapolated by 60/50 to the start
    (RESET, "increase(c_total[1m])", 60, 54.0),
    (RESET, "rate(c_total[1m])", 60, 0.9),
    # a counter does not extrapolate below zero: it starts at 0 at t=10
    (FROM_ZERO, "increase(c_total[1m])", 60, 50.0),
    (FROM_ZERO, "rate(c_total[1m])", 60, 50 / 60),
    # a window (30, 60] holds 30, 40, 50 at t=40..60: 20 over 20 s, extrapolated 10 s back
    (FROM_ZERO, "increase(c_total[30s])", 60, 30.0),
    # far from both edges: extrapolate half the average gap (5 s) on each side: 10 * 20/10
    (SPARSE, "increase(c_total[2m])", 120, 20.0),
    (SPARSE, "rate(c_total[2m])", 120, 20 / 120),
    # one sample in the window: no rate
    (SPARSE, "rate(c_total[15s])", 45, None),
    (SPARSE, "rate(c_total[1m])", 1000, None),
]


@pytest.mark.parametrize(("store", "query", "now", "expected"), RATES)
def test_rate_and_increase(
    store: SeriesStore, query: str, now: float, expected: float | None
) -> None:
    value = _value(query, store, now)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


GAUGE = _store(("g", {}, _every_10s(3, 1, 4, 1, 5, 9)))

# (query, now, expected): samples at t=10..60 are 3 1 4 1 5 9
OVER_TIME: list[tuple[str, float, float | None]] = [
    ("avg_over_time(g[30s])", 60, 5.0),
    ("sum_over_time(g[30s])", 60, 15.0),
    ("min_over_time(g[30s])", 60, 1.0),
    ("max_over_time(g[30s])", 60, 9.0),
    ("count_over_time(g[30s])", 60, 3.0),
    ("last_over_time(g[30s])", 60, 9.0),
    ("avg_over_time(g[1m])", 60, 23 / 6),
    ("count_over_time(g[1m])", 60, 6.0),
    ("count_over_time(g[50s])", 60, 5.0),  # left-open: t=10 is not in (10, 60]
    ("max_over_time(g[30s])", 45, 4.0),  # samples after `now` are not seen
    ("last_over_time(g[1h])", 45, 1.0),
    ("min_over_time(g[5s])", 58, None),  # nothing in (53, 58]
    ("count_over_time(nothing[1h])", 60, None),
]


@pytest.mark.parametrize(("query", "now", "expected"), OVER_TIME)
def test_over_time_functions(query: str, now: float, expected: float | None) -> None:
    value = _value(query, GAUGE, now)
    assert value == (None if expected is None else pytest.approx(expected))


def test_over_time_of_nan_samples_is_unknown() -> None:
    store = _store(("g", {}, [(10, math.nan), (20, math.nan)]))
    assert _value("avg_over_time(g[1m])", store, 20) is None
    assert _value("max_over_time(g[1m])", store, 20) is None


LOOKBACK_STORE = _store(("g", {}, [(100, 1.0), (200, 2.0)]))

# (now, expected): the latest sample in (now - 5m, now]
LOOKBACKS: list[tuple[float, float | None]] = [
    (99, None),
    (100, 1.0),
    (150, 1.0),
    (200, 2.0),
    (499, 2.0),
    (500, None),
]


@pytest.mark.parametrize(("now", "expected"), LOOKBACKS)
def test_instant_selector_looks_back_five_minutes(now: float, expected: float | None) -> None:
    assert LOOKBACK == 300
    assert _value("g", LOOKBACK_STORE, now) == expected
    assert _value("{{g}}", LOOKBACK_STORE, now) == expected


LABELLED = _store(
    ("x", {"model": "a", "pod": "1"}, [(10, 1.0)]),
    ("x", {"model": "a", "pod": "2"}, [(10, 3.0)]),
    ("x", {"model": "b", "pod": "3"}, [(10, 10.0)]),
    ("zero", {"model": "a"}, [(10, 0.0)]),
    ("zero", {"model": "b"}, [(10, 0.0)]),
    ("num", {"k": "1"}, [(10, 6.0)]),
    ("den", {"k": "1"}, [(10, 3.0)]),
    ("den", {"k": "2"}, [(10, 1.0)]),
)

# (query, expected) at now=20 over the LABELLED series
AGGREGATIONS: list[tuple[str, float | None]] = [
    ("sum(x)", 14.0),
    ("avg(x)", 14 / 3),
    ("min(x)", 1.0),
    ("max(x)", 10.0),
    ("count(x)", 3.0),
    ("x", None),  # three series, no aggregation: no single value
    ('x{pod="1"}', 1.0),
    ('{{x}}{pod="3"}', 10.0),
    ('sum(x{model="a"})', 4.0),
    ('sum(x{model!="a"})', 10.0),
    ('sum(x{pod=~"1|2"})', 4.0),
    ('sum(x{pod=~"1"})', 1.0),  # regexes are fully anchored: "1" does not match "10"
    ('sum(x{pod!~"[12]"})', 10.0),
    ('sum(x{zone=""})', 14.0),  # an absent label equals the empty string
    ('sum(x{zone="z"})', None),
    ("max by (model) (x)", None),  # two groups
    ("max(avg by (model) (x))", 10.0),
    ("min(sum by (model) (x))", 4.0),
    ('sum without (pod) (x{model="a"})', 4.0),
    ('avg by (model) (x{model="b"})', 10.0),
    ("count(count by (model) (x))", 2.0),
    ("sum(x) / count(x)", 14 / 3),
    ("2 * sum(x) + 1", 29.0),
    ("-sum(x)", -14.0),
    ("-(sum(x) - 20)", 6.0),
    ("sum(x) / sum(zero)", None),  # division by zero
    ('x{pod="1"} / zero{model="a"}', None),  # vector/vector: labels differ, no match
    ("num / den", 2.0),  # one-to-one on labels, den{k="2"} has no partner
    ("den / 2", None),  # two series
    ('den{k="2"} * 4', 4.0),
    ('sum(x) - x{pod="3"}', None),  # labels differ: {} vs {model,pod}
    ("sum(nothing)", None),
    ("count(nothing)", None),
]


@pytest.mark.parametrize(("query", "expected"), AGGREGATIONS)
def test_aggregations_matchers_and_arithmetic(query: str, expected: float | None) -> None:
    value = _value(query, LABELLED, 20)
    assert value == (None if expected is None else pytest.approx(expected))


def test_aggregated_rates_over_labelled_counters() -> None:
    store = _store(
        ("req_total", {"code": "200"}, _every_10s(0, 100, 200, 300, 400, 500, 600)),
        ("req_total", {"code": "500"}, _every_10s(0, 5, 10, 15, 20, 25, 30)),
    )
    query = 'sum(rate(req_total{code=~"5.."}[1m])) / sum(rate(req_total[1m]))'
    assert _value(query, store, 70) == pytest.approx(30 / 630)
    cond = parse_condition(f"{query} > 0.05 and {{{{acc}}}} < 0.8")
    values = {q.key: v for q in cond.queries if (v := evaluate_query(q, store, 70)) is not None}
    assert evaluate(cond, values) is False  # 4.8 % is under 5 %, whatever acc is
    cond = parse_condition(f"{query} > 0.04 and {{{{acc}}}} < 0.8")
    assert evaluate(cond, {cond.queries[0].key: 30 / 630}) is None  # acc unknown


@pytest.mark.parametrize(
    "query",
    ["irate(x[5m])", "histogram_quantile(0.9, x)", "topk(1, x)", "x offset 5m", "abs(x)"],
)
def test_unsupported_constructs_raise_the_scrape_error(query: str) -> None:
    with pytest.raises(ExprError, match="use `source: prometheus`"):
        _value(query, LABELLED, 20)


def test_store_refuses_out_of_order_and_duplicate_samples() -> None:
    store = SeriesStore()
    assert store.add("g", {"a": "1"}, 1.0, 10)
    assert not store.add("g", {"a": "1"}, 2.0, 10)
    assert not store.add("g", {"a": "1"}, 2.0, 5)
    assert store.add("g", {"a": "1"}, 3.0, 11)
    assert _value("g", store, 11) == 3.0


def test_store_label_order_and_name_label_do_not_split_series() -> None:
    store = SeriesStore()
    store.add("g", {"a": "1", "b": "2"}, 1.0, 10)
    store.add("g", {"b": "2", "__name__": "g", "a": "1"}, 2.0, 20)
    assert len(store) == 1
    assert _value("count_over_time(g[1m])", store, 20) == 2.0


def test_store_keeps_only_its_retention_and_sample_bound() -> None:
    store = SeriesStore(retention=100, max_samples_per_series=5)
    for t in range(0, 300, 10):
        store.add("g", {}, float(t), t)
    # bounded by count: only 5 samples are left, the newest
    assert _value("count_over_time(g[1h])", store, 290) == 5.0
    assert _value("min_over_time(g[1h])", store, 290) == 250.0
    store = SeriesStore(retention=100)
    for t in range(0, 300, 10):
        store.add("g", {}, float(t), t)
    # bounded by time: samples older than 100 s before the newest are dropped
    assert _value("min_over_time(g[1h])", store, 290) == 190.0


def test_store_prune_drops_idle_series() -> None:
    store = SeriesStore(retention=100)
    store.add("old", {}, 1.0, 10)
    store.add("new", {}, 1.0, 200)
    store.prune(now=200)
    assert len(store) == 1
    assert _value("last_over_time(old[1h])", store, 200) is None
    assert _value("new", store, 200) == 1.0


def test_store_refuses_new_series_beyond_its_bound() -> None:
    store = SeriesStore(max_series=2)
    assert store.add("g", {"i": "1"}, 1.0, 10)
    assert store.add("g", {"i": "2"}, 1.0, 10)
    assert not store.add("g", {"i": "3"}, 1.0, 10)
    assert not store.add("h", {}, 1.0, 10)
    assert store.add("g", {"i": "1"}, 2.0, 20)  # known series still take samples
    assert len(store) == 2


@pytest.mark.parametrize(
    ("condition", "seconds"),
    [
        ("{{acc}} < 1", LOOKBACK),
        ("rate(x[1m]) > 1", 60),
        ("avg_over_time(x[2h]) > x", 7200),
        ("sum(increase(x[10m])) / sum(rate(y[20m])) > 1", 1200),
    ],
)
def test_window_seconds(condition: str, seconds: float) -> None:
    assert window_seconds(parse_condition(condition).queries) == seconds


def test_stale_series_have_no_instant_value_until_scraped_again() -> None:
    store = _store(
        ("x", {"instance": "a"}, [(100, 1.0)]),
        ("x", {"instance": "b"}, [(100, 2.0)]),
    )
    assert store.mark_stale(150, {"instance": "a"}) == 1
    assert store.mark_stale(160, {"instance": "a"}) == 0  # already stale
    assert _value("sum(x)", store, 140) == 3.0  # before the marker
    assert _value("sum(x)", store, 170) == 2.0
    assert _value('x{instance="a"}', store, 170) is None
    assert _value('last_over_time(x{instance="a"}[1h])', store, 170) == 1.0
    assert _value('count_over_time(x{instance="a"}[1h])', store, 170) == 1.0
    assert not store.add("x", {"instance": "a"}, 9.0, 150)  # not before the marker
    assert store.add("x", {"instance": "a"}, 5.0, 200)
    assert _value("sum(x)", store, 200) == 7.0
    assert store.mark_stale(300, {}) == 2
    assert _value("sum(x)", store, 300) is None
