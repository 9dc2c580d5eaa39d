"""Prometheus metrics, one registry per app so several apps (tests) can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "currencyex_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "currencyex_http_request_duration_seconds",
            "HTTP request latency by route template and method",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.rate_limited = Counter(
            "currencyex_rate_limit_rejections_total",
            "Requests refused by a rate limit, by limit name",
            ["limit"],
            registry=self.registry,
        )
        self.rate_limit_store_errors = Counter(
            "currencyex_rate_limit_store_errors_total",
            "Rate-limit checks that could not reach the store, by limit name and outcome",
            ["limit", "outcome"],
            registry=self.registry,
        )

        self.ws_connections = Gauge(
            "currencyex_ws_connections",
            "Live WebSocket connections of this process",
            registry=self.registry,
        )
        self.ws_disconnects = Counter(
            "currencyex_ws_disconnects_total",
            "WebSocket connections ended, by reason (client gone, too slow, no pong, ...)",
            ["reason"],
            registry=self.registry,
        )

    def count_ws_disconnect(self, reason: str) -> None:
        self.ws_disconnects.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
