"""Shared inputs of the ops tests: the rule files, the dashboards' queries, and where they live."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
RULES = DASHBOARDS / "rules"
DASHBOARD_FILES = ("gateway.json", "distillation-health.json", "redistill.json")
ALERTS = ("StudentAgreementLow", "InputDriftHigh", "OutputDriftHigh", "ShadowQueueDropping",
          "StudentErrorRateHigh", "GatewayOverheadHigh", "RedistillJobFailed")


def load_script(name: str) -> ModuleType:
    """A dashboards/ script as a module (dashboards/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"distillgate_dashboards_{name}", DASHBOARDS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check_queries = load_script("check_queries")
PanelQuery = check_queries.PanelQuery
substitute = check_queries.substitute


def load_dashboard(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())


panels = check_queries.panels


def panel_queries() -> list[PanelQuery]:
    return check_queries.panel_queries(DASHBOARD_FILES, DASHBOARDS)


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

