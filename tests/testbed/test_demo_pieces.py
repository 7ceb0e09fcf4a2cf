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
from gateway.demo.observe import Snapshot, parse_gateway_metrics
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


def _snap(at: float, version: str, ratio: float, lower: float, upper: float, live: str | None = None,
          **counters: float) -> Snapshot:

    key = (version, "all")
    return Snapshot(at=at, agreement={key: ratio, (version, "billing"): 0.1}, agreement_lower={key: lower},
                    input_drift=None, counters=dict(counters), alerts=(), live_version=live,
                    agreement_upper={key: upper})


def test_loop_summary_agreement_per_stage_delays_gate_and_spend() -> None:
    from gateway.demo.summary import LoopInputs, agreement_by_stage, job_duration_s, loop_rows, spend_of

    spend, saved = "distillgate_teacher_spend_dollars_total", "distillgate_saved_dollars_total"
    snaps = [
        _snap(1, "base", 0.97, 0.90, 0.99),
        _snap(9, "base", 0.95, 0.88, 0.98),   # last reading before drift
        _snap(15, "base", 0.70, 0.60, 0.78),
        _snap(29, "base", 0.55, 0.45, 0.64),  # last reading during drift
        _snap(60, "base", 0.50, 0.40, 0.60, **{spend: 0.5, saved: 1.0}),
        _snap(95, "v2", 0.92, 0.85, 0.96, live="v2", **{spend: 1.0, saved: 3.0,
                                                        "distillgate_redistill_job_duration_seconds_sum": 50.0,
                                                        "distillgate_redistill_job_duration_seconds_count": 2.0}),
    ]
    windows = {"before": (0.0, 10.0), "drift": (10.0, 30.0), "redistill": (30.0, 80.0), "recovery": (80.0, 100.0)}
    by_stage = agreement_by_stage(snaps, windows)
    assert (by_stage["before"].ratio, by_stage["before"].lower, by_stage["before"].upper) == (0.95, 0.88, 0.98)
    assert by_stage["drift"].ratio == 0.55 and by_stage["drift"].lower == 0.45
    assert by_stage["recovery"].ratio == 0.92 and by_stage["recovery"].upper == 0.96  # the live version's series
    assert agreement_by_stage(snaps, {})["before"] is None
    assert job_duration_s(snaps) == pytest.approx(25.0)
    cost = spend_of(snaps)
    assert cost is not None and (cost.spend, cost.saved) == (1.0, 3.0) and cost.ratio == pytest.approx(0.25)
    assert spend_of(snaps[:2]) is None

    versions = ({"id": "v1", "gate": None},
                {"id": "v2", "gate": {"retention": 0.9, "candidate_score": 0.81, "teacher_score": 0.9,
                                      "current_score": 0.4, "n": 40}})
    rows = dict(loop_rows(LoopInputs(
        snapshots=snaps, windows=windows, phases={"traffic: before": 10.0, "traffic: drift": 20.0},
        drift_started=10.0, alert_fired=28.0, trigger_accepted=30.0, promoted=78.5, versions=versions,
        promoted_version="v2")))
    assert rows["agreement before drift"] == "95.0% (Wilson 88.0%–98.0%)"
    assert rows["agreement during drift"].startswith("55.0%")
    assert rows["agreement after re-distillation"].startswith("92.0%")
    assert rows["detection delay (drift → alert)"] == "18s"
    assert rows["re-distillation (trigger → live)"] == "48s"
    assert rows["re-distillation job (own duration)"] == "25s"
    assert rows["retention vs teacher (held-out gate)"].startswith("90.0% (candidate 0.810, teacher 0.900")
    assert "25.0% of all-teacher" in rows["teacher spend"]
    assert rows["wall time: traffic: drift"] == "20s"

    unknown = dict(loop_rows(LoopInputs(snapshots=[], windows={}, phases={}, drift_started=None, alert_fired=None,
                                        trigger_accepted=None, promoted=None, versions=(), promoted_version=None)))
    assert set(unknown.values()) == {"—"}


def test_parse_gateway_metrics_reads_bounds_spend_and_job_histogram() -> None:
    text = "\n".join([
        "# TYPE distillgate_agreement_upper_bound_ratio gauge",
        'distillgate_agreement_upper_bound_ratio{model="m",version="base",slice="all"} 0.7',
        "# TYPE distillgate_teacher_spend_dollars counter",
        'distillgate_teacher_spend_dollars_total{model="m"} 0.25',
        "# TYPE distillgate_redistill_job_duration_seconds histogram",
        'distillgate_redistill_job_duration_seconds_bucket{model="m",le="+Inf"} 1',
        'distillgate_redistill_job_duration_seconds_sum{model="m"} 42.5',
        'distillgate_redistill_job_duration_seconds_count{model="m"} 1',
        "",
    ])
    parsed = parse_gateway_metrics(text, "m")
    assert parsed["upper"] == {("base", "all"): 0.7}
    assert parsed["counters"]["distillgate_teacher_spend_dollars_total"] == 0.25
    assert parsed["counters"]["distillgate_redistill_job_duration_seconds_sum"] == 42.5
    assert parsed["counters"]["distillgate_redistill_job_duration_seconds_count"] == 1
