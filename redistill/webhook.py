"""Parsing Alertmanager webhook payloads (version 4) into re-distillation triggers."""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from redistill.records import Trigger


class WebhookError(ValueError):
    """The body is not an Alertmanager v4 webhook payload; the message says what is wrong."""


def parse_alertmanager(body: Any, alert_names: Collection[str], now: float) -> list[Trigger]:
    """One trigger per firing alert whose alertname is configured and that names a ``model``.

    Resolved alerts, other alert names and alerts without a model label are ignored, not errors:
    Alertmanager sends whole groups and re-sends them.
    """
    if not isinstance(body, Mapping):
        raise WebhookError("body must be a JSON object")
    version = body.get("version")
    if version is not None and str(version) != "4":
        raise WebhookError(f"unsupported webhook version {version!r} (expected '4')")
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise WebhookError("'alerts' must be a list")
    triggers: list[Trigger] = []
    seen: set[str] = set()
    for i, alert in enumerate(alerts):
        if not isinstance(alert, Mapping) or not isinstance(alert.get("labels"), Mapping):
            raise WebhookError(f"alerts[{i}] must be an object with 'labels'")
        if alert.get("status", body.get("status")) != "firing":
            continue
        labels = alert["labels"]
        name, model = labels.get("alertname"), labels.get("model")
        if name not in alert_names or not isinstance(model, str) or not model or model in seen:
            continue
        seen.add(model)
        annotations = alert.get("annotations") if isinstance(alert.get("annotations"), Mapping) else {}
        summary = annotations.get("summary") or annotations.get("description") or ""
        metrics = {}
        if "value" in annotations:
            try:
                metrics["value"] = float(annotations["value"])
            except (TypeError, ValueError):
                pass
        reason = f"{name}: {summary}".strip().rstrip(":")
        triggers.append(Trigger(source="alertmanager", model=model, reason=reason, metrics=metrics, created_at=now))
    return triggers
