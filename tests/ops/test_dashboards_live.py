"""LIVE: every panel query of the dashboards returns data from a real Prometheus scraping a real gateway.

The gateway app runs under uvicorn (tests/fakes/gateway_thread.py) with its real evaluator, in front
of two fake OpenAI-compatible upstreams that are real HTTP servers. Traffic goes through the official
`openai` client: plain, streaming, cascade escalations, shadow sampling up to a teacher spend cap,
student failures (retries, fallbacks, an opening circuit breaker), a rate-limited key. A real
Prometheus scrapes the gateway every second with the recording rules loaded (rendered by
dashboards/render_rules.py with a 1 s evaluation interval), then every panel query is run through
its HTTP API with the template variables expanded as Grafana would; a query that errors or returns
no series fails the test.

The same stack also runs the alert path: the rules are rendered with `for: 0s` and thresholds that
the live values cross, a real Alertmanager runs dashboards/alertmanager.example.yml (GATEWAY replaced
by the live gateway, plus a second webhook to a recording receiver so the request itself can be
inspected). The retraining alert must reach the gateway's webhook with its bearer token and start a
re-distillation job (it fails fast here: there is no student model to train), which feeds the
re-distillation dashboard.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fakes.gateway_thread import GatewayThread
from fakes.openai_server import FakeOpenAI
from gateway.config import parse_config
from gateway.demo.processes import start_alertmanager, start_prometheus
from redistill.settings import TriggerSettings
from redistill.webhook import parse_alertmanager

from .conftest import DASHBOARDS, load_script, annotation_exprs, check_queries, panel_queries, substitute

pytestmark = pytest.mark.prometheus

MODEL = "intent"
ADMIN_KEY = "sk-ops-live-admin-00000000000000"
LIMITED_KEY = "sk-ops-live-limited-111111111111"
LIVE_DASHBOARDS = ("gateway.json", "distillation-health.json")
WEBHOOK_TOKEN = "ops-live-webhook-token"


@dataclass
class Receiver:
    """Records the webhook posts Alertmanager makes (method, path, headers, JSON body)."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.posts.append({"path": self.path, "authorization": self.headers.get("authorization"),
                                       "body": json.loads(body)})
                receiver.arrived.set()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@dataclass
class Live:
    prom_url: str
    gateway_url: str
    receiver: Receiver


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _student_answer(prompt: str) -> str:
    # Agrees with the teacher on most prompts, not all: both agree and disagree pairs exist.
    return "label billing" if "refund" in prompt or "invoice" in prompt else "label other"


def _teacher_answer(prompt: str) -> str:
    return "label billing" if "refund" in prompt else "label other"


def _config(student: FakeOpenAI, teacher: FakeOpenAI, work: Path) -> Any:
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
            "store": {"url": f"sqlite:///{work / 'pairs.db'}", "flush_interval_s": 0.05},
            "agreement": {"min_samples": 5, "window_size": 50},
            "drift": {"reference_size": 20, "window_size": 20, "min_samples": 10, "every_n": 5},
        },
        # Alertmanager is the only trigger; any number of new pairs is enough to start a job.
        "redistill": {"workdir": str(work / "redistill"),
                      "trigger": {"min_new_pairs": 1, "watcher": {"enabled": False}}},
    }, environ={})


