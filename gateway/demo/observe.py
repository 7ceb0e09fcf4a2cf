"""What the demo shows while it runs: gauges from the gateway's /metrics, firing alerts from
Prometheus, and model versions from the gateway's control API."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    agreement: dict[tuple[str, str], float]  # (version, slice) -> ratio
    agreement_lower: dict[tuple[str, str], float]
    input_drift: float | None
    counters: dict[str, float]  # selected counters summed over labels
    alerts: tuple[str, ...]  # firing alert names (Prometheus), or () without Prometheus
    live_version: str | None  # None: the base student
    versions: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    versions_available: bool = False  # the control API answered
    agreement_upper: dict[tuple[str, str], float] = field(default_factory=dict)

    def overall_key(self) -> tuple[str, str] | None:
        """The (version, slice) series overall_agreement() reads, or None without any."""
        key = (self.live_version or "base", "all")
        if key in self.agreement:
            return key
        return min(self.agreement, key=lambda k: self.agreement[k]) if self.agreement else None

    def overall_agreement(self) -> float | None:
        """Agreement of the serving version over all slices (the lowest series when that one is absent)."""
        key = self.overall_key()
        return None if key is None else self.agreement[key]


COUNTERS = (
    "distillgate_requests_total", "distillgate_shadow_completed_total", "distillgate_pairs_total",
    "distillgate_redistill_triggers_total", "distillgate_redistill_jobs_total", "distillgate_promotions_total",
    "distillgate_teacher_spend_dollars_total", "distillgate_saved_dollars_total",
)
# Histogram parts kept as counters under their sample name (summed over labels).
HISTOGRAM_PARTS = ("distillgate_redistill_job_duration_seconds_sum", "distillgate_redistill_job_duration_seconds_count")


def parse_gateway_metrics(text: str, model: str) -> dict[str, Any]:
    agreement: dict[tuple[str, str], float] = {}
    lower: dict[tuple[str, str], float] = {}
    upper: dict[tuple[str, str], float] = {}
    counters: dict[str, float] = {}
    drift = None
    live = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model", model) != model:
                continue
            name = sample.name
            if name == "distillgate_agreement_ratio":
                agreement[(labels.get("version", ""), labels.get("slice", ""))] = sample.value
            elif name == "distillgate_agreement_lower_bound_ratio":
                lower[(labels.get("version", ""), labels.get("slice", ""))] = sample.value
            elif name == "distillgate_agreement_upper_bound_ratio":
                upper[(labels.get("version", ""), labels.get("slice", ""))] = sample.value
            elif name in HISTOGRAM_PARTS:
                counters[name] = counters.get(name, 0.0) + sample.value
            elif name == "distillgate_input_drift_score":
                drift = sample.value
            elif name == "distillgate_model_version_info" and labels.get("status") == "live" and sample.value:
                live = labels.get("version")
            else:
                base = name.removesuffix("_total") + "_total" if name.endswith("_total") else None
                if base in COUNTERS:
                    key = base + (f"{{status={labels['status']}}}" if "status" in labels and base != COUNTERS[0] else "")
                    counters[key] = counters.get(key, 0.0) + sample.value
    return {"agreement": agreement, "lower": lower, "upper": upper, "drift": drift, "counters": counters, "live": live}


class Observer:
    """Polls the gateway (and Prometheus when there is one) for a Snapshot."""

    def __init__(self, gateway_url: str, api_key: str, model: str, prometheus_url: str | None = None) -> None:
        self.gateway_url = gateway_url
        self.prometheus_url = prometheus_url
        self.model = model
        self.client = httpx.AsyncClient(timeout=5, headers={"authorization": f"Bearer {api_key}"})
        self.history: list[Snapshot] = []

    async def close(self) -> None:
        await self.client.aclose()

    async def firing_alerts(self) -> tuple[str, ...]:
        if not self.prometheus_url:
            return ()
        try:
            resp = await self.client.get(f"{self.prometheus_url}/api/v1/alerts")
            alerts = resp.json()["data"]["alerts"]
        except (httpx.HTTPError, ValueError, KeyError):
            return ()
        return tuple(sorted({a["labels"]["alertname"] for a in alerts if a.get("state") == "firing"}))

    async def versions(self) -> tuple[bool, str | None, tuple[dict[str, Any], ...]]:
        """(control API answered, live version id or None, every version)."""
        try:
            resp = await self.client.get(f"{self.gateway_url}/v1/distillgate/versions", params={"model": self.model})
        except httpx.HTTPError:
            return False, None, ()
        if resp.status_code != 200:
            return False, None, ()
        body = resp.json()
        live = ((body.get("active") or {}).get("live") or {}).get("id")
        return True, live, tuple(body.get("versions") or ())

    async def snapshot(self) -> Snapshot:
        try:
            text = (await self.client.get(f"{self.gateway_url}/metrics")).text
        except httpx.HTTPError:
            text = ""
        parsed = parse_gateway_metrics(text, self.model)
        available, live, versions = await self.versions()
        live = live or parsed["live"]
        snap = Snapshot(
            at=time.time(), agreement=parsed["agreement"], agreement_lower=parsed["lower"],
            input_drift=parsed["drift"], counters=parsed["counters"], alerts=await self.firing_alerts(),
            live_version=live, versions=versions, versions_available=available, agreement_upper=parsed["upper"],
        )
        self.history.append(snap)
        return snap
