"""Code, rules and dashboards agree on metric names and labels.

The exported names are collected by instantiating every metrics class of gateway/metrics.py,
evaluator/metrics.py and redistill/metrics.py on a fresh CollectorRegistry; every `distillgate_*`
name in the rules and the dashboards must be one of them, and every recording-rule name used must be
defined in rules/recording.yaml.
"""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from .conftest import annotation_exprs, panel_queries, rules

METRICS_MODULES = ("gateway.metrics", "evaluator.metrics", "redistill.metrics")
ALLOWED_LABELS = {"model", "route", "version", "status", "slice"}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count", ""), "info": ("_info",)}
NAME = re.compile(r"\b(distillgate_[A-Za-z0-9_]*|[A-Za-z0-9_]+:[A-Za-z0-9_:]+)(?=\s*[{\[)\s]|$)")
SELECTOR = re.compile(r"\b(distillgate_[A-Za-z0-9_]+)\{([^}]*)\}")


@dataclass(frozen=True)
class Exported:
    family: str
    kind: str
    labels: tuple[str, ...]


def _metrics_classes(module) -> list[type]:
    return [cls for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__ and "registry" in inspect.signature(cls).parameters]


def _exported() -> dict[str, Exported]:
    """Sample name (e.g. distillgate_overhead_seconds_bucket) -> its family, from the real classes."""
    registry = CollectorRegistry()
    for name in METRICS_MODULES:
        module = importlib.import_module(name)
        classes = _metrics_classes(module)
        assert classes, f"{name} defines no metrics class taking a `registry`"
        for cls in classes:
            cls(registry=registry)
    out: dict[str, Exported] = {}
    for collector in list(registry._collector_to_names):  # every registered metric object
        if isinstance(collector, MetricWrapperBase):
            described = [(collector._name, collector._type, tuple(collector._labelnames))]
        else:  # a custom collector (gateway.metrics renders plain numbers at scrape time)
            described = [(m.name, m.type, tuple(m._labelnames)) for m in collector.describe()]
        for family, kind, labels in described:
            for suffix in SUFFIXES[kind]:
                out[family + suffix] = Exported(family, kind, labels)
    return out


EXPORTED = None


def exported() -> dict[str, Exported]:
    global EXPORTED
    if EXPORTED is None:
        EXPORTED = _exported()
    return EXPORTED


def _used_exprs() -> list[tuple[str, str]]:
    out = [(str(q), q.expr) for q in panel_queries()] + annotation_exprs()
    out += [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]
    return out


def _recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def test_metrics_classes_register_on_the_registry_passed_in() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    for name in METRICS_MODULES:
        for cls in _metrics_classes(importlib.import_module(name)):
            cls(registry=a)
            cls(registry=b)  # a second app in the same process must not collide
    assert set(a._names_to_collectors) == set(b._names_to_collectors)


def test_every_exported_metric_follows_the_naming_rules() -> None:
    bad = {}
    for sample, e in exported().items():
        if not e.family.startswith("distillgate_"):
            bad[sample] = "no distillgate_ prefix"
        elif set(e.labels) - ALLOWED_LABELS:
            bad[sample] = f"labels outside {sorted(ALLOWED_LABELS)}: {sorted(set(e.labels) - ALLOWED_LABELS)}"
    assert not bad, bad


def test_every_metric_name_in_rules_and_dashboards_is_exported_by_the_code() -> None:
    names = exported()
    recorded = _recorded()
    unknown: dict[str, list[str]] = {}
    for where, expr in _used_exprs():
        for name in NAME.findall(expr):
            known = name in recorded if ":" in name else name in names
            if not known:
                unknown.setdefault(name, []).append(where)
    assert not unknown, f"names used but not exported/recorded: {unknown}"


def test_selectors_only_filter_on_labels_the_metric_has() -> None:
    names = exported()
    wrong = []
    for where, expr in _used_exprs():
        for name, matchers in SELECTOR.findall(expr):
            e = names.get(name)
            if e is None:
                continue  # reported by the test above
            have = set(e.labels) | ({"le"} if name.endswith("_bucket") else set())
            for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
                if label not in have:
                    wrong.append(f"{where}: {name} has no label {label!r} (has {sorted(have)})")
    assert not wrong, "\n".join(wrong)


