"""The gateway's Prometheus metrics (names and labels from the team's metric catalog).

Registered on the CollectorRegistry passed in, so two apps in one process never collide. Label children
are cached per (model, route) because `.labels()` takes a lock and builds a tuple on every call.
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(slots=True)
class RouteSeries:
    """The per-(model, route) children the hot path touches on every request."""

    duration: object
    overhead: object
    ttft: object
    inter_token: object
    prompt_tokens: object
    completion_tokens: object
    retries: object


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        self.registry = reg
        self.requests = Counter("distillgate_requests_total", "Requests answered", ["model", "route", "status"], registry=reg)
        self.duration = Histogram("distillgate_request_duration_seconds", "End-to-end request duration", ["model", "route"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.overhead = Histogram("distillgate_overhead_seconds", "Gateway time: total minus upstream time", ["model", "route"], buckets=_OVERHEAD_BUCKETS, registry=reg)
        self.ttft = Histogram("distillgate_ttft_seconds", "Streams: time to first token", ["model", "route"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.inter_token = Histogram("distillgate_inter_token_seconds", "Streams: time between chunks", ["model", "route"], buckets=_TOKEN_GAP_BUCKETS, registry=reg)
        self.prompt_tokens = Counter("distillgate_prompt_tokens_total", "Prompt tokens", ["model", "route"], registry=reg)
        self.completion_tokens = Counter("distillgate_completion_tokens_total", "Completion tokens", ["model", "route"], registry=reg)
        self.fallbacks = Counter("distillgate_fallbacks_total", "Requests answered by the other side after the routed side failed", ["model"], registry=reg)
        self.retries = Counter("distillgate_retries_total", "Upstream retries", ["model", "route"], registry=reg)
        self.escalations = Counter("distillgate_escalations_total", "Cascade escalations to the teacher", ["model"], registry=reg)
        self.cascade_checks = Counter("distillgate_cascade_checks_total", "Cascade decisions made", ["model"], registry=reg)
        self.breaker_state = Gauge("distillgate_breaker_state", "Circuit breaker: 0=closed 1=half-open 2=open", ["model", "route"], registry=reg)
        self.in_flight = Gauge("distillgate_in_flight_requests", "Requests in flight", ["model"], registry=reg)
        self.rate_limited = Counter("distillgate_rate_limited_total", "Requests refused by rate limits", ["model"], registry=reg)
        self._series: dict[tuple[str, str], RouteSeries] = {}
        self._requests: dict[tuple[str, str, int], object] = {}
        self._in_flight: dict[str, object] = {}

    def series(self, model: str, route: str) -> RouteSeries:
        s = self._series.get((model, route))
        if s is None:
            s = RouteSeries(
                self.duration.labels(model, route),
                self.overhead.labels(model, route),
                self.ttft.labels(model, route),
                self.inter_token.labels(model, route),
                self.prompt_tokens.labels(model, route),
                self.completion_tokens.labels(model, route),
                self.retries.labels(model, route),
            )
            self._series[(model, route)] = s
        return s

    def count_request(self, model: str, route: str, status: int) -> None:
        key = (model, route, status)
        c = self._requests.get(key)
        if c is None:
            c = self._requests[key] = self.requests.labels(model, route, str(status))
        c.inc()

    def in_flight_for(self, model: str):
        g = self._in_flight.get(model)
        if g is None:
            g = self._in_flight[model] = self.in_flight.labels(model)
        return g

    def set_breaker_state(self, model: str, route: str, state: str) -> None:
        self.breaker_state.labels(model, route).set(BREAKER_STATE_VALUE[state])