def _alertmanager_config(work: Path, gateway_url: str, receiver_url: str) -> Path:
    """dashboards/alertmanager.example.yml pointed at the live gateway (and a recording receiver), no waits."""
    cfg = yaml.safe_load((DASHBOARDS / "alertmanager.example.yml").read_text())
    token = work / "webhook-token"
    token.write_text(WEBHOOK_TOKEN)
    for r in cfg["receivers"]:
        hooks = r.get("webhook_configs", [])
        for hook in hooks:
            hook["url"] = hook["url"].replace("http://GATEWAY:8080", gateway_url)
            hook["http_config"]["authorization"]["credentials_file"] = str(token)
        hooks += [{**hook, "url": hook["url"].replace(gateway_url, receiver_url)} for hook in list(hooks)]
    for route in [cfg["route"], *cfg["route"]["routes"]]:
        route.update({"group_wait": "0s", "group_interval": "1s"})
    path = work / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: dict[str, str]) -> Iterator[Live]:
    """Runs gateway + fakes + Prometheus + Alertmanager, sends the traffic."""
    work = tmp_path_factory.mktemp("ops-live")
    render = load_script("render_rules").render_rules
    # Production rules except: 1 s evaluation, no `for:`, and an agreement threshold above 100 % so
    # the live lower bound is always under it (the alert must fire on real gauges).
    rule_files = render(work / "rules", interval="1s", for_all="0s", thresholds={"StudentAgreementLow": 1.01})
    receiver = Receiver()
    hook_server = receiver.serve()
    token_env = TriggerSettings().webhook_token_env
    saved_token = os.environ.get(token_env)
    os.environ[token_env] = WEBHOOK_TOKEN  # the gateway reads its webhook token from the environment
    try:
        with FakeOpenAI(answers=_student_answer, logprob=lambda p: -3.0 if "unsure" in p else -0.1) as student, \
                FakeOpenAI(answers=_teacher_answer) as teacher, \
                GatewayThread(_config(student, teacher, work)) as gw:
            am = start_alertmanager(
                _alertmanager_config(work, gw.url, f"http://127.0.0.1:{hook_server.server_port}"),
                workdir=work / "alertmanager", binary=prometheus_bin["prometheus-alertmanager"])
            prom_cfg = work / "prometheus.yml"
            prom_cfg.write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in rule_files],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am.port}"]}]}]},
                "scrape_configs": [{"job_name": "distillgate", "static_configs": [{"targets": [f"127.0.0.1:{gw.port}"]}]}],
            }))
            prom = start_prometheus(prom_cfg, workdir=work / "prometheus", binary=prometheus_bin["prometheus"])
            try:
                _send_traffic(gw.url, student)
                _wait_for_scrapes(prom.url, gw.url)
                yield Live(prom.url, gw.url, receiver)
            finally:
                prom.stop()
                am.stop()
    finally:
        hook_server.shutdown()
        if saved_token is None:
            os.environ.pop(token_env, None)
        else:
            os.environ[token_env] = saved_token


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


def _query(prom_url: str, expr: str, *, instant: bool) -> list[dict[str, Any]]:
    return check_queries.query(prom_url, expr, instant=instant)


def _wait_for_scrapes(prom_url: str, gateway_url: str) -> None:
    """Until Prometheus has the gateway's final counters and a few rule evaluations on top of them."""
    want = httpx.get(gateway_url + "/metrics", timeout=5).text.count("distillgate_requests_total{")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        series = _query(prom_url, "distillgate_requests_total", instant=True)
        rules = _query(prom_url, "model_route:distillgate_requests:rate5m", instant=True)
        if len(series) >= want and rules:
            time.sleep(3)  # a few more scrapes and evaluations: rates need two samples
            return
        time.sleep(0.5)
    pytest.fail(f"Prometheus never scraped the gateway's {want} request series")


def _check(prom_url: str, queries: list[Any], model: str) -> list[str]:
    empty = check_queries.check(prom_url, queries, model=model, rate_interval="15s", range_="5m")
    return [f"{q}: {q.expr}" for q in empty]


@pytest.mark.parametrize("dashboard", LIVE_DASHBOARDS)
@pytest.mark.parametrize("model", [".*", MODEL])
def test_every_panel_query_returns_series(live: Live, dashboard: str, model: str) -> None:
    queries = [q for q in panel_queries() if q.dashboard == dashboard]
    assert queries
    empty = _check(live.prom_url, queries, model)
    assert not empty, "panel queries with no series:\n" + "\n".join(empty)


def test_model_variable_filters(live: Live) -> None:
    """The same queries with an unknown model return nothing: the filter is applied, not ignored."""
    queries = [q for q in panel_queries() if q.dashboard in LIVE_DASHBOARDS and '$model"' in q.expr]
    empty = _check(live.prom_url, queries, "no-such-model")
    assert len(empty) == len(queries)


def test_model_variable_query_lists_the_model(live: Live) -> None:
    r = httpx.get(f"{live.prom_url}/api/v1/label/model/values", params={"match[]": "distillgate_requests_total"}, timeout=10)
    assert MODEL in r.json()["data"]


# Series that appear only after a job succeeded and its candidate went through the gate and the
# promotion stages; here the job fails (no student model to train), so they stay empty. The
# end-to-end test, which re-distills for real, runs check_queries on the whole dashboard.
NEEDS_A_PROMOTION = {"Promotions by stage", "Gate results in range"}