def test_every_used_recording_rule_is_defined_and_every_defined_one_is_used() -> None:
    recorded = _recorded()
    used = {n for _, e in _used_exprs() for n in NAME.findall(e) if ":" in n}
    assert used <= recorded, used - recorded
    assert recorded <= used, f"recording rules nobody reads: {recorded - used}"


def test_the_name_pattern_finds_what_it_should() -> None:
    """Guards the regex the two tests above rely on."""
    expr = 'sum by (model) (rate(distillgate_requests_total{status=~"5.."}[5m])) / model:distillgate_x:rate5m{a="b"}'
    assert NAME.findall(expr) == ["distillgate_requests_total", "model:distillgate_x:rate5m"]


# The team's metric catalog (the brief): exact names, kinds and label sets.
CATALOG: dict[str, tuple[str, tuple[str, ...]]] = {
    "distillgate_requests_total": ("counter", ("model", "route", "status")),
    "distillgate_request_duration_seconds_bucket": ("histogram", ("model", "route")),
    "distillgate_overhead_seconds_bucket": ("histogram", ("model", "route")),
    "distillgate_ttft_seconds_bucket": ("histogram", ("model", "route")),
    "distillgate_inter_token_seconds_bucket": ("histogram", ("model", "route")),
    "distillgate_prompt_tokens_total": ("counter", ("model", "route")),
    "distillgate_completion_tokens_total": ("counter", ("model", "route")),
    "distillgate_fallbacks_total": ("counter", ("model",)),
    "distillgate_retries_total": ("counter", ("model", "route")),
    "distillgate_escalations_total": ("counter", ("model",)),
    "distillgate_cascade_checks_total": ("counter", ("model",)),
    "distillgate_breaker_state": ("gauge", ("model", "route")),
    "distillgate_in_flight_requests": ("gauge", ("model",)),
    "distillgate_rate_limited_total": ("counter", ("model",)),
    "distillgate_shadow_offered_total": ("counter", ("model",)),
    "distillgate_shadow_sampled_total": ("counter", ("model",)),
    "distillgate_shadow_dropped_total": ("counter", ("model", "status")),
    "distillgate_shadow_queue_depth": ("gauge", ()),
    "distillgate_shadow_completed_total": ("counter", ("model", "status")),
    "distillgate_pairs_total": ("counter", ("model", "version", "slice", "status")),
    "distillgate_agreement_ratio": ("gauge", ("model", "version", "slice")),
    "distillgate_agreement_lower_bound_ratio": ("gauge", ("model", "version", "slice")),
    "distillgate_agreement_upper_bound_ratio": ("gauge", ("model", "version", "slice")),
    "distillgate_agreement_samples": ("gauge", ("model", "version", "slice")),
    "distillgate_input_drift_score": ("gauge", ("model",)),
    "distillgate_output_drift_score": ("gauge", ("model",)),
    "distillgate_input_drift_p_value": ("gauge", ("model",)),
    "distillgate_output_drift_p_value": ("gauge", ("model",)),
    "distillgate_drift_classifier_auc": ("gauge", ("model",)),
    "distillgate_teacher_tokens_total": ("counter", ("model",)),
    "distillgate_teacher_spend_dollars_total": ("counter", ("model",)),
    "distillgate_saved_dollars_total": ("counter", ("model",)),
    "distillgate_store_writes_total": ("counter", ("status",)),
    "distillgate_store_queue_depth": ("gauge", ()),
    "distillgate_feedback_total": ("counter", ("model",)),
    "distillgate_redistill_triggers_total": ("counter", ("model", "status")),
    "distillgate_redistill_jobs_total": ("counter", ("model", "status")),
    "distillgate_redistill_job_running": ("gauge", ("model",)),
    "distillgate_redistill_job_duration_seconds_bucket": ("histogram", ("model",)),
    "distillgate_gate_results_total": ("counter", ("model", "status")),
    "distillgate_model_version_info": ("gauge", ("model", "version", "status")),
    "distillgate_promotions_total": ("counter", ("model", "status")),
}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_code_exports_the_catalog(name: str) -> None:
    kind, labels = CATALOG[name]
    e = exported().get(name)
    assert e is not None, f"{name} is in the metric catalog but no metrics class exports it"
    assert e.kind == kind
    assert set(e.labels) == set(labels)
