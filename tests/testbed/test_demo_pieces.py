"""The demo's pieces that need no vLLM: its configs pass the real validators, the CLI plug-in is
registered, and the summary/report compute what they claim."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.demo.configs import (
    GatewayPlan,
    render_demo_rules,
    write_alertmanager_config,
    write_gateway_config,
    write_prometheus_config,
)
from gateway.demo.observe import parse_gateway_metrics
from gateway.demo.summary import summarize, write_report
from gateway.demo.traffic import Outcome, TrafficLog

ROOT = Path(__file__).resolve().parents[2]


def _plan(tmp_path: Path) -> GatewayPlan:
    return GatewayPlan(port=18080, student_url="http://127.0.0.1:18000/v1", student_model="demo-student",
                       teacher_url="http://127.0.0.1:18001/v1", teacher_model="demo-teacher",
                       store_url=f"sqlite:///{tmp_path / 'pairs.db'}", workdir=tmp_path, base_model_dir=tmp_path / "m")


def test_gateway_config_passes_the_cli_check(tmp_path: Path) -> None:
    path, config = write_gateway_config(_plan(tmp_path), tmp_path / "gateway.yaml")
    assert config.models["support-intent"].scorer.kind == "label"
    assert config.redistill.base_models["support-intent"] == str(tmp_path / "m")
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(path), "check-config"],
                         capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "config OK" in out.stdout


@pytest.mark.prometheus
def test_monitoring_configs_pass_promtool_and_amtool(prometheus_bin: dict[str, str], tmp_path: Path) -> None:
    rules = render_demo_rules(tmp_path / "rules", agreement_threshold=0.8)
    alerts = (tmp_path / "rules" / "alerts.yaml").read_text()
    assert "StudentAgreementLow" in alerts and "< 0.8" in alerts
    prom = write_prometheus_config(tmp_path / "prom.yml", rule_files=rules, gateway_port=1, vllm_port=2,
                                   alertmanager_port=3)
    am = write_alertmanager_config(tmp_path / "am.yml", gateway_port=1, token="secret-token")
    for argv in ([prometheus_bin["promtool"], "check", "config", str(prom)],
                 [prometheus_bin["amtool"], "check-config", str(am)]):
        out = subprocess.run(argv, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.prometheus
def test_monitoring_config_finds_its_rules_from_a_relative_workdir(
        prometheus_bin: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `make demo` runs with the relative workdir demo-out/; the rules must still load.
    monkeypatch.chdir(tmp_path)
    rules = render_demo_rules(Path("demo-out/monitoring/rules"), agreement_threshold=0.8)
    prom = write_prometheus_config(Path("demo-out/monitoring/prometheus.yml"), rule_files=rules, gateway_port=1,
                                   vllm_port=2, alertmanager_port=3)
    out = subprocess.run([prometheus_bin["promtool"], "check", "config", str(prom.resolve())],
                         capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 2 rule files found" in out.stdout + out.stderr, out.stdout + out.stderr


def test_demo_is_a_cli_subcommand() -> None:
    args = build_parser().parse_args(["demo", "--quick", "--monitoring", "watcher"])
    assert args.needs_config is False and args.quick and args.monitoring == "watcher"
    assert callable(args.handler)


def _outcome(stage: str, phase: str, expected: str, answer: str | None, at: float) -> Outcome:
    return Outcome(at=at, stage=stage, phase=phase, expected=expected, answer=answer, route="student",
                   latency_s=0.01, error=None if answer is not None else "APIConnectionError")


def test_summary_per_stage_and_html_report(tmp_path: Path) -> None:
    log = TrafficLog()
    for i in range(10):
        log.add(_outcome("before", "before", "billing", "billing", i))
    for i in range(10):
        log.add(_outcome("drift", "after", "technical", "billing" if i < 8 else "technical", 10 + i))
    log.add(_outcome("drift", "after", "technical", None, 20))
    rows = {r.stage: r for r in summarize(log)}
    assert rows["before"].accuracy == 1.0 and rows["before"].after_share == 0.0
    assert rows["drift"].accuracy == pytest.approx(0.2) and rows["drift"].errors == 1 and rows["drift"].requests == 11
    report = write_report(tmp_path / "r.html", rows=list(rows.values()), outcomes=log.outcomes, snapshots=[],
                          marks={"drift": 10.0, "alert": None}, facts={"monitoring": "watcher"}, evaluator_report=None)
    text = report.read_text()
    assert "data:image/png;base64," in text and "<td>drift</td>" in text and "20.0%" in text


def test_parse_gateway_metrics_reads_agreement_and_live_version() -> None:
    text = "\n".join([
        'distillgate_agreement_ratio{model="m",version="base",slice="all"} 0.5',
        'distillgate_agreement_ratio{model="other",version="base",slice="all"} 0.9',
        'distillgate_model_version_info{model="m",version="v2",status="live"} 1',
        'distillgate_redistill_jobs_total{model="m",status="started"} 2',
        "",
    ])
    parsed = parse_gateway_metrics(text, "m")
    assert parsed["agreement"] == {("base", "all"): 0.5}
    assert parsed["live"] == "v2"
    assert parsed["counters"]["distillgate_redistill_jobs_total{status=started}"] == 2


def test_demo_stack_stops_every_child_even_when_the_block_fails(tmp_path: Path) -> None:
    from gateway.demo.processes import ManagedProcess
    from gateway.demo.scenario import DemoStack

    procs = []
    with pytest.raises(KeyboardInterrupt):
        with DemoStack(tmp_path) as stack:
            for name in ("a", "b"):
                procs.append(stack.add(name, ManagedProcess(
                    name, [sys.executable, "-c", "import time; time.sleep(300)"], tmp_path / f"{name}.log").start()))
            assert all(p.alive() for p in procs)
            raise KeyboardInterrupt
    assert not any(p.alive() for p in procs)


def test_choose_monitoring_falls_back_to_the_watcher_only_when_allowed(tmp_path: Path, monkeypatch) -> None:
    from gateway.demo.processes import MissingBinaryError
    from gateway.demo.scenario import DemoEnv, DemoSettings, DemoStack, choose_monitoring

    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus binaries on this PATH
    with DemoStack(tmp_path) as stack:
        env = DemoEnv(settings=DemoSettings(workdir=tmp_path, monitoring="auto"), stack=stack)
        assert choose_monitoring(env) == "watcher" and "missing prometheus" in env.monitoring_note
        env.settings.monitoring = "prometheus"
        with pytest.raises(MissingBinaryError):
            choose_monitoring(env)
