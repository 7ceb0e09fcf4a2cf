"""The evaluator's Prometheus metrics (names from the team catalog), registered on an injected registry."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.writes = Counter("distillgate_store_writes_total", "Records written to the store (status=ok|error|dropped)",
                              ["status"], registry=registry)
        self.queue_depth = Gauge("distillgate_store_queue_depth", "Records waiting for the store's writer thread",
                                 registry=registry)


class EvaluatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.shadow_offered = Counter("distillgate_shadow_offered_total", "Served requests offered for shadowing",
                                      ["model"], registry=r)
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
        self.teacher_tokens = Counter("distillgate_teacher_tokens_total", "Teacher tokens spent (served + shadow)",
                                      ["model"], registry=r)
        self.teacher_spend = Counter("distillgate_teacher_spend_dollars_total", "Teacher spend in dollars",
                                     ["model"], registry=r)
        self.saved = Counter("distillgate_saved_dollars_total", "Dollars saved vs sending everything to the teacher",
                             ["model"], registry=r)
        self.feedback = Counter("distillgate_feedback_total", "Feedback records accepted", ["model"], registry=r)
