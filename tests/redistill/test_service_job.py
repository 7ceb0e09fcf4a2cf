"""The job pipeline on a real SQLite pair store, and the service running it as a real subprocess
(`python -m gateway.cli --config ... redistill-job`): duplicates, cooldown, and a killed job."""
import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from evaluator.records import ExchangeRecord, ShadowPair
from evaluator.store.pairs import PairStore
from gateway.config import parse_config
from redistill.jobs import JobStore
from redistill.metrics import RedistillMetrics
from redistill.job import run_job
from redistill.records import Trigger
from redistill.registry import Registry
from redistill.runners import LocalRunner
from redistill.service import RedistillService

from redistill_toy import DRIFTED, INTENTS, SYSTEM, make_distilled_student


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_distilled_student(tmp_path_factory.mktemp("student"))


def _config(tmp_path, base_dir, runner=None, **train):
    return parse_config({
        "auth": {"mode": "none"},
        "upstreams": {"vllm": {"base_url": "http://127.0.0.1:9/v1"}, "teacher": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"intent": {
            "student": {"upstream": "vllm", "model": "student"}, "teacher": {"upstream": "teacher", "model": "t"},
            "scorer": {"kind": "label", "labels": list(INTENTS)},
        }},
        "evaluator": {"store": {"url": f"sqlite:///{tmp_path / 'pairs.db'}"}},
        "redistill": {
            "workdir": str(tmp_path / "work"), "base_models": {"intent": str(base_dir)},
            "dataset": {"dedup": "exact", "heldout_fraction": 0.3},
            "train": {"max_steps": 8, "batch_size": 20, "learning_rate": 5e-3, "max_length": 64, "val_fraction": 0.0,
                      **train},
            "gate": {"retention_threshold": 0.1, "regression_tolerance": 1.0},
            "trigger": {"watcher": {"cooldown_s": 3600}},
            "runner": runner or {},
        },
    }, environ={})


def _fill_store(config):
    store = PairStore(config.evaluator.store.url, config.evaluator.store)
    store.migrate()
    n = 0
    for source in (INTENTS, DRIFTED):
        for label, texts in source.items():
            for text in texts:
                n += 1
                req = {"model": "intent", "messages": [{"role": "system", "content": SYSTEM},
                                                       {"role": "user", "content": text}], "max_tokens": 4}
                kw = dict(request_id=f"r{n}", model="intent", endpoint="chat", request=req, created_at=time.time())
                served = ExchangeRecord(route="student", version="base", response_text="billing", **kw)
                teacher = ExchangeRecord(route="teacher", version="t", response_text=label, **kw)
                store.put_pair(ShadowPair(served, teacher, {"label": float(label == "billing")}, label == "billing"))
    assert store.flush(30)
    return store


def test_job_pipeline_registers_a_gated_version_with_lineage(tmp_path, base_dir):
    config = _config(tmp_path, base_dir)
    store = _fill_store(config)
    registry = Registry(store.engine)
    v0 = registry.register(model="intent", base_model=str(base_dir), adapter_path=None, dataset_manifest_hash=None,
                           gate_report=None, status="candidate")
    registry.promote_live(v0.id, "pretend an earlier version is live")
    outcome = run_job(config, "intent", "job-1", progress=False, store=store)
    assert outcome.status in ("succeeded", "rejected"), outcome.error
    v = registry.get(outcome.version_id)
    assert v.status == ("candidate" if outcome.status == "succeeded" else "rejected")
    assert v.parent_id == v0.id and v.dataset_manifest_hash == outcome.dataset_hash
    assert v.gate_report["n"] > 0 and "retention" in v.gate_report
    assert v.hyperparameters["train"]["max_steps"] == 8 and os.path.isdir(v.adapter_path)
    job = JobStore(store.engine).get("job-1")
    assert (job.status, job.version_id, job.runner) == (outcome.status, v.id, "cli")
    assert registry.active("intent").live.id == v0.id  # a job never changes what serves traffic
    # an unknown base dir is a recorded failure, not a crash
    bad = _config(tmp_path, tmp_path / "missing")
    failed = run_job(bad, "intent", "job-2", progress=False, store=store)
    assert failed.status == "failed" and JobStore(store.engine).get("job-2").status == "failed"
    store.close()


def _service(config, store, metrics=None, runner=None, **kw):
    return RedistillService(config.redistill, list(config.models), jobs=JobStore(store.engine),
                            runner=runner or LocalRunner(cwd=os.getcwd()),
                            config_dump=lambda: config.model_dump(mode="json"), metrics=metrics, **kw)


