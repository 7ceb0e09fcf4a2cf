"""LIVE: every panel query of the dashboards returns data from a real Prometheus scraping a real gateway.

The gateway app runs under uvicorn (tests/fakes/gateway_thread.py) with its real evaluator, in front
of two fake OpenAI-compatible upstreams that are real HTTP servers. Traffic goes through the official
`openai` client: plain, streaming, cascade escalations, shadow sampling up to a teacher spend cap,
student failures (retries, fallbacks, an opening circuit breaker), a rate-limited key. A real
Prometheus scrapes the gateway every second with the recording rules loaded (rendered by
dashboards/render_rules.py with a 1 s evaluation interval), then every panel query is run through
its HTTP API with the template variables expanded as Grafana would; a query that errors or returns
no series fails the test.
"""
from __future__ import annotations

import hashlib
import runpy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fakes.gateway_thread import GatewayThread
from fakes.openai_server import FakeOpenAI
from gateway.config import parse_config
from gateway.demo.processes import start_prometheus

from .conftest import DASHBOARDS, PanelQuery, annotation_exprs, panel_queries, substitute

pytestmark = pytest.mark.prometheus

MODEL = "intent"
ADMIN_KEY = "sk-ops-live-admin-00000000000000"
LIMITED_KEY = "sk-ops-live-limited-111111111111"
LIVE_DASHBOARDS = ("gateway.json", "distillation-health.json")


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _student_answer(prompt: str) -> str:
    # Agrees with the teacher on most prompts, not all: both agree and disagree pairs exist.
    return "label billing" if "refund" in prompt or "invoice" in prompt else "label other"


def _teacher_answer(prompt: str) -> str:
    return "label billing" if "refund" in prompt else "label other"


def _config(student: FakeOpenAI, teacher: FakeOpenAI, store: Path) -> Any:
    fast = {"connect_s": 1.0, "first_byte_s": 5.0, "total_s": 10.0}
    return parse_config({
        "upstreams": {"vllm": {"base_url": student.url, "timeouts": fast},
                      "teacher": {"base_url": teacher.url, "timeouts": fast}},
        "auth": {"keys": [
            {"name": "admin", "sha256": _sha(ADMIN_KEY), "admin": True, "can_override_route": True},
            {"name": "limited", "sha256": _sha(LIMITED_KEY), "rate_limit": {"requests_per_minute": 2}},
        ]},
        "models": {MODEL: {
            "student": {"upstream": "vllm", "model": "student-served"},
            "teacher": {"upstream": "teacher", "model": "teacher-served"},
            "shadow": {"rate": 1.0, "teacher_tokens_per_hour": 150},
            "slices": [{"name": "tier", "header": "x-tier", "values": ["free", "pro"]}],
            "routing": {
                "student_percent": 80,
                "cascade": {"enabled": True, "min_mean_logprob": -1.0},
                "retries": {"max_attempts": 2, "budget_ratio": 1.0},
                "fallback": {"breaker": {"failure_threshold": 3, "open_s": 0.5}},
            },
        }},
        "evaluator": {
            "queue_size": 100, "workers": 2, "drain_timeout_s": 2.0,
            "store": {"url": f"sqlite:///{store}", "flush_interval_s": 0.05},
            "agreement": {"min_samples": 5, "window_size": 50},
            "drift": {"reference_size": 20, "window_size": 20, "min_samples": 10, "every_n": 5},
        },
    }, environ={})


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: dict[str, str]) -> Iterator[str]:
    """Runs gateway + fakes + Prometheus, sends the traffic; yields Prometheus' base URL."""
    work = tmp_path_factory.mktemp("ops-live")
    render = runpy.run_path(str(DASHBOARDS / "render_rules.py"))["render_rules"]
    rule_files = render(work / "rules", interval="1s")
    with FakeOpenAI(answers=_student_answer, logprob=lambda p: -3.0 if "unsure" in p else -0.1) as student, \
            FakeOpenAI(answers=_teacher_answer) as teacher, \
            GatewayThread(_config(student, teacher, work / "pairs.db")) as gw:
        prom_cfg = work / "prometheus.yml"
        prom_cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "distillgate", "static_configs": [{"targets": [f"127.0.0.1:{gw.port}"]}]}],
        }))
        prom = start_prometheus(prom_cfg, workdir=work / "prometheus", binary=prometheus_bin["prometheus"])
        try:
            _send_traffic(gw.url, student)
            _wait_for_scrapes(prom.url, gw.url)
            yield prom.url
        finally:
            prom.stop()


