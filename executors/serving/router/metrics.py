"""The router's Prometheus metrics, in a registry of its own (`GET /metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class RouterMetrics:
    """The router's Prometheus metrics, in its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "ranvier_router_requests",
            "Requests answered by the router.",
            ["axon", "route", "code"],
            registry=registry,
        )
        self.backend = Counter(
            "ranvier_router_backend_requests",
            "Calls to model servers, by the version that answered.",
            ["axon", "model", "backend", "version", "code"],
            registry=registry,
        )
        self.shadow = Counter(
            "ranvier_router_shadow_requests",
            "Mirrored calls to shadows, by outcome (ok, http_error, error, dropped).",
            ["axon", "model", "backend", "version", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "ranvier_router_request_seconds",
            "Time to answer a routed request.",
            ["axon"],
            registry=registry,
        )
        self.swaps = Counter(
            "ranvier_router_table_swaps", "Routing tables swapped in.", registry=registry
        )