def test_service_runs_job_subprocess_and_dedups(tmp_path, base_dir):
    config = _config(tmp_path, base_dir)
    store = _fill_store(config)

    async def scenario():
        svc = _service(config, store)
        first = await svc.submit(Trigger("alertmanager", "intent", "StudentAgreementLow"), dry_run=True)
        dup = await svc.submit(Trigger("watcher", "intent", "low"))
        job = await asyncio.wait_for(svc.wait_idle("intent"), 300)
        cool = await svc.submit(Trigger("alertmanager", "intent", "again"))
        return first, dup, job, cool

    first, dup, job, cool = asyncio.run(scenario())
    assert first.status == "accepted" and dup.status == "duplicate" and dup.job_id == first.job_id
    assert job.status == "succeeded" and job.error == "dry run: no training", open(job.log_path).read()[-2000:]
    assert cool.status == "cooldown"
    outcomes = [t["outcome"] for t in JobStore(store.engine).triggers("intent")]
    assert outcomes == ["job_started", "duplicate", "cooldown"]
    store.close()


def test_killed_job_is_failed_and_live_version_untouched(tmp_path, base_dir):
    config = _config(tmp_path, base_dir, max_steps=100_000, epochs=100_000)
    store = _fill_store(config)
    registry = Registry(store.engine)
    live = registry.register(model="intent", base_model=str(base_dir), adapter_path=None, dataset_manifest_hash=None,
                             gate_report=None)
    registry.promote_live(live.id, "live before the job")
    jobs = JobStore(store.engine)
    prom = CollectorRegistry()

    async def scenario():
        svc = _service(config, store, RedistillMetrics(prom))
        out = await svc.submit(Trigger("manual", "intent", "operator"))
        _, handle, _ = svc._running["intent"]
        deadline = time.monotonic() + 240
        while jobs.get(out.job_id).status != "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # wait for the job to be mid-pipeline
        await asyncio.sleep(1.0)
        os.kill(handle.pid, signal.SIGKILL)
        return out, await asyncio.wait_for(svc.wait_idle("intent"), 60)

    out, job = asyncio.run(scenario())
    assert job.status == "failed" and "SIGKILL" in job.error
    assert registry.active("intent").live.id == live.id
    assert [v.id for v in registry.list("intent")] == [live.id]
    value = lambda name, status=None: prom.get_sample_value(  # noqa: E731
        name, {"model": "intent", **({"status": status} if status else {})})
    assert value("distillgate_redistill_jobs_total", "started") == 1
    assert value("distillgate_redistill_jobs_total", "failed") == 1
    assert value("distillgate_redistill_job_running") == 0
    assert value("distillgate_redistill_job_duration_seconds_count") == 1
    store.close()


def test_job_past_its_deadline_is_stopped_and_its_log_says_where_it_was(tmp_path, base_dir):
    # 60 s: the job's start-up (imports, store) must be behind it for the dump to show the training loop.
    config = _config(tmp_path, base_dir, runner={"job_timeout_s": 60}, max_steps=100_000, epochs=100_000)
    store = _fill_store(config)
    jobs = JobStore(store.engine)
    prom = CollectorRegistry()

    async def scenario():
        svc = _service(config, store, RedistillMetrics(prom), job_poll_s=0.5)
        await svc.submit(Trigger("manual", "intent", "operator"))
        _, handle, _ = svc._running["intent"]
        return handle, await asyncio.wait_for(svc.wait_idle("intent"), 180)

    handle, job = asyncio.run(scenario())
    assert job.status == "failed" and job.error.startswith("timed out after 60s"), job.error
    assert handle.proc.returncode == -signal.SIGTERM  # stopped by the service, not ended on its own
    log = Path(job.log_path).read_text(errors="replace")
    # faulthandler's dump, taken before the stop: the job was training (the max_steps above never end).
    assert re.search(r'File ".*redistill/train\.py", line \d+ in ', log), log[-3000:]
    assert [v.id for v in Registry(store.engine).list("intent")] == []
    value = lambda name, status=None: prom.get_sample_value(  # noqa: E731
        name, {"model": "intent", **({"status": status} if status else {})})
    assert value("distillgate_redistill_jobs_total", "failed") == 1
    assert value("distillgate_redistill_job_running") == 0
    assert jobs.get(job.id).finished_at is not None
    store.close()


def test_verdict_without_exit_is_followed_and_the_process_stopped(tmp_path, base_dir):
    config = _config(tmp_path, base_dir)
    store = _fill_store(config)
    script = Path(__file__).with_name("lingering_job.py")
    runner = LocalRunner([sys.executable, str(script)], cwd=os.getcwd())

    async def scenario():
        svc = _service(config, store, runner=runner, job_poll_s=0.2, verdict_grace_s=1.0)
        await svc.submit(Trigger("manual", "intent", "operator"))
        _, handle, _ = svc._running["intent"]
        return handle, await asyncio.wait_for(svc.wait_idle("intent"), 60), svc.running_job("intent")

    handle, job, still_running = asyncio.run(scenario())
    log = Path(job.log_path).read_text(errors="replace")
    assert "verdict recorded; lingering" in log, log
    assert job.status == "rejected" and job.error is None  # the job's own verdict stands
    assert handle.proc.returncode == -signal.SIGTERM
    assert still_running is None  # a new trigger may start a job
    store.close()
