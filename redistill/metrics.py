"""The redistill package's Prometheus metrics (names from the team's metric catalog)."""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

JOB_BUCKETS = (30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class RedistillMetrics:
    """Registered on the registry passed in, so two services (two apps in one process) never collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        self.triggers = Counter("distillgate_redistill_triggers_total", "Re-distillation triggers by outcome",
                                ["model", "status"], registry=reg)
        self.jobs = Counter("distillgate_redistill_jobs_total", "Re-distillation jobs by outcome",
                            ["model", "status"], registry=reg)
        self.job_running = Gauge("distillgate_redistill_job_running", "1 while a job runs for the model",
                                 ["model"], registry=reg)
        self.job_duration = Histogram("distillgate_redistill_job_duration_seconds", "Job wall time",
                                      ["model"], buckets=JOB_BUCKETS, registry=reg)
        self.gate_results = Counter("distillgate_gate_results_total", "Promotion gate verdicts",
                                    ["model", "status"], registry=reg)
        self.version_info = Gauge("distillgate_model_version_info", "1 for the live and canary versions",
                                  ["model", "version", "status"], registry=reg)
        self.promotions = Counter("distillgate_promotions_total", "Version stage changes",
                                  ["model", "status"], registry=reg)

    def set_versions(self, model: str, live: str | None, canary: str | None) -> None:
        """Exactly one series per active version: stale ones are removed, keeping cardinality bounded."""
        for labels in list(self._version_series()):
            if labels[0] == model:
                self.version_info.remove(*labels)
        self.version_info.labels(model, live or "base", "live").set(1)
        if canary:
            self.version_info.labels(model, canary, "canary").set(1)

    def _version_series(self) -> list[tuple[str, str, str]]:
        out = []
        for metric in self.version_info.collect():
            for sample in metric.samples:
                out.append((sample.labels["model"], sample.labels["version"], sample.labels["status"]))
        return out
