"""The few calls a served model class makes to report its own metrics.

A user class does `from ranvier.sdk import metrics` (the public SDK re-exports it) and calls
`metrics.gauge("accuracy", 0.93)` or `metrics.counter("tokens", 12)`; the values appear in the
model server's `/metrics` with the labels `axon`, `model`, `version` (from `RANVIER_AXON`,
`RANVIER_MODEL`, `RANVIER_VERSION` when set), which is what Alert triggers read. The calls go
to the sink of the server that is running the class: each server app owns its own registry,
so two servers in one process (tests) do not mix their numbers. Outside a server the calls are
kept in a process-wide default sink and are harmless.
"""

from __future__ import annotations

import contextvars
import os
import re
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

LABELS = ("axon", "model", "version")
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def metric_name(name: str) -> str:
    """A valid Prometheus metric name for a user's name (other characters become `_`)."""
    cleaned = _INVALID.sub("_", name.strip()) or "_"
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


def default_labels() -> dict[str, str]:
    """The `axon`, `model`, `version` labels from the environment (empty when unset)."""
    return {
        "axon": os.environ.get("RANVIER_AXON", ""),
        "model": os.environ.get("RANVIER_MODEL", ""),
        "version": os.environ.get("RANVIER_VERSION", ""),
    }


class MetricSink:
    """User gauges and counters of one server, in that server's registry."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str] | None = None) -> None:
        self.registry = registry
        self.labels = dict(labels if labels is not None else default_labels())
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        self._lock = threading.Lock()

    def gauge(self, name: str, value: float) -> None:
        """Set gauge `name` to `value`."""
        key = metric_name(name)
        with self._lock:
            metric = self._gauges.get(key)
            if metric is None:
                metric = Gauge(key, f"User gauge {name}", LABELS, registry=self.registry)
                self._gauges[key] = metric
        metric.labels(**self.labels).set(value)

    def counter(self, name: str, inc: float = 1.0) -> None:
        """Add `inc` (>= 0) to counter `name` (exposed as `<name>_total`)."""
        key = metric_name(name).removesuffix("_total")
        with self._lock:
            metric = self._counters.get(key)
            if metric is None:
                metric = Counter(key, f"User counter {name}", LABELS, registry=self.registry)
                self._counters[key] = metric
        metric.labels(**self.labels).inc(inc)


_default = MetricSink(CollectorRegistry(auto_describe=True))
_current: contextvars.ContextVar[MetricSink | None] = contextvars.ContextVar(
    "ranvier_metric_sink", default=None
)


def install(sink: MetricSink) -> None:
    """Make `sink` the process-wide default (a model server does this before loading a class)."""
    global _default  # noqa: PLW0603 -- one process-wide default sink is the point of this module
    _default = sink


def bind(sink: MetricSink) -> contextvars.Token[MetricSink | None]:
    """Send this context's calls (one request, and threads it starts) to `sink`."""
    return _current.set(sink)


def unbind(token: contextvars.Token[MetricSink | None]) -> None:
    """Undo a `bind`."""
    _current.reset(token)


def current() -> MetricSink:
    """The sink calls go to now."""
    return _current.get() or _default


class _Metrics:
    """The `metrics` object user code calls."""

    def gauge(self, name: str, value: float) -> None:
        """Set gauge `name` to `value`."""
        current().gauge(name, value)

    def counter(self, name: str, inc: float = 1.0) -> None:
        """Add `inc` to counter `name`."""
        current().counter(name, inc)


metrics = _Metrics()
