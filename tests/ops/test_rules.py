"""Prometheus rules and the example Prometheus/Alertmanager configs, checked by the real promtool/amtool."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ALERTS, DASHBOARDS, RULES, rules

PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool" / "alerts_test.yaml"
RENDER = DASHBOARDS / "render_rules.py"


def _run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(prometheus_bin: dict[str, str]) -> None:
    res = _run(prometheus_bin["promtool"], "check", "rules", str(RULES / "recording.yaml"), str(RULES / "alerts.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 7 rules found" in res.stdout


def test_promtool_unit_tests_pass(prometheus_bin: dict[str, str]) -> None:
    res = _run(prometheus_bin["promtool"], "test", "rules", PROMTOOL_TESTS.name, cwd=PROMTOOL_TESTS.parent)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    doc = yaml.safe_load(PROMTOOL_TESTS.read_text())
    fires: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires >= set(ALERTS), f"alerts never shown firing: {set(ALERTS) - fires}"
    assert silent >= set(ALERTS), f"alerts never shown silent: {set(ALERTS) - silent}"


def test_alerts_carry_model_severity_and_a_runbook_anchor() -> None:
    runbook = (DASHBOARDS / "RUNBOOK.md").read_text()
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-")) for h in re.findall(r"^## (.+)$", runbook, re.M)}
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert set(alerts) == set(ALERTS)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert "for" in rule, f"{name}: no `for:`"
        # The webhook keys re-distillation on `model`: the expression must keep that label.
        assert re.search(r"by \([^)]*\bmodel\b", rule["expr"]), f"{name}: expression does not keep `model`"
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[1] in anchors, f"{name}: runbook anchor {url} missing from RUNBOOK.md"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_retraining_alerts_are_the_gateway_trigger_defaults() -> None:
    from redistill.settings import TriggerSettings

    assert set(TriggerSettings().alert_names) <= set(ALERTS)


def _render(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, str(RENDER), str(tmp_path), *args)


def test_render_rules_writes_short_durations_and_thresholds(tmp_path: Path, prometheus_bin: dict[str, str]) -> None:
    res = _render(tmp_path, "--for", "0s", "--for-alert", "InputDriftHigh=5s", "--interval", "1s",
                  "--rate-window", "30s", "--threshold", "StudentAgreementLow=0.9",
                  "--runbook-base", "https://runbooks.example/distillgate")
    assert res.returncode == 0, res.stderr
    check = _run(prometheus_bin["promtool"], "check", "rules", *(str(p) for p in sorted(tmp_path.glob("*.yaml"))))
    assert check.returncode == 0, check.stdout + check.stderr
    rendered = {r.get("alert") or r["record"]: r
                for f in ("recording.yaml", "alerts.yaml")
                for g in yaml.safe_load((tmp_path / f).read_text())["groups"] for r in g["rules"]}
    assert rendered["StudentAgreementLow"]["for"] == "0s"
    assert rendered["InputDriftHigh"]["for"] == "5s"
    assert rendered["StudentAgreementLow"]["expr"].rstrip().endswith("< 0.9")
    assert "[30s]" in rendered["model:distillgate_requests:rate5m"]["expr"]
    assert rendered["GatewayOverheadHigh"]["annotations"]["runbook_url"] == "https://runbooks.example/distillgate#gatewayoverheadhigh"
    groups = [g for f in ("recording.yaml", "alerts.yaml") for g in yaml.safe_load((tmp_path / f).read_text())["groups"]]
    assert all(g["interval"] == "1s" for g in groups)
    # The source files are untouched.
    assert {r["alert"]: r["for"] for r in rules() if "alert" in r}["StudentAgreementLow"] == "15m"


@pytest.mark.parametrize("args,message", [
    (("--threshold", "NoSuchAlert=1"), "unknown alert"),
    (("--for", "soon"), "not a Prometheus duration"),
    (("--threshold", "StudentAgreementLow=high"), "--threshold"),
])
def test_render_rules_rejects_bad_overrides(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    res = _render(tmp_path, *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert not list(tmp_path.glob("*.yaml"))


def test_unit_tests_catch_a_wrong_threshold(tmp_path: Path, prometheus_bin: dict[str, str]) -> None:
    """The promtool tests are not vacuous: with the agreement threshold moved to 0.5 they fail."""
    rendered = tmp_path / "rules"
    assert _render(rendered, "--threshold", "StudentAgreementLow=0.5").returncode == 0
    doc = yaml.safe_load(PROMTOOL_TESTS.read_text())
    doc["rule_files"] = [str(rendered / "recording.yaml"), str(rendered / "alerts.yaml")]
    mutated = tmp_path / "alerts_test.yaml"
    mutated.write_text(yaml.safe_dump(doc))
    res = _run(prometheus_bin["promtool"], "test", "rules", str(mutated))
    assert res.returncode != 0
    assert "StudentAgreementLow" in res.stdout + res.stderr


def test_example_prometheus_config_is_valid(prometheus_bin: dict[str, str]) -> None:
    res = _run(prometheus_bin["promtool"], "check", "config", "prometheus.example.yml", cwd=DASHBOARDS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 rule files found" in res.stdout


def _amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.fail("amtool not found (scripts/sysdeps.sh installs prometheus-alertmanager)")
    return path


def test_example_alertmanager_config_is_valid() -> None:
    res = _run(_amtool(), "check-config", str(DASHBOARDS / "alertmanager.example.yml"))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("alert,receivers", [
    ("StudentAgreementLow", "distillgate-redistill,default"),
    ("InputDriftHigh", "distillgate-redistill,default"),
    ("OutputDriftHigh", "distillgate-redistill,default"),
    ("ShadowQueueDropping", "default"),
    ("StudentErrorRateHigh", "default"),
    ("GatewayOverheadHigh", "default"),
    ("RedistillJobFailed", "default"),
])
def test_alertmanager_routes_retraining_alerts_to_the_gateway(alert: str, receivers: str) -> None:
    res = _run(_amtool(), "config", "routes", "test", "--config.file", str(DASHBOARDS / "alertmanager.example.yml"),
               f"--verify.receivers={receivers}", f"alertname={alert}", "model=support-intent")
    assert res.returncode == 0, res.stdout + res.stderr


def test_webhook_receiver_posts_to_the_gateway_with_a_bearer_token_file() -> None:
    cfg = yaml.safe_load((DASHBOARDS / "alertmanager.example.yml").read_text())
    (hook,) = [r for r in cfg["receivers"] if r["name"] == "distillgate-redistill"][0]["webhook_configs"]
    assert hook["url"].endswith("/v1/distillgate/alerts")
    assert hook["http_config"]["authorization"]["type"] == "Bearer"
    assert hook["http_config"]["authorization"]["credentials_file"]
    assert hook["send_resolved"] is True