def _send_traffic(gateway_url: str, student: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=15)
    prompts = ["I want a refund", "where is my invoice", "reset my password", "unsure what to ask",
               "cancel my plan", "refund the last charge please", "the app crashes", "change my email"]
    for i in range(60):
        tier = ("free", "pro")[i % 2]
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompts[i % len(prompts)] + f" #{i}"}],
                                       max_tokens=8, extra_headers={"x-tier": tier})
    for i in range(6):
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"stream please {i}"}],
                                                stream=True, stream_options={"include_usage": True},
                                                extra_headers={"x-distillgate-route": "student"})
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    # Student failures: a retry that succeeds, then enough failures to open the breaker (fallbacks).
    student.fail_next = 1
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "retry me"}],
                                   extra_headers={"x-distillgate-route": "student"})
    student.fail_next = 8
    for i in range(4):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"fall back {i}"}],
                                       extra_headers={"x-distillgate-route": "student"})
    # A key over its rate limit gets 429s.
    limited = openai.OpenAI(base_url=gateway_url + "/v1", api_key=LIMITED_KEY, max_retries=0, timeout=15)
    statuses = []
    for i in range(4):
        try:
            limited.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"limited {i}"}])
            statuses.append(200)
        except openai.RateLimitError:
            statuses.append(429)
    assert 429 in statuses


def _query(prom_url: str, expr: str, *, instant: bool) -> dict[str, Any]:
    now = time.time()
    if instant:
        r = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr, "time": now}, timeout=10)
    else:
        r = httpx.get(f"{prom_url}/api/v1/query_range",
                      params={"query": expr, "start": now - 60, "end": now, "step": "1s"}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {r.status_code} {body}"
    return body["data"]


def _wait_for_scrapes(prom_url: str, gateway_url: str) -> None:
    """Until Prometheus has the gateway's final counters and a few rule evaluations on top of them."""
    want = httpx.get(gateway_url + "/metrics", timeout=5).text.count("distillgate_requests_total{")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        series = _query(prom_url, "distillgate_requests_total", instant=True)["result"]
        rules = _query(prom_url, "model_route:distillgate_requests:rate5m", instant=True)["result"]
        if len(series) >= want and rules:
            time.sleep(3)  # a few more scrapes and evaluations: rates need two samples
            return
        time.sleep(0.5)
    pytest.fail(f"Prometheus never scraped the gateway's {want} request series")


def _check(prom_url: str, queries: list[PanelQuery], model: str) -> list[str]:
    empty = []
    for q in queries:
        data = _query(prom_url, substitute(q.expr, model=model, rate_interval="15s", range_="5m"), instant=q.instant)
        if not data["result"]:
            empty.append(f"{q}: {q.expr}")
    return empty


@pytest.mark.parametrize("dashboard", LIVE_DASHBOARDS)
@pytest.mark.parametrize("model", [".*", MODEL])
def test_every_panel_query_returns_series(live: str, dashboard: str, model: str) -> None:
    queries = [q for q in panel_queries() if q.dashboard == dashboard]
    assert queries
    empty = _check(live, queries, model)
    assert not empty, "panel queries with no series:\n" + "\n".join(empty)


def test_model_variable_filters(live: str) -> None:
    """The same queries with an unknown model return nothing: the filter is applied, not ignored."""
    queries = [q for q in panel_queries() if q.dashboard in LIVE_DASHBOARDS and '$model"' in q.expr]
    empty = _check(live, queries, "no-such-model")
    assert len(empty) == len(queries)


def test_model_variable_query_lists_the_model(live: str) -> None:
    r = httpx.get(f"{live}/api/v1/label/model/values", params={"match[]": "distillgate_requests_total"}, timeout=10)
    assert MODEL in r.json()["data"]


def test_redistill_dashboard_and_annotation_queries_execute(live: str) -> None:
    """Runs without error on live data (series appear once re-distillation has run; see the e2e test)."""
    for q in [q for q in panel_queries() if q.dashboard == "redistill.json"]:
        _query(live, substitute(q.expr, model=MODEL, rate_interval="15s", range_="5m"), instant=q.instant)
    for _, expr in annotation_exprs():
        _query(live, substitute(expr, model=MODEL, rate_interval="15s", range_="5m"), instant=False)
