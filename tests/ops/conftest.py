"""Shared inputs of the ops tests: the rule files, the dashboards' queries, and where they live."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
RULES = DASHBOARDS / "rules"
DASHBOARD_FILES = ("gateway.json", "distillation-health.json", "redistill.json")
ALERTS = ("StudentAgreementLow", "InputDriftHigh", "OutputDriftHigh", "ShadowQueueDropping",
          "StudentErrorRateHigh", "GatewayOverheadHigh", "RedistillJobFailed")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def load_dashboard(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    out = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def panel_queries() -> list[PanelQuery]:
    out = []
    for name in DASHBOARD_FILES:
        for p in panels(load_dashboard(name)):
            for t in p.get("targets", []):
                out.append(PanelQuery(name, p["title"], t.get("refId", ""), t.get("expr", ""), bool(t.get("instant"))))
    return out


def annotation_exprs() -> list[tuple[str, str]]:
    out = []
    for name in DASHBOARD_FILES:
        for a in load_dashboard(name).get("annotations", {}).get("list", []):
            if a.get("expr"):
                out.append((f"{name} / annotation {a['name']}", a["expr"]))
    return out


def rule_docs() -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(RULES.glob("*.yaml"))}


def rules() -> list[dict[str, Any]]:
    return [r for doc in rule_docs().values() for g in doc["groups"] for r in g["rules"]]


@pytest.fixture(scope="session")
def all_panel_queries() -> list[PanelQuery]:
    return panel_queries()


def substitute(expr: str, *, model: str = ".*", rate_interval: str = "1m", range_: str = "10m") -> str:
    """Expand the Grafana template variables our dashboards use, as Grafana would before querying."""
    for var, value in (("$__rate_interval", rate_interval), ("$__range", range_), ("$__interval", rate_interval),
                       ("${model}", model), ("$model", model)):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unexpanded template variable in {expr!r}"
    return expr