def _gateway_metric(gateway_url: str, prefix: str) -> list[str]:
    return [line for line in httpx.get(gateway_url + "/metrics", timeout=5).text.splitlines() if line.startswith(prefix)]


def test_redistill_dashboard_shows_the_alert_triggered_job(live: Live) -> None:
    """Alertmanager -> gateway webhook -> accepted trigger -> job started and finished -> panels."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        finished = [l for l in _gateway_metric(live.gateway_url, "distillgate_redistill_jobs_total{")
                    if 'status="started"' not in l and not l.endswith(" 0.0")]
        if finished:
            break
        time.sleep(1)
    triggers = _gateway_metric(live.gateway_url, "distillgate_redistill_triggers_total{")
    assert any(f'model="{MODEL}"' in l and 'status="accepted"' in l for l in triggers), triggers
    assert finished, "the re-distillation job never finished: " + str(_gateway_metric(live.gateway_url, "distillgate_redistill"))
    time.sleep(3)  # scraped and evaluated
    queries = [q for q in panel_queries() if q.dashboard == "redistill.json"]
    empty = {q.panel for q in check_queries.check(live.prom_url, queries, model=MODEL, rate_interval="15s", range_="5m",
                                                  window_s=180)}
    assert empty <= NEEDS_A_PROMOTION, f"panels with no series: {sorted(empty - NEEDS_A_PROMOTION)}"
    for _, expr in annotation_exprs():  # promotion annotations: valid queries (no promotion happened)
        _query(live.prom_url, substitute(expr, model=MODEL, rate_interval="15s", range_="5m"), instant=False)
    # The failed job also fires RedistillJobFailed: its counter series was born at 1, the case
    # increase() cannot see and the rule's second branch exists for.
    firing = _query(live.prom_url, f'ALERTS{{alertname="RedistillJobFailed",alertstate="firing",model="{MODEL}"}}',
                    instant=True)
    assert firing, "RedistillJobFailed did not fire for the failed job"


def test_retraining_alert_reaches_the_webhook_with_its_bearer_token(live: Live) -> None:
    """Prometheus fires StudentAgreementLow on the live agreement gauges; Alertmanager routes it."""
    deadline = time.monotonic() + 60
    hits: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not hits:
        live.receiver.arrived.wait(1)
        hits = [p for p in list(live.receiver.posts)
                if any(a["labels"].get("alertname") == "StudentAgreementLow" for a in p["body"]["alerts"])]
    assert hits, f"no StudentAgreementLow webhook within 60 s; got {[p['body'].get('groupLabels') for p in live.receiver.posts]}"
    post = hits[0]
    assert post["path"] == "/v1/distillgate/alerts"
    assert post["authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    body = post["body"]
    assert body["version"] == "4" and body["receiver"] == "distillgate-redistill"
    alert = next(a for a in body["alerts"] if a["labels"]["alertname"] == "StudentAgreementLow")
    assert alert["labels"]["model"] == MODEL and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"].endswith("#studentagreementlow")
    assert 0.0 <= float(alert["annotations"]["value"]) <= 1.0
    # The gateway's own parser turns it into a re-distillation trigger for the model.
    triggers = parse_alertmanager(body, TriggerSettings().alert_names, now=time.time())
    assert [t.model for t in triggers] == [MODEL]
    assert triggers[0].metrics["value"] == pytest.approx(float(alert["annotations"]["value"]))
    # Only the retraining alerts go to the webhook.
    names = {a["labels"]["alertname"] for p in live.receiver.posts for a in p["body"]["alerts"]}
    assert names <= set(TriggerSettings().alert_names)


def test_check_queries_cli(live: Live) -> None:
    """The operator's smoke check: exit 0 with data, 1 listing empty panels, 2 when Prometheus is unreachable."""
    script = str(DASHBOARDS / "check_queries.py")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120)

    ok = run("--prometheus", live.prom_url, "--dashboard", "gateway.json", "--model", MODEL)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    empty = run("--prometheus", live.prom_url, "--dashboard", "gateway.json", "--model", "no-such-model")
    assert empty.returncode == 1
    assert "no series: gateway.json / Requests by route / A" in empty.stdout
    down = run("--prometheus", "http://127.0.0.1:9", "--dashboard", "gateway.json")
    assert down.returncode == 2 and "cannot reach" in down.stderr
