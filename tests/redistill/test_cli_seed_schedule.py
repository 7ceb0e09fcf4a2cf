"""The CLI subcommands (in-process through gateway.cli.main), seed prompts through a real teacher HTTP
server, the scheduled trigger's skip, and scorer-based validity."""
import asyncio
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from evaluator.records import ExchangeRecord, ShadowPair
from evaluator.scorers import build_scorer
from evaluator.settings import ScorerSettings
from evaluator.store.pairs import PairStore
from fakes.openai_server import FakeOpenAI
from gateway.cli import main
from gateway.config import parse_config
from redistill.dataset import teacher_seed_records
from redistill.filters import scorer_validator
from redistill.jobs import JobStore
from redistill.metrics import RedistillMetrics
from redistill.records import Trigger
from redistill.runners import LocalRunner
from redistill.service import RedistillService
from redistill.teacher_client import TeacherClient


def _config(tmp_path, **redistill):
    data = {
        "auth": {"mode": "none"},
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"intent": {"student": {"upstream": "u", "model": "s"}, "teacher": {"upstream": "u", "model": "t"},
                              "scorer": {"kind": "label", "labels": ["billing", "refund"]}}},
        "evaluator": {"store": {"url": f"sqlite:///{tmp_path / 'pairs.db'}"}},
        "redistill": {"workdir": str(tmp_path / "work"), "dataset": {"dedup": "none"}, **redistill},
    }
    path = tmp_path / "config.json"
    path.write_bytes(orjson.dumps(data))
    return path, parse_config(data, environ={})


def _fill(config, n=30):
    store = PairStore(config.evaluator.store.url, config.evaluator.store)
    store.migrate()
    for i in range(n):
        kw = dict(request_id=f"r{i}", model="intent", endpoint="chat", created_at=time.time(),
                  request={"messages": [{"role": "user", "content": f"ticket {i} about invoice {i * 31}"}]},
                  slice="a" if i % 3 else "b")
        label = "billing" if i % 2 else "refund"
        store.put_pair(ShadowPair(ExchangeRecord(route="student", version="base", response_text="billing", **kw),
                                  ExchangeRecord(route="teacher", version="t", response_text=label, **kw),
                                  {"label": float(label == "billing")}, label == "billing"))
    assert store.flush(30)
    return store


def test_cli_dry_run_sample_and_import_review(tmp_path, capsys):
    path, config = _config(tmp_path)
    _fill(config).close()
    assert main(["--config", str(path), "redistill", "--model", "intent", "--since", "1d", "--dry-run"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["status"] == "dry_run" and summary["counts"]["pairs"] == 30
    review = tmp_path / "review.jsonl"
    assert main(["--config", str(path), "dataset", "sample", "--model", "intent", "--n", "6", "--out", str(review)]) == 0
    lines = [orjson.loads(x) for x in review.read_bytes().splitlines()]
    assert len(lines) == 6 and {x["slice"] for x in lines} == {"a", "b"}
    lines[0]["review"] = "reject"
    for x in lines[1:]:
        x["review"] = "accept"
    review.write_bytes(b"\n".join(orjson.dumps(x) for x in lines))
    capsys.readouterr()
    assert main(["--config", str(path), "dataset", "import-review", "--model", "intent", "--file", str(review)]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["review"]["reject_rate"] == pytest.approx(1 / 6)
    assert main(["--config", str(path), "redistill", "--model", "nope"]) == 2
    # rollback with nothing live is a no-op that still answers
    capsys.readouterr()
    assert main(["--config", str(path), "rollback", "--model", "intent"]) == 0
    assert orjson.loads(capsys.readouterr().out)["live"] == "base"


def test_seed_prompts_through_a_real_teacher_server(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text('{"messages": [{"role": "user", "content": "refund please"}], "max_tokens": 4}\n')
    with FakeOpenAI(answers={"refund please": "refund"}) as teacher:
        async def run():
            client = TeacherClient(teacher.url, "big-teacher", api_key="k", logical_model="intent")
            try:
                return await teacher_seed_records(seed, "intent", client)
            finally:
                await client.close()

        [rec] = asyncio.run(run())
        sent = teacher.requests[-1]
    assert sent["model"] == "big-teacher" and sent["logprobs"] is True and sent["top_logprobs"] == 5
    assert rec.response_text == "refund" and rec.model == "intent" and rec.route == "teacher"
    assert rec.top_logprobs and "refund" in rec.top_logprobs[0] and rec.token_logprobs


def test_schedule_skips_with_recorded_reason_when_too_few_new_pairs(tmp_path):
    _, config = _config(tmp_path, trigger={"schedule": "*/5 * * * *", "min_new_pairs": 50})
    store = _fill(config, n=10)
    clock = {"t": 0.0}
    prom = CollectorRegistry()
    svc = RedistillService(config.redistill, ["intent"], jobs=JobStore(store.engine), runner=LocalRunner(),
                           metrics=RedistillMetrics(prom), clock=lambda: clock["t"])
    clock["t"] = 301.0  # past the first 5-minute slot; the stored pairs are "new" (no job yet)
    [out] = asyncio.run(svc.check_triggers(time.time()))
    assert out.status == "skipped" and "10 new pairs < min_new_pairs 50" in out.reason
    [row] = JobStore(store.engine).triggers("intent")
    assert row["source"] == "schedule" and row["outcome"].startswith("skipped:") and row["job_id"] is None
    assert prom.get_sample_value("distillgate_redistill_triggers_total", {"model": "intent", "status": "skipped"}) == 1
    with pytest.raises(KeyError):
        asyncio.run(svc.submit(Trigger("manual", "unknown", "x")))
    store.close()


def test_scorer_validator_follows_the_models_scorer():
    label = scorer_validator(build_scorer(ScorerSettings(kind="label", labels=["billing", "refund"])))
    assert label("billing") and not label("I think it's about shipping")
    js = scorer_validator(build_scorer(ScorerSettings(kind="json")))
    assert js('{"a": 1}') and not js("no json here")
    assert scorer_validator(build_scorer(ScorerSettings(kind="rouge_l"))) is None


def test_watcher_fires_through_the_service_into_a_kubernetes_job(tmp_path):
    from kubernetes import client

    from evaluator.agreement import AgreementSnapshot
    from fake_kube import FakeKubeAPI
    from redistill.runners import KubernetesRunner
    from redistill.settings import KubernetesRunnerSettings

    _, config = _config(tmp_path, trigger={"watcher": {"threshold": 0.8, "for_s": 30, "min_samples": 20,
                                                       "cooldown_s": 600}})
    store = _fill(config, n=2)
    low = AgreementSnapshot(n=40, agreed=24, ratio=0.6, lower=0.45, upper=0.74)
    with FakeKubeAPI() as kube:
        api = client.Configuration()
        api.host = kube.url
        runner = KubernetesRunner(KubernetesRunnerSettings(namespace="ml"), api_client=client.ApiClient(api))
        svc = RedistillService(config.redistill, ["intent"], jobs=JobStore(store.engine), runner=runner,
                               agreement=lambda model: low, clock=lambda: 1000.0)

        async def run():
            first = await svc.check_triggers(now=1000.0)
            fired = await svc.check_triggers(now=1030.0)
            return first, fired

        first, fired = asyncio.run(run())
        assert first == [] and [o.status for o in fired] == ["accepted"]
        assert len(kube.jobs) == 1
    [row] = JobStore(store.engine).triggers("intent")
    assert row["source"] == "watcher" and row["outcome"] == "job_started" and row["metrics"]["lower"] == 0.45
    store.close()
