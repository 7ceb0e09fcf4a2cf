"""The committed Grafana dashboards: fresh from the generator, well-formed, every query valid PromQL."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import DASHBOARD_FILES, DASHBOARDS, annotation_exprs, load_dashboard, panel_queries, panels, substitute

# Metrics with no `model` label: their panels cannot filter on the model variable.
UNLABELLED = ("distillgate_shadow_queue_depth", "distillgate_store_queue_depth")


def test_committed_json_equals_a_fresh_generation(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--out", str(tmp_path), "--no-chart"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in DASHBOARD_FILES:
        assert (tmp_path / name).read_text() == (DASHBOARDS / name).read_text(), f"{name} is stale: run `make dashboards`"
    check = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr


def test_check_mode_notices_a_hand_edit(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--out", str(tmp_path), "--no-chart"], check=True, capture_output=True, timeout=120)
    edited = tmp_path / "gateway.json"
    edited.write_text(edited.read_text().replace("Requests by route", "Requests by rout"))
    res = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--out", str(tmp_path), "--no-chart", "--check"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "gateway.json" in res.stderr


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_template_variables(name: str) -> None:
    d = load_dashboard(name)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["includeAll"] and model["multi"]
    assert model["datasource"]["uid"] == "${datasource}"
    assert "label_values(" in model["query"]["query"] and ", model)" in model["query"]["query"]
    assert d["schemaVersion"] >= 39 and d["uid"].startswith("distillgate-")


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_panels_have_units_refids_and_the_model_filter(name: str) -> None:
    ps = panels(load_dashboard(name))
    assert len(ps) >= 6
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids))
    for p in ps:
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']}: no unit"
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and all(refs) and len(refs) == len(set(refs)), f"{p['title']}: refIds {refs}"
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"]["uid"] == "${datasource}"
            if not any(m in t["expr"] for m in UNLABELLED):
                assert '$model"' in t["expr"], f"{p['title']} {t['refId']}: no model filter"


def test_dashboards_cover_what_operators_need() -> None:
    def used(name: str) -> str:
        return " ".join(q.expr for q in panel_queries() if q.dashboard == name)

    gateway = used("gateway.json")
    for metric in ("distillgate_requests", "overhead_seconds", "request_duration_seconds", "distillgate_ttft_seconds",
                   "distillgate_completion_tokens_total", "distillgate_fallbacks_total", "distillgate_breaker_state",
                   "distillgate_in_flight_requests"):
        assert metric in gateway, metric
    health = used("distillation-health.json")
    for metric in ("distillgate_agreement_ratio", "distillgate_agreement_lower_bound_ratio", "distillgate_agreement_upper_bound_ratio",
                   "distillgate_input_drift_score", "distillgate_output_drift_score", "distillgate_shadow_queue_depth",
                   "distillgate_shadow_dropped_total", "distillgate_shadow_sampled_total", "distillgate_teacher_spend_dollars_total",
                   "distillgate_saved_dollars_total", "escalations"):
        assert metric in health, metric
    redistill = used("redistill.json")
    for metric in ("distillgate_redistill_triggers_total", "distillgate_redistill_jobs_total", "distillgate_redistill_job_duration_seconds",
                   "distillgate_gate_results_total", "distillgate_model_version_info", "distillgate_promotions_total"):
        assert metric in redistill, metric
    names = {a.split(" / ")[1] for a, _ in annotation_exprs() if a.startswith("redistill.json")}
    assert names == {"annotation Promotions", "annotation Rollbacks"}


def test_every_query_is_valid_promql(tmp_path: Path, prometheus_bin: dict[str, str]) -> None:
    """promtool parses each query (variables expanded) as a recording rule: syntax and types are checked."""
    exprs = [(str(q), substitute(q.expr)) for q in panel_queries()] + [(n, substitute(e)) for n, e in annotation_exprs()]
    rules = [{"record": f"dashboard:query_{i}:check", "expr": e} for i, (_, e) in enumerate(exprs)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    res = subprocess.run([prometheus_bin["promtool"], "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr + "\n" + "\n".join(f"{i}: {n}" for i, (n, _) in enumerate(exprs))
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout
