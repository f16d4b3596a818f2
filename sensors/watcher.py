"""The metric watcher role: the values of every Alert trigger's and Metric condition's queries.

The engine never reads metrics itself (it stays pure and replayable); it is fed `ranvier.metric`
events, one per query per interval, keyed by `Query.key` and naming the sensor and the trigger
(or condition) they answer. This role produces them, for every submitted Axon:

- source `scrape` (the default, needs nothing else): every interval it scrapes the Axon's model
  servers (the backends of its deployment records in `ranvier_models`), keeps their samples in
  a bounded `SeriesStore` per Axon (as long as the longest range the queries read), and
  evaluates each query with `sensors.promql`, exactly as Prometheus would for those samples.
  Each target gets `instance` and `job` labels like a Prometheus scrape; a target that stops
  answering or leaves the deployment is marked stale, so its last value is not used;
- source `prometheus`: it sends each query, with every `{{name}}` pinned to the Axon
  (`render_prometheus(query, {"axon": name})`), to `spec.metrics.url` or RANVIER_PROMETHEUS_URL.

A bare `{{name}}` (Myelin's template: no label matchers, nothing around it) names the Axon's
metric, one value per Axon: when several series answer (the versions a rolloutSpec keeps serving,
replicas), it reads as their mean, `avg({{name}})`, which is what users see when the router splits
their traffic evenly. So Myelin's `{{shakespeare_gpt2_deploy_accuracy}} < 0.90` keeps working
after a retrain deploys version 2 next to version 1. Anything else keeps PromQL's rules (write
`min(...)`, `max(...)`, or matchers, to say which series).

A value that cannot be known (no sample, several series, a source that is down) is published as
unknown (`value` null, `stale` when the source could not be read), never as a number: the
engine's three-valued logic then makes no transition, so nothing fires on missing data. Unknown
values are published when a query becomes unknown, not on every interval.

Event ids are derived from (namespace, axon, sensor, trigger, query, tick), where the tick is the
interval's index since the epoch, so a watcher restarted within a tick, or two replicas, publish
that tick once (the events stream drops the duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Final, Literal

import structlog

from events import subjects
from events.aio import checkpoint
from events.bus import OUTAGE_ERRORS, Bus, kv_key
from events.model import MetricData
from events.telemetry import Telemetry
from events.watchers.metrics import DEFAULT_TIMEOUT, PrometheusReader, Scraper, instance_of
from sensors.axons import AxonStore, StoredAxon
from sensors.expr import Aggregate, ExprError, Query, Selector, parse_condition, render_prometheus
from sensors.promql import SeriesStore, evaluate_query, window_seconds
from sensors.spec import AlertTrigger

log = structlog.get_logger(__name__)

SOURCE: Final = "ranvier/metrics"
JOB: Final = "ranvier-model-servers"
"""The `job` label of scraped samples (the same job name as manifests/base/prometheus.yaml)."""
PROMETHEUS_ENV: Final = "RANVIER_PROMETHEUS_URL"
DEFAULT_REFRESH: Final = 2.0
_MIN_INTERVAL: Final = 0.05

__all__ = [
    "JOB",
    "MetricsWatcher",
    "Watch",
    "WatchPlan",
    "WatcherStats",
    "axon_query",
    "metric_event_id",
    "plan_axon",
]


@dataclass(frozen=True, slots=True)
class Watch:
    """One query that one Alert trigger (or Metric condition) of one sensor reads."""

    sensor: str
    trigger: str
    query: Query


@dataclass(slots=True)
class WatchPlan:
    """What the watcher reads for one Axon generation, and its scrape window."""

    namespace: str
    name: str
    generation: int
    digest: str
    source: Literal["scrape", "prometheus"]
    url: str | None
    interval: float
    watches: tuple[Watch, ...]
    queries: tuple[Query, ...]
    store: SeriesStore | None = None
    next_tick: int = 0
    targets: set[str] = field(default_factory=set)
    known: dict[tuple[str, str, str], bool] = field(default_factory=dict)


@dataclass(slots=True)
class WatcherStats:
    """What the watcher did since it started (exposed by `events.telemetry`)."""

    axons: int = 0
    ticks: int = 0
    published: int = 0
    unknown: int = 0
    scrapes: int = 0
    scrape_failures: int = 0
    queries: int = 0
    query_failures: int = 0
    failures: int = 0


def metric_event_id(where: tuple[str, str, str, str, str], tick: int) -> str:
    """The event id of one query's value at one tick: `where` is (namespace, axon, sensor,
    trigger, query key); the same inputs give the same id."""
    digest = hashlib.sha256("\0".join(where).encode()).hexdigest()
    return f"metric.{digest[:32]}.{tick}"


def plan_axon(stored: StoredAxon, default_url: str | None) -> WatchPlan | None:
    """The queries of an Axon's Alert triggers and Metric conditions; None when it has none."""
    watches: list[Watch] = []
    for sensor in stored.axon.spec.sensors:
        for trigger in sensor.triggers:
            if isinstance(trigger, AlertTrigger):
                texts = [trigger.condition]
                if trigger.resolve is not None:
                    texts.append(trigger.resolve)
                watches += _watches(sensor.name, trigger.name, texts)
        for condition in sensor.conditions:
            if condition.task is None:  # with a task, its runs' reported metrics answer
                watches += _watches(sensor.name, condition.name, [condition.condition])
    if not watches:
        return None
    settings = stored.axon.spec.metrics
    source = settings.source if settings is not None else "scrape"
    queries = tuple({w.query.key: w.query for w in watches}.values())
    return WatchPlan(
        namespace=stored.namespace,
        name=stored.name,
        generation=stored.generation,
        digest=stored.digest,
        source=source,
        url=(settings.url if settings is not None else None) or default_url,
        interval=max(settings.interval if settings is not None else 5.0, _MIN_INTERVAL),
        watches=tuple(watches),
        queries=queries,
    )


