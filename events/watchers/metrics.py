"""The I/O half of the metric watcher: read model servers' `/metrics` and ask Prometheus.

Deciding what to read and what a value means is the sensors layer's job (`sensors.watcher`
and the pure `sensors.promql`); this module only talks to the outside world, so it imports
nothing of ours beyond `events`. Both readers answer with a `Reading` instead of raising: a
target or a Prometheus that is down is a normal state of the world, and its value is then
*unknown* (stale), never zero, so nothing fires on missing data.

An outage is logged once, as a warning when it starts and as info when it ends, not once per
failed scrape: a watcher polling every few seconds would otherwise bury every other log line.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT: Final = 5.0
MAX_BODY: Final = 16 * 1024 * 1024
"""A scrape body larger than this is refused (a server exposing unbounded label values)."""

__all__ = [
    "DEFAULT_TIMEOUT",
    "Outages",
    "PrometheusReader",
    "Reading",
    "Sample",
    "Scraper",
    "instance_of",
    "parse_exposition",
]


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample of a scraped exposition: metric name, labels, value, optional timestamp."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """What a read gave: the samples or the value, or nothing and whether the source was down."""

    samples: list[Sample] = field(default_factory=list)
    value: float | None = None
    stale: bool = False
    error: str | None = None


class Outages:
    """Which sources are down: a warning when one goes down, info when it comes back."""

    def __init__(self, kind: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self.clock = clock
        self._down: dict[str, float] = {}
        self.failures = 0
        self.outages = 0

    def is_down(self, target: str) -> bool:
        """True while `target`'s last read failed."""
        return target in self._down

    def failed(self, target: str, error: str) -> None:
        """Record a failed read; logs only the first failure of an outage."""
        self.failures += 1
        if target in self._down:
            return
        self._down[target] = self.clock()
        self.outages += 1
        log.warning(f"{self.kind}.down", target=target, error=error)

    def succeeded(self, target: str) -> None:
        """Record a good read; logs the end of an outage."""
        since = self._down.pop(target, None)
        if since is not None:
            log.info(f"{self.kind}.recovered", target=target, down_s=round(self.clock() - since, 3))

    def forget(self, target: str) -> None:
        """Stop tracking `target` (it is no longer read), without logging a recovery."""
        self._down.pop(target, None)


def parse_exposition(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition (prometheus_client's parser).

    Every sample is kept, `_created` ones included, as Prometheus 2 ingests the text format;
    timestamps are in seconds (the parser converts the format's milliseconds).
    """
    return [
        Sample(
            sample.name,
            dict(sample.labels),
            float(sample.value),
            None if sample.timestamp is None else float(sample.timestamp),
        )
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def instance_of(url: str) -> str:
    """Prometheus' `instance` label for a target URL: `host:port`."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def metrics_url(url: str) -> str:
    """The `/metrics` URL of a model server whose base URL is `url`."""
    return url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"


class Scraper:
    """Reads targets' `/metrics` over HTTP with a timeout; tracks each target's outages."""

    def __init__(
        self, *, timeout: float = DEFAULT_TIMEOUT, client: httpx.AsyncClient | None = None
    ) -> None:
        self.timeout = timeout
        self._client = client or httpx.AsyncClient(timeout=timeout, trust_env=False)
        self._owned = client is None
        self.outages = Outages("scrape")
        self.scrapes = 0

    async def scrape(self, url: str) -> Reading:
        """Scrape `url` (a model server base URL or its /metrics URL)."""
        target = metrics_url(url)
        self.scrapes += 1
        try:
            response = await self._client.get(
                target, timeout=self.timeout, headers={"Accept": "text/plain;version=0.0.4"}
            )
            if response.status_code != 200:
                raise _ReadFailed(f"HTTP {response.status_code}")
            if len(response.content) > MAX_BODY:
                raise _ReadFailed(f"body over {MAX_BODY} bytes")
            samples = parse_exposition(response.text)
        except (httpx.HTTPError, _ReadFailed, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            self.outages.failed(target, error)
            return Reading(stale=True, error=error)
        self.outages.succeeded(target)
        return Reading(samples=samples)

    async def aclose(self) -> None:
        """Close the HTTP client (if this scraper made it)."""
        if self._owned:
            await self._client.aclose()


class _ReadFailed(Exception):
    """A response that is not a usable exposition or query answer."""


def _value_of(result: Any) -> float | None:
    """A number from Prometheus' `result`: a scalar, or a vector of exactly one series."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        raw = result[1]  # resultType scalar: [time, "value"]
    elif isinstance(result, list) and all(isinstance(r, dict) for r in result):
        if len(result) != 1:
            return None  # no series, or several: a threshold needs one value
        raw = result[0].get("value", [None, None])[1]
    else:
        raise _ReadFailed(f"unexpected query result {str(result)[:80]!r}")
    if raw is None:
        return None
    value = float(raw)
    return None if math.isnan(value) else value


class PrometheusReader:
    """Runs instant queries against one Prometheus through prometheus-api-client."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        # Imported here: prometheus-api-client pulls in requests, needed only with this source.
        from prometheus_api_client.prometheus_connect import PrometheusConnect
        from urllib3.util.retry import Retry

        self.url = url.rstrip("/")
        self.timeout = timeout
        # No retries inside the client: the watcher asks again next interval anyway, and an
        # outage must show up as one failed read, not as a read that hangs for its retries.
        self._client = PrometheusConnect(
            url=self.url,
            retry=Retry(total=0),
            timeout=cast(int, timeout),  # requests takes float seconds; the annotation says int
        )
        self.outages = Outages("prometheus")
        self._refused: set[str] = set()
        self.queries = 0

    async def query(self, promql: str) -> Reading:
        """The value of an instant query now; unknown when Prometheus is down or has no answer."""
        from prometheus_api_client.exceptions import PrometheusApiClientException
        from requests import RequestException

        self.queries += 1
        try:
            result = await asyncio.to_thread(self._client.custom_query, promql)
        except PrometheusApiClientException as exc:
            error = str(exc)
            if "Status Code 4" in error:  # the query itself is refused: say so once per query
                self.outages.succeeded(self.url)
                if promql not in self._refused:
                    self._refused.add(promql)
                    log.warning("prometheus.query_refused", query=promql, error=error[:300])
                return Reading(error=error)
            self.outages.failed(self.url, error[:300])
            return Reading(stale=True, error=error)
        except (RequestException, ValueError, KeyError) as exc:
            error = str(exc) or type(exc).__name__
            self.outages.failed(self.url, error[:300])
            return Reading(stale=True, error=error)
        self.outages.succeeded(self.url)
        try:
            return Reading(value=_value_of(result))
        except (_ReadFailed, ValueError, TypeError) as exc:
            return Reading(error=str(exc))

    def close(self) -> None:
        """Release the client's connection pool."""
        self._client.close()
