"""The evaluator's Prometheus metrics (names from the team catalog), registered on an injected registry."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.writes = Counter("distillgate_store_writes_total", "Records written to the store (status=ok|error|dropped)",
                              ["status"], registry=registry)
        self.queue_depth = Gauge("distillgate_store_queue_depth", "Records waiting for the store's writer thread",
                                 registry=registry)


class ModelServed(NamedTuple):
    """Running totals per model, rendered at scrape (evaluator.spend.SpendTracker.totals)."""

    offered: int  # served requests, every one offered to the shadow sampler
    teacher_tokens: int  # served by the teacher + shadow teacher answers
    teacher_dollars: float
    saved_dollars: float


# name, help, field of ModelServed
_SERVED_FAMILIES = (
    ("distillgate_shadow_offered", "Served requests offered for shadowing", "offered"),
    ("distillgate_teacher_tokens", "Teacher tokens spent (served + shadow)", "teacher_tokens"),
    ("distillgate_teacher_spend_dollars", "Teacher spend in dollars", "teacher_dollars"),
    ("distillgate_saved_dollars", "Dollars saved vs sending everything to the teacher", "saved_dollars"),
)


class ServedCollector(Collector):
    """The per-request counters (offers, teacher tokens and spend, savings) as totals read at scrape, so the
    hot path bumps plain numbers (evaluator.served_tally) instead of four locked counters per request."""

    def __init__(self, totals: Callable[[], Mapping[str, ModelServed]]) -> None:
        self._totals = totals

    def _families(self, with_samples: bool) -> Iterator[Metric]:
        totals = self._totals() if with_samples else {}
        for name, doc, field in _SERVED_FAMILIES:
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, served in totals.items():
                family.add_metric([model], getattr(served, field))
            yield family

    def collect(self) -> Iterator[Metric]:
        return self._families(with_samples=True)

    def describe(self) -> Iterator[Metric]:
        return self._families(with_samples=False)


class EvaluatorMetrics:
    def __init__(self, registry: CollectorRegistry,
                 served_totals: Callable[[], Mapping[str, ModelServed]] | None = None) -> None:
        """`served_totals`: per-model offers and spend read at scrape (ServedCollector; none: no samples)."""
        r = registry
        r.register(ServedCollector(served_totals if served_totals is not None else dict))
        self.shadow_sampled = Counter("distillgate_shadow_sampled_total", "Offers the sampler accepted",
                                      ["model"], registry=r)
        self.shadow_dropped = Counter("distillgate_shadow_dropped_total",
                                      "Sampled offers not shadowed (status=queue_full|spend_cap|error|shutdown)",
                                      ["model", "status"], registry=r)
        self.shadow_queue_depth = Gauge("distillgate_shadow_queue_depth", "Shadow requests waiting for a worker",
                                        registry=r)
        self.shadow_completed = Counter("distillgate_shadow_completed_total", "Shadow calls finished (status=ok|error)",
                                        ["model", "status"], registry=r)
        self.pairs = Counter("distillgate_pairs_total", "Scored pairs (status=agree|disagree)",
                             ["model", "version", "slice", "status"], registry=r)
        labels = ["model", "version", "slice"]
        self.agreement_ratio = Gauge("distillgate_agreement_ratio", "Rolling agreement (exported once n >= min)",
                                     labels, registry=r)
        self.agreement_lower = Gauge("distillgate_agreement_lower_bound_ratio", "Wilson lower bound of agreement",
                                     labels, registry=r)
        self.agreement_upper = Gauge("distillgate_agreement_upper_bound_ratio", "Wilson upper bound of agreement",
                                     labels, registry=r)
        self.agreement_samples = Gauge("distillgate_agreement_samples", "Pairs in the rolling agreement window",
                                       labels, registry=r)
        self.input_drift = Gauge("distillgate_input_drift_score", "Input drift (max PSI over features; 0 = none)",
                                 ["model"], registry=r)
        self.output_drift = Gauge("distillgate_output_drift_score", "Output drift (max PSI over features; 0 = none)",
                                  ["model"], registry=r)
        self.input_drift_p = Gauge("distillgate_input_drift_p_value", "Smallest Bonferroni-adjusted KS p-value, inputs",
                                   ["model"], registry=r)
        self.output_drift_p = Gauge("distillgate_output_drift_p_value", "Smallest adjusted test p-value, outputs",
                                    ["model"], registry=r)
        self.drift_auc = Gauge("distillgate_drift_classifier_auc", "Reference-vs-current classifier AUC (0.5 = none)",
                               ["model"], registry=r)
        self.feedback = Counter("distillgate_feedback_total", "Feedback records accepted", ["model"], registry=r)