def _watches(sensor: str, trigger: str, texts: Iterable[str]) -> list[Watch]:
    found: dict[str, Query] = {}
    for text in texts:
        try:
            condition = parse_condition(text)
        except ExprError as exc:  # the loader refuses these; a hand-written KV record may not
            log.warning("watcher.condition_invalid", sensor=sensor, trigger=trigger, error=str(exc))
            continue
        for query in condition.queries:
            found.setdefault(query.key, axon_query(query))
    return [Watch(sensor, trigger, q) for q in found.values()]


def axon_query(query: Query) -> Query:
    """The query as the watcher reads it: a bare `{{name}}` is `avg({{name}})` (same key).

    A bare template names the Axon's metric, so several series (versions serving side by side,
    replicas) give their mean instead of an unknown value; one series gives its own value.
    """
    expr = query.expr
    if isinstance(expr, Selector) and expr.templated and not expr.matchers and expr.offset is None:
        return replace(query, expr=Aggregate("avg", expr, pos=expr.pos, end=expr.end))
    return query


class MetricsWatcher:
    """Publishes the value of every submitted Axon's condition queries each interval."""

    def __init__(
        self,
        bus: Bus,
        *,
        prometheus_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        refresh: float = DEFAULT_REFRESH,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.prometheus_url = prometheus_url or os.environ.get(PROMETHEUS_ENV) or None
        self.timeout = timeout
        self.refresh = refresh
        self.clock = clock
        self.stats = WatcherStats()
        self.telemetry = telemetry
        if telemetry is not None:
            telemetry.add_stats("watcher", lambda: self.stats, gauges=("axons",))
        self._store = AxonStore(bus)
        self._plans: dict[tuple[str, str], WatchPlan] = {}
        self._scraper = Scraper(timeout=timeout)
        self._readers: dict[str, PrometheusReader] = {}
        self._refreshed = -math.inf
        self._broken: set[str] = set()

    async def run(self) -> None:
        """Evaluate and publish each Axon's queries every interval; runs until cancelled."""
        log.info("watcher.started", prometheus=self.prometheus_url)
        try:
            while True:
                checkpoint()
                now = self.clock()
                if now - self._refreshed >= self.refresh:
                    await self._refresh_plans(now)
                due = [p for p in self._plans.values() if p.next_tick * p.interval <= now]
                if due:
                    await self._finish(asyncio.gather(*(self._guarded_tick(p) for p in due)))
                wake = self._refreshed + self.refresh
                for plan in self._plans.values():
                    wake = min(wake, plan.next_tick * plan.interval)
                await asyncio.sleep(max(wake - self.clock(), 0.01))
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP clients (`run` does it when cancelled; callers of `tick` do it)."""
        await self._scraper.aclose()
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    async def _finish(self, work: asyncio.Future[list[None]]) -> None:
        """Await the ticks in flight; on cancellation let them end first (bounded by the
        timeout), so no scrape is cut off mid-request and no connection is left half open."""
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(self.timeout + 1.0):
                    await work
            raise

    async def _refresh_plans(self, now: float) -> None:
        try:
            stored = await self._store.list()
        except OUTAGE_ERRORS as exc:
            log.warning("watcher.axons_unreadable", error=str(exc))
            return
        self._refreshed = now
        seen: set[tuple[str, str]] = set()
        for axon in stored:
            key = (axon.namespace, axon.name)
            current = self._plans.get(key)
            if current is not None and current.digest == axon.digest:
                seen.add(key)
                continue
            plan = plan_axon(axon, self.prometheus_url)
            if plan is None:
                continue
            seen.add(key)
            if plan.source == "scrape":
                plan.store = SeriesStore(retention=window_seconds(plan.queries) + 2 * plan.interval)
            plan.next_tick = math.floor(now / plan.interval)  # the current tick is due now
            self._plans[key] = plan
            log.info(
                "watcher.watching",
                axon=plan.name,
                namespace=plan.namespace,
                generation=plan.generation,
                source=plan.source,
                queries=len(plan.queries),
                interval=plan.interval,
            )
        for key in set(self._plans) - seen:
            gone = self._plans.pop(key)
            for target in gone.targets:
                self._scraper.outages.forget(target)
            log.info("watcher.unwatched", axon=gone.name, namespace=gone.namespace)
        self.stats.axons = len(self._plans)

    async def _guarded_tick(self, plan: WatchPlan) -> None:
        try:
            await self.tick(plan)
        except OUTAGE_ERRORS as exc:
            self.stats.failures += 1
            log.warning("watcher.tick_failed", axon=plan.name, error=str(exc))
        finally:
            plan.next_tick = math.floor(self.clock() / plan.interval) + 1

    async def tick(self, plan: WatchPlan) -> int:
        """Read and publish the values of one Axon's queries now; the number published."""
        started = self.clock()
        tick = plan.next_tick
        if self.telemetry is not None:
            self.telemetry.observe("watcher", "tick_lag", max(started - tick * plan.interval, 0))
        if plan.source == "scrape":
            values, stale = await self._scrape_values(plan, started)
        else:
            values, stale = await self._prometheus_values(plan)
        sampled = datetime.fromtimestamp(started, UTC)
        events = []
        for watch in plan.watches:
            key = watch.query.key
            value = values.get(key)
            known = value is not None
            seen = (watch.sensor, watch.trigger, key)
            if not known and plan.known.get(seen) is False:
                continue  # still unknown: said already
            plan.known[seen] = known
            self.stats.unknown += not known
            data = MetricData(
                axon=plan.name,
                namespace=plan.namespace,
                name=key,
                value=value,
                sample_time=sampled,
                source=plan.source,
                sensor=watch.sensor,
                trigger=watch.trigger,
                stale=not known and key in stale,
            )
            event_id = metric_event_id(
                (plan.namespace, plan.name, watch.sensor, watch.trigger, key), tick
            )
            events.append(data.to_event(source=SOURCE, id=event_id, time=sampled))
        if events:
            await self.bus.publish_many(events)
        self.stats.ticks += 1
        self.stats.published += len(events)
        if self.telemetry is not None:
            self.telemetry.observe("watcher", "tick_duration", self.clock() - started)
        return len(events)

    async def _scrape_values(
        self, plan: WatchPlan, now: float
    ) -> tuple[dict[str, float | None], set[str]]:
        store = plan.store
        assert store is not None  # plans of the scrape source are given a store
        targets = await self.scrape_targets(plan.namespace, plan.name)
        readings = await asyncio.gather(*(self._scraper.scrape(url) for url in targets))
        self.stats.scrapes += len(targets)
        down = 0
        current: set[str] = set()
        for url, reading in zip(targets, readings, strict=True):
            instance = instance_of(url)
            current.add(instance)
            if reading.stale:
                down += 1
                self.stats.scrape_failures += 1
                store.mark_stale(now, {"instance": instance})
                continue
            for sample in reading.samples:
                labels = {**sample.labels, "instance": instance, "job": JOB}
                stamp = sample.timestamp if sample.timestamp is not None else now
                store.add(sample.name, labels, sample.value, stamp)
        for instance in plan.targets - current:
            store.mark_stale(now, {"instance": instance})
        plan.targets = current
        store.prune(now)
        values: dict[str, float | None] = {}
        for query in plan.queries:
            self.stats.queries += 1
            try:
                values[query.key] = evaluate_query(query, store, now)
            except ExprError as exc:  # a spec that skipped the loader's scrape check
                values[query.key] = None
                self._once(f"{plan.name}/{query.key}", "watcher.query_unsupported", exc)
        # Every target down (or none deployed but some were): values are stale, not just absent.
        stale = {q.key for q in plan.queries} if targets and down == len(targets) else set()
        return values, stale

    async def _prometheus_values(self, plan: WatchPlan) -> tuple[dict[str, float | None], set[str]]:
        keys = [q.key for q in plan.queries]
        if plan.url is None:
            self._once(
                f"{plan.namespace}/{plan.name}/url",
                "watcher.no_prometheus_url",
                ExprError(f"set spec.metrics.url or {PROMETHEUS_ENV}"),
            )
            return dict.fromkeys(keys), set(keys)
        reader = self._readers.get(plan.url)
        if reader is None:
            reader = self._readers[plan.url] = PrometheusReader(plan.url, timeout=self.timeout)
        texts = [render_prometheus(q, {"axon": plan.name}) for q in plan.queries]
        readings = await asyncio.gather(*(reader.query(text) for text in texts))
        self.stats.queries += len(texts)
        values: dict[str, float | None] = {}
        stale: set[str] = set()
        for key, reading in zip(keys, readings, strict=True):
            values[key] = reading.value
            if reading.stale:
                stale.add(key)
            if reading.error is not None:
                self.stats.query_failures += 1
        return values, stale

    async def scrape_targets(self, namespace: str, axon: str) -> list[str]:
        """The base URLs of the Axon's model servers, from its deployment records."""
        prefix = kv_key("deploy", namespace, axon)
        urls: set[str] = set()
        for key in await self.bus.kv_keys(subjects.MODELS_BUCKET, f"{prefix}.>"):
            got = await self.bus.kv_get(subjects.MODELS_BUCKET, key)
            if got is None:
                continue
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                record = json.loads(got[0])
                for model in record.get("models") or []:
                    for backend in model.get("backends") or []:
                        url = backend.get("url")
                        if isinstance(url, str) and url.startswith(("http://", "https://")):
                            urls.add(url)
        return sorted(urls)

    def _once(self, key: str, event: str, exc: Exception) -> None:
        if key not in self._broken:
            self._broken.add(key)
            log.warning(event, key=key, error=str(exc))
