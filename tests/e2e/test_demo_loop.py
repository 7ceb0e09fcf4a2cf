"""The whole loop with every real part, asserted from the outside.

A shortened `distillgate demo`: tiny student distilled from the teacher stand-in and served by vLLM
(runtime LoRA), the gateway with shadow evaluation, Prometheus evaluating the project's alert rules,
Alertmanager posting to the gateway's webhook, a re-distillation job in a subprocess, LoRA hot-load and
promotion. Runs first in the session (tests/e2e sorts before the folders that start the shared vLLM
fixture), so two vLLM servers never share the two cores.
"""
from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import httpx
import pytest

from evaluator.store.engine import create_store_engine
from gateway.config import load_config
from gateway.demo.configs import LOGICAL_MODEL
from gateway.demo.processes import find_prometheus_binaries, processes_matching
from gateway.demo.scenario import DemoSettings, demo_env, run_traffic_stages, start_stack, write_outputs
from redistill.jobs import JobStore
from tests.ops.conftest import load_script

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

# Served-answer accuracy on drifted tickets must rise by at least this much once the new version is live.
RECOVERY_MARGIN = 0.15


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _why_no_promotion(env, versions: dict, workdir: Path) -> str:  # noqa: ANN001 - DemoEnv
    """What a failed promotion left to read: phase timings, the re-distillation counters, every version and
    the end of each job's log (a slow machine and a stuck job look the same from the timeline alone)."""
    tl = env.timeline
    last = env.snapshots[-1] if env.snapshots else None
    counters = {k: v for k, v in (last.counters if last else {}).items() if "redistill" in k}
    lines = [f"no version was promoted (job outcome {tl.job_outcome})",
             "phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in tl.phases.items()),
             f"redistill counters at the last snapshot: {counters}",
             "versions: " + "; ".join(f"{v['id']} {v['status']} gate={v.get('gate')}" for v in versions.get("versions", []))]
    config = load_config(workdir / "gateway" / "gateway.yaml", environ={})
    jobs = JobStore(create_store_engine(config.evaluator.store.url))
    logs = sorted((Path(config.redistill.workdir) / "jobs").glob("*/job.log"))
    if not logs:
        lines.append(f"--- no job log under {config.redistill.workdir}/jobs")
    for log in logs:
        try:
            row = jobs.get(log.parent.name)
            lines.append(f"--- job {row.id}: {row.status}, error {row.error!r}")
        except KeyError:
            lines.append(f"--- job {log.parent.name}: no row in the jobs table")
        # Progress bars redraw with carriage returns (bytes: text mode would turn them into line breaks): their
        # last state per line is enough.
        tail = [ln.rsplit("\r", 1)[-1] for ln in log.read_bytes().decode(errors="replace").split("\n")][-120:]
        lines += [f"--- {log.parent.name}/job.log (last {len(tail)} lines)", *tail]
    return "\n".join(lines)


def test_drift_alert_redistill_promote_recover(tmp_path: Path) -> None:
    try:
        find_prometheus_binaries()
    except Exception as exc:  # noqa: BLE001 - the message names what is missing
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Prometheus/Alertmanager not installed: {exc}")

    workdir = tmp_path / "demo"
    settings = DemoSettings(workdir=workdir, report_path=tmp_path / "demo-report.html", monitoring="prometheus",
                            warmup_requests=80, recovery_requests=100, progress=False)
    with demo_env(settings) as env:
        start_stack(env)
        asyncio.run(run_traffic_stages(env))
        tl = env.timeline

        # While everything is still up: the registry and Prometheus, seen from outside.
        versions = httpx.get(f"{env.gateway_url}/v1/distillgate/versions", params={"model": LOGICAL_MODEL},
                             headers={"authorization": f"Bearer {env.api_key}"}, timeout=10).json()
        check_queries = load_script("check_queries")
        redistill_panels = check_queries.panel_queries(("redistill.json",))
        empty_panels = check_queries.check(env.prometheus_url, redistill_panels, window_s=600.0)
        rows, report = write_outputs(env)
        ports = [p.port for p in env.stack.processes.values() if p.port]
        pids = [p.pid for p in env.stack.processes.values() if p.pid]

    # The alert fired after the shift, and not before it.
    assert tl.drift_started is not None
    assert tl.alert_fired is not None, "no alert fired during drifted traffic"
    assert tl.alert_fired > tl.drift_started
    assert "StudentAgreementLow" in tl.alert_names or {"InputDriftHigh", "OutputDriftHigh"} & set(tl.alert_names)
    before = [s for s in env.snapshots if s.at < tl.drift_started]
    assert before, "no observations during pre-drift traffic"
    assert not any(s.alerts for s in before), [s.alerts for s in before if s.alerts]

    # A new version was registered, passed the gate and went live.
    if tl.promoted_version is None:
        pytest.fail(_why_no_promotion(env, versions, workdir))
    assert tl.promoted_version != env.initial_live
    assert versions["active"]["live"]["id"] == tl.promoted_version
    promoted = {v["id"]: v for v in versions["versions"]}[tl.promoted_version]
    assert promoted["status"] == "live"
    assert promoted["gate"]["passed"] is True, promoted["gate"]
    threshold = load_config(workdir / "gateway" / "gateway.yaml", environ={}).redistill.gate.retention_threshold
    assert promoted["gate"]["retention"] >= threshold, promoted["gate"]

    # Post-promotion agreement on drifted traffic beats the pre-redistill agreement by a margin.
    by_stage = {r.stage: r for r in rows}
    drift_acc, recovery_acc = by_stage["drift"].accuracy, by_stage["recovery"].accuracy
    assert drift_acc is not None and recovery_acc is not None
    assert recovery_acc >= drift_acc + RECOVERY_MARGIN, (drift_acc, recovery_acc)
    last = env.snapshots[-1]
    new_agreement = last.agreement.get((tl.promoted_version, "all"))
    old_agreement = [s.agreement.get((env.initial_live or "base", "all")) for s in env.snapshots
                     if s.at >= tl.drift_started]
    old_min = min(a for a in old_agreement if a is not None)
    assert new_agreement is not None and new_agreement >= old_min + RECOVERY_MARGIN, (old_min, new_agreement)

    # The re-distillation dashboard now has data in every panel (gate results and promotions included).
    assert not empty_panels, [str(q) for q in empty_panels]
    assert report.exists() and "recovery" in report.read_text()

    # Nothing was left running.
    assert not [p for p in ports if _port_open(p)]
    assert not [p for p in pids if _alive(p)]
    assert not processes_matching(str(workdir))
