"""The control plane's own `/metrics`: one registry per process, served on `--metrics-port`.

Model servers expose what the model does; this is what ranvier does: events processed,
decisions, actions, failures, lag and durations of each role. Roles already count what they do
in plain attributes (the engine runtime's `RuntimeStats`, the watcher's `WatcherStats`), so the
counters here are read from those attributes when Prometheus scrapes (`StatsCollector`), and a
role needs no Prometheus code in its hot path. Histograms (durations, lag) are observed by the
roles that have them through `Telemetry.observe`.

Every family carries a `role` label, so one Prometheus job scrapes every control-plane process
whatever roles it runs (`ranvier run --role all` or one role per Deployment).

The same port answers Kubernetes' probes: `/healthz` (the process is alive: its loops turn) and
`/readyz` (it does its job: connected, partitions or consumers held, table loaded). Each is a
list of named checks that return None when fine and a reason when not; a probe answers 200 with
`{"status": "ok"}` or 503 with the failing checks' reasons. Checks run in the server's thread,
so they only read plain attributes the roles keep up to date.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

PREFIX: Final = "ranvier"
DURATION_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"

Check = Callable[[], str | None]
"""A probe's check: None when fine, else why not (one short line)."""

__all__ = ["HEALTH_PATH", "READY_PATH", "Check", "MetricsServer", "StatsCollector", "Telemetry"]


class StatsCollector(Collector):
    """Exposes a role's counter dataclass: each int field `f` as `ranvier_<role>_<f>_total`.

    Fields listed in `gauges` are exposed as gauges (`ranvier_<role>_<f>`) instead, and a
    `dict[str, int]` field becomes one counter labelled by `reason`.
    """

    def __init__(self, role: str, stats: Callable[[], Any], *, gauges: Iterable[str] = ()) -> None:
        self.role = role
        self.stats = stats
        self.gauges = frozenset(gauges)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """The current values (called by the registry on every scrape)."""
        stats = self.stats()
        if stats is None:
            return
        for item in dataclasses.fields(stats):
            value = getattr(stats, item.name)
            name = f"{PREFIX}_{self.role}_{item.name}"
            doc = f"{self.role}: {item.name.replace('_', ' ')} since the process started."
            if isinstance(value, dict):
                family = CounterMetricFamily(name, doc, labels=["reason"])
                for reason, count in sorted(value.items()):
                    family.add_metric([str(reason)], float(count))
                yield family
            elif isinstance(value, int | float) and not isinstance(value, bool):
                if item.name in self.gauges:
                    yield GaugeMetricFamily(name, doc, value=float(value))
                else:
                    yield CounterMetricFamily(name, doc, value=float(value))


class Telemetry:
    """The registry of one control-plane process and the roles' collectors in it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._histograms: dict[str, Histogram] = {}
        self._lock = threading.Lock()
        self.checks: dict[str, dict[str, Check]] = {HEALTH_PATH: {}, READY_PATH: {}}

    def add_check(
        self, name: str, *, alive: Check | None = None, ready: Check | None = None
    ) -> None:
        """Add a liveness (`/healthz`) and/or readiness (`/readyz`) check under `name`."""
        if alive is not None:
            self.checks[HEALTH_PATH][name] = alive
        if ready is not None:
            self.checks[READY_PATH][name] = ready

    def probe(self, path: str) -> tuple[bool, dict[str, Any]]:
        """Run the checks of `/healthz` or `/readyz`: (all fine, the JSON body to answer)."""
        failed: dict[str, str] = {}
        for name, check in self.checks[path].items():
            try:
                reason = check()
            except Exception as exc:  # a broken check is a failed probe, not a crash
                reason = f"check failed: {exc!r}"
            if reason is not None:
                failed[name] = reason
        if failed:
            return False, {"status": "failing", "failed": failed}
        return True, {"status": "ok", "checks": sorted(self.checks[path])}

    def wsgi_app(self) -> Callable[..., list[bytes]]:
        """`/healthz` and `/readyz` from the checks; every other path is `/metrics`."""
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if path not in self.checks:
                return list(metrics(environ, start_response))
            fine, body = self.probe(path)
            status = "200 OK" if fine else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]

        return app

    def add_stats(self, role: str, stats: Callable[[], Any], *, gauges: Iterable[str] = ()) -> None:
        """Expose a role's counters dataclass (read at scrape time)."""
        self.registry.register(StatsCollector(role, stats, gauges=gauges))

    def observe(self, role: str, what: str, seconds: float) -> None:
        """Record one duration (or lag) in `ranvier_<role>_<what>_seconds`."""
        name = f"{PREFIX}_{role}_{what}_seconds"
        with self._lock:
            histogram = self._histograms.get(name)
            if histogram is None:
                histogram = Histogram(
                    name,
                    f"{role}: {what.replace('_', ' ')}, in seconds.",
                    buckets=DURATION_BUCKETS,
                    registry=self.registry,
                )
                self._histograms[name] = histogram
        histogram.observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve `/metrics`, `/healthz` and `/readyz` on `host:port` (port 0: a free port) in a
        background thread."""

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        httpd = make_server(host, port, self.wsgi_app(), Server, handler_class=_QuietHandler)
        thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
        thread.start()
        server = MetricsServer(httpd, thread)
        log.info("metrics.serving", url=server.url)
        return server


class _QuietHandler(WSGIRequestHandler):
    """No access log: probes come every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""


class MetricsServer:
    """A running `/metrics` HTTP server; `close()` stops it."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        host, port = httpd.server_address[:2]
        self.port = int(port)
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/metrics"

    def close(self) -> None:
        """Stop serving and wait for the thread."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)
