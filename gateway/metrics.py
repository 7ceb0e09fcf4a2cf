"""The gateway's Prometheus metrics (names and labels from the team's metric catalog).

The hot path updates plain Python numbers and prometheus-client renders them at scrape time through a
collector (`GatewayCollector`) registered on the CollectorRegistry passed in, so two apps in one process
never collide. Why not prometheus-client's Counter/Histogram children: each `inc`/`observe` takes a
mutex and a histogram walks its buckets in Python, ~10 calls per request that together cost more than
the rest of routing (bench/gateway_overhead.py). Every update here happens on the event-loop thread,
which also serves /metrics, so no lock is needed; code running in other threads must not touch these.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class Count:
    """A monotonically increasing number (a counter child)."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Level:
    """A number that goes up and down (a gauge child)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Distribution:
    """A histogram child: per-bucket counts (not cumulative; summed at scrape) and the sum."""

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # Prometheus buckets are `le`: bisect_left puts a value equal to a bound into that bound's bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    """One metric name and its children by label values."""

    __slots__ = ("name", "doc", "labels", "kind", "bounds", "children")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], kind: str, bounds: tuple[float, ...] = ()) -> None:
        self.name, self.doc, self.labels, self.kind, self.bounds = name, doc, labels, kind, bounds
        self.children: dict[tuple[str, ...], Count | Level | Distribution] = {}

    def child(self, *values: str):  # noqa: ANN201 - Count | Level | Distribution, by kind
        found = self.children.get(values)
        if found is None:
            if self.kind == "counter":
                found = Count()
            elif self.kind == "gauge":
                found = Level()
            else:
                found = Distribution(self.bounds)
            self.children[values] = found
        return found

    def render(self, with_samples: bool = True) -> Metric:
        children = list(self.children.items()) if with_samples else []
        if self.kind == "counter":
            # prometheus-client appends _total itself; the catalog's names already end in it.
            family = CounterMetricFamily(self.name.removesuffix("_total"), self.doc, labels=self.labels)
            for values, c in children:
                family.add_metric(values, c.value, created=c.created)
        elif self.kind == "gauge":
            family = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
            for values, g in children:
                family.add_metric(values, g.value)
        else:
            family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
            les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
            for values, h in children:
                running, buckets = 0, []
                for le, n in zip(les, h.counts):
                    running += n
                    buckets.append((le, running))
                family.add_metric(values, buckets, h.sum)
        return family


class GatewayCollector(Collector):
    def __init__(self, families: list[_Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.render()

    def describe(self) -> Iterator[Metric]:
        """Names, types and label names without samples (the registry's duplicate check, catalog tests)."""
        for family in self._families:
            yield family.render(with_samples=False)


class RouteSeries:
    """The per-(model, route) children the hot path touches on every request."""

    __slots__ = ("duration", "overhead", "ttft", "inter_token", "prompt_tokens", "completion_tokens", "retries", "ok")

    def __init__(self, duration: Distribution, overhead: Distribution, ttft: Distribution, inter_token: Distribution,
                 prompt_tokens: Count, completion_tokens: Count, retries: Count, ok: Count) -> None:
        self.duration, self.overhead, self.ttft, self.inter_token = duration, overhead, ttft, inter_token
        self.prompt_tokens, self.completion_tokens, self.retries = prompt_tokens, completion_tokens, retries
        self.ok = ok  # requests{status="200"}

    def answered(self, total_s: float, overhead_s: float, prompt_tokens: int, completion_tokens: int) -> None:
        """One request answered (200): duration, overhead, the request count and tokens in one call, since
        every request makes it (the same updates as the children's own methods, without five calls)."""
        d = self.duration
        d.counts[bisect_left(d.bounds, total_s)] += 1
        d.sum += total_s
        o = self.overhead
        o.counts[bisect_left(o.bounds, overhead_s)] += 1
        o.sum += overhead_s
        self.ok.value += 1
        if prompt_tokens:
            self.prompt_tokens.value += prompt_tokens
        if completion_tokens:
            self.completion_tokens.value += completion_tokens


class ModelSeries:
    """The per-model children (fallbacks, cascade, rate limits, in-flight)."""

    __slots__ = ("fallbacks", "escalations", "cascade_checks", "rate_limited", "in_flight")

    def __init__(self, fallbacks: Count, escalations: Count, cascade_checks: Count, rate_limited: Count,
                 in_flight: Level) -> None:
        self.fallbacks, self.escalations, self.cascade_checks = fallbacks, escalations, cascade_checks
        self.rate_limited, self.in_flight = rate_limited, in_flight


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        self.registry = reg
        mr, m = ("model", "route"), ("model",)
        self.requests = _Family("distillgate_requests_total", "Requests answered", ("model", "route", "status"), "counter")
        self.duration = _Family("distillgate_request_duration_seconds", "End-to-end request duration", mr, "histogram", _LATENCY_BUCKETS)
        self.overhead = _Family("distillgate_overhead_seconds", "Gateway time: total minus upstream time", mr, "histogram", _OVERHEAD_BUCKETS)
        self.ttft = _Family("distillgate_ttft_seconds", "Streams: time to first token", mr, "histogram", _LATENCY_BUCKETS)
        self.inter_token = _Family("distillgate_inter_token_seconds", "Streams: time between chunks", mr, "histogram", _TOKEN_GAP_BUCKETS)
        self.prompt_tokens = _Family("distillgate_prompt_tokens_total", "Prompt tokens", mr, "counter")
        self.completion_tokens = _Family("distillgate_completion_tokens_total", "Completion tokens", mr, "counter")
        self.fallbacks = _Family("distillgate_fallbacks_total", "Requests answered by the other side after the routed side failed", m, "counter")
        self.retries = _Family("distillgate_retries_total", "Upstream retries", mr, "counter")
        self.escalations = _Family("distillgate_escalations_total", "Cascade escalations to the teacher", m, "counter")
        self.cascade_checks = _Family("distillgate_cascade_checks_total", "Cascade decisions made", m, "counter")
        self.breaker_state = _Family("distillgate_breaker_state", "Circuit breaker: 0=closed 1=half-open 2=open", mr, "gauge")
        self.in_flight = _Family("distillgate_in_flight_requests", "Requests in flight", m, "gauge")
        self.rate_limited = _Family("distillgate_rate_limited_total", "Requests refused by rate limits", m, "counter")
        reg.register(GatewayCollector([
            self.requests, self.duration, self.overhead, self.ttft, self.inter_token, self.prompt_tokens,
            self.completion_tokens, self.fallbacks, self.retries, self.escalations, self.cascade_checks,
            self.breaker_state, self.in_flight, self.rate_limited,
        ]))
        self._series: dict[tuple[str, str], RouteSeries] = {}
        self._models: dict[str, ModelSeries] = {}
        self._requests: dict[tuple[str, str, int], Count] = {}

    def series(self, model: str, route: str) -> RouteSeries:
        s = self._series.get((model, route))
        if s is None:
            s = self._series[(model, route)] = RouteSeries(
                self.duration.child(model, route), self.overhead.child(model, route), self.ttft.child(model, route),
                self.inter_token.child(model, route), self.prompt_tokens.child(model, route),
                self.completion_tokens.child(model, route), self.retries.child(model, route),
                self._request_count(model, route, 200),
            )
        return s

    def model(self, model: str) -> ModelSeries:
        s = self._models.get(model)
        if s is None:
            s = self._models[model] = ModelSeries(
                self.fallbacks.child(model), self.escalations.child(model), self.cascade_checks.child(model),
                self.rate_limited.child(model), self.in_flight.child(model),
            )
        return s

    def count_request(self, model: str, route: str, status: int) -> None:
        self._request_count(model, route, status).value += 1

    def _request_count(self, model: str, route: str, status: int) -> Count:
        key = (model, route, status)
        c = self._requests.get(key)
        if c is None:
            c = self._requests[key] = self.requests.child(model, route, str(status))
        return c

    def set_breaker_state(self, model: str, route: str, state: str) -> None:
        self.breaker_state.child(model, route).set(BREAKER_STATE_VALUE[state])
