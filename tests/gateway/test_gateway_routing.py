"""Routing policies against real fake upstreams: split, sticky, override, canary, fallback, breaker,
retries within budget, cascade."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from sqlalchemy import create_engine

from conftest import ADMIN_KEY, USER_KEY, chat_body, metric_value
from evaluator.store.schema import metadata
from fakes.gateway_thread import GatewayThread
from redistill.registry import Registry

AUTH = {"authorization": f"Bearer {USER_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _routes(g: GatewayThread, n: int, headers=AUTH, body_fn=lambda i: chat_body(f"q{i}")) -> list[str]:
    with httpx.Client(base_url=g.url, timeout=10) as c:
        out = []
        for i in range(n):
            r = c.post("/v1/chat/completions", json=body_fn(i), headers=headers)
            assert r.status_code == 200, r.text
            out.append(r.headers["x-distillgate-route"])
        return out


def _metrics(g: GatewayThread) -> str:
    return httpx.get(g.url + "/metrics").text


def _wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_weighted_split(make_config, student, teacher):
    with GatewayThread(make_config(routing={"student_percent": 50}), evaluator=False) as g:
        routes = _routes(g, 300)
    n_student = routes.count("student")
    # Binomial(300, 0.5): outside [90, 210] has probability < 1e-12.
    assert 90 <= n_student <= 210 and routes.count("teacher") == 300 - n_student
    assert len(student.requests) == n_student and len(teacher.requests) == 300 - n_student
    assert {r["model"] for r in teacher.requests} == {"teacher-served"}
    with GatewayThread(make_config(routing={"student_percent": 0}), evaluator=False) as g:
        assert set(_routes(g, 20)) == {"teacher"}


def test_sticky_by_header_and_body_field(make_config):
    config = make_config(routing={"student_percent": 50, "sticky": {"header": "x-user-id", "body_field": "user"}})
    with GatewayThread(config, evaluator=False) as g:
        per_user = {}
        for u in range(20):
            routes = _routes(g, 4, headers={**AUTH, "x-user-id": f"user-{u}"})
            assert len(set(routes)) == 1, f"user-{u} was split: {routes}"
            per_user[u] = routes[0]
        assert set(per_user.values()) == {"student", "teacher"}
        # the body's `user` field is used when the header is absent, and agrees with the header
        by_body = _routes(g, 4, body_fn=lambda i: chat_body(f"q{i}", user="user-3"))
        assert set(by_body) == {per_user[3]}


def test_override_allowed_only_for_permitted_keys(make_config):
    with GatewayThread(make_config(), evaluator=False) as g:
        assert _routes(g, 3, headers={**ADMIN, "x-distillgate-route": "teacher"}) == ["teacher"] * 3
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers={**AUTH, "x-distillgate-route": "teacher"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers={**ADMIN, "x-distillgate-route": "gpt"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "x-distillgate-route"
    with GatewayThread(make_config(routing={"allow_override": False}), evaluator=False) as g:
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers={**ADMIN, "x-distillgate-route": "teacher"})
        assert r.status_code == 403


def test_canary_split_follows_the_registry(make_config, student, tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    metadata.create_all(engine)
    registry = Registry(engine, canary_percent=25.0)

    def version(vid: str):
        return registry.register(model="support", base_model="student-served", adapter_path=f"/a/{vid}",
                                 dataset_manifest_hash="h", gate_report={"passed": True}, version_id=vid)

    config = make_config({"server": {"registry_poll_s": 0.05}})
    with GatewayThread(config, registry=registry, evaluator=False) as g:
        _routes(g, 2)
        assert [r["model"] for r in student.requests] == ["student-served"] * 2  # no live version: base model
        registry.promote_live(version("v1").id, "first")
        registry.set_status(version("v2").id, "canary", "try it")
        # Wait on the gateway's own registry snapshot: one request landing on v1 could be the live share
        # of a snapshot that does not have the canary yet.
        poller = g.app.state.poller
        _wait_for(lambda: (a := poller.active("support")) is not None and a.live is not None
                  and a.live.id == "v1" and a.canary is not None and a.canary.id == "v2")
        student.requests.clear()
        _routes(g, 200)
        models = [r["model"] for r in student.requests]
        assert set(models) <= {"v1", "v2"}
        assert 20 <= models.count("v2") <= 85  # Binomial(200, 0.25): mean 50
        registry.set_status("v2", "rejected", "bad canary")
        _wait_for(lambda: (a := poller.active("support")) is not None and a.canary is None)
        student.requests.clear()
        _routes(g, 30)
        assert {r["model"] for r in student.requests} == {"v1"}
        after = registry.rollback("support", "bad live")
        expected = after.live.id if after.live is not None else "student-served"
        _wait_for(lambda: (_routes(g, 1), student.requests[-1]["model"] == expected)[1])


def test_fallback_on_5xx_and_timeout(make_config, student, teacher):
    config = make_config({"upstreams": {"vllm": {"timeouts": {"first_byte_s": 1.0}}}},
                         routing={"retries": {"max_attempts": 1}, "fallback": {"breaker": {"failure_threshold": 100}}})
    with GatewayThread(config, evaluator=False) as g:
        student.mode = "fail"
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="support", messages=[{"role": "user", "content": "x"}])
        assert raw.headers["x-distillgate-route"] == "fallback"
        assert raw.parse().choices[0].message.content == "teacher says hi"
        student.mode, student.delay_s = "normal", 2.5
        assert _routes(g, 1) == ["fallback"]
        student.delay_s = 0
        student.mode, student.status = "status", 400  # a client error is not the student's fault: no fallback
        assert httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH).status_code == 400
        text = _metrics(g)
        assert metric_value(text, "distillgate_fallbacks_total", model="support") == 2
        # the 1 s the timed-out student attempt took is upstream time, not gateway overhead
        duration = metric_value(text, "distillgate_request_duration_seconds_sum", model="support", route="fallback")
        overhead = metric_value(text, "distillgate_overhead_seconds_sum", model="support", route="fallback")
        assert overhead <= duration - 1.0
        assert metric_value(text, "distillgate_requests_total", model="support", route="fallback", status="200") == 2
        assert len(teacher.requests) == 2


def test_breaker_opens_half_opens_and_closes(make_config, student, teacher):
    config = make_config(routing={"retries": {"max_attempts": 1},
                                  "fallback": {"breaker": {"failure_threshold": 2, "open_s": 0.5}}})

    def state() -> float:
        return metric_value(_metrics(g), "distillgate_breaker_state", model="support", route="student")

    with GatewayThread(config, evaluator=False) as g:
        assert state() == 0
        student.mode = "fail"
        assert _routes(g, 2) == ["fallback", "fallback"]
        assert state() == 2 and len(student.requests) == 2
        assert _routes(g, 3) == ["fallback"] * 3
        assert len(student.requests) == 2  # open: the student is not even tried
        student.mode, student.delay_s = "normal", 2.0  # a slow probe, so its half-open state can be seen
        time.sleep(0.6)  # let open_s pass so the next request is the half-open probe
        done: list[str] = []
        probe = threading.Thread(target=lambda: done.extend(_routes(g, 1)))
        probe.start()
        _wait_for(lambda: state() == 1)
        probe.join()
        assert done == ["student"] and state() == 0
        student.delay_s = 0
        assert _routes(g, 2) == ["student", "student"]


def test_retries_stay_within_budget(make_config, student):
    config = make_config(routing={"retries": {"max_attempts": 3, "budget_ratio": 0.1}, "fallback": {
        "enabled": False, "breaker": {"failure_threshold": 100}}})
    with GatewayThread(config, evaluator=False) as g:
        student.fail_next = 1
        assert _routes(g, 1) == ["student"]  # the retry succeeded
        assert len(student.requests) == 2
        student.requests.clear()
        student.mode = "fail"
        statuses = [httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH).status_code for _ in range(6)]
        assert statuses == [500] * 6
        retries = metric_value(_metrics(g), "distillgate_retries_total", model="support", route="student")
        # 6 requests x 2 possible retries = 12, but the budget (reserve 3 + 0.1 per request, one spent
        # above) holds 2.2 here: two retries on the first failing request, then none.
        assert len(student.requests) == 6 + 2
        assert retries == 1 + 2


def test_cascade_escalates_on_low_logprob(make_config, student, teacher):
    student.logprob = lambda prompt: -3.0 if prompt == "hard" else -0.1
    config = make_config(routing={"cascade": {"enabled": True, "min_mean_logprob": -1.0}})
    with GatewayThread(config, evaluator=False) as g:
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY)
        easy = client.chat.completions.with_raw_response.create(model="support", messages=[{"role": "user", "content": "easy"}])
        assert easy.headers["x-distillgate-route"] == "student"
        assert easy.parse().choices[0].logprobs is None  # the client did not ask: cascade's logprobs are removed
        assert student.requests[-1]["logprobs"] is True
        hard = client.chat.completions.with_raw_response.create(model="support", messages=[{"role": "user", "content": "hard"}])
        assert hard.headers["x-distillgate-route"] == "teacher"
        assert hard.parse().choices[0].message.content == "teacher says hi"
        assert "logprobs" not in teacher.requests[-1]
        wants = client.chat.completions.create(model="support", messages=[{"role": "user", "content": "easy"}], logprobs=True)
        assert wants.choices[0].logprobs.content[0].logprob == pytest.approx(-0.1)
        text = _metrics(g)
        assert metric_value(text, "distillgate_cascade_checks_total", model="support") == 3
        assert metric_value(text, "distillgate_escalations_total", model="support") == 1


def test_cascade_json_validator(make_config, student):
    student.answers = {"a": "not json at all", "b": '{"intent": "refund"}'}
    config = make_config(routing={"cascade": {"enabled": True, "validator": "json", "min_mean_logprob": None}})
    with GatewayThread(config, evaluator=False) as g:
        assert _routes(g, 1, body_fn=lambda i: chat_body("a")) == ["teacher"]
        assert _routes(g, 1, body_fn=lambda i: chat_body("b")) == ["student"]
        assert metric_value(_metrics(g), "distillgate_escalations_total", model="support") == 1


def test_teacher_falls_back_to_the_student_when_enabled(make_config, student, teacher):
    routing = {"student_percent": 0, "retries": {"max_attempts": 1},
               "fallback": {"teacher_to_student": True, "breaker": {"failure_threshold": 3, "open_s": 60}}}
    with GatewayThread(make_config(routing=routing), evaluator=False) as g:
        teacher.mode = "fail"
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="support", messages=[{"role": "user", "content": "x"}])
        assert raw.headers["x-distillgate-route"] == "fallback"
        assert raw.parse().choices[0].message.content == "student says hi"
        assert student.requests[-1]["model"] == "student-served"
        teacher.mode = "drop"  # a connect error falls back too
        assert _routes(g, 1) == ["fallback"]
        # an overridden route to the teacher falls back as well; then the breaker is open (3 failures)
        assert _routes(g, 1, headers={**ADMIN, "x-distillgate-route": "teacher"}) == ["fallback"]
        tried = len(teacher.requests)
        assert _routes(g, 2) == ["fallback", "fallback"] and len(teacher.requests) == tried  # open: not tried
        text = _metrics(g)
        assert metric_value(text, "distillgate_breaker_state", model="support", route="teacher") == 2
        assert metric_value(text, "distillgate_fallbacks_total", model="support") == 5
        assert metric_value(text, "distillgate_requests_total", model="support", route="fallback", status="200") == 5
    with GatewayThread(make_config(routing={**routing, "fallback": {"teacher_to_student": True}}), evaluator=False) as g:
        teacher.mode, teacher.status = "status", 400  # not in on_status: the client's error passes through
        assert httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH).status_code == 400
    with GatewayThread(make_config(routing={"student_percent": 0, "retries": {"max_attempts": 1}}), evaluator=False) as g:
        teacher.mode = "fail"  # the default: no fallback from the teacher
        n_student = len(student.requests)
        assert httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH).status_code == 500
        assert len(student.requests) == n_student


def test_cascade_does_not_touch_requests_routed_to_the_teacher(make_config, teacher):
    config = make_config(routing={"student_percent": 0, "cascade": {"enabled": True}})
    with GatewayThread(config, evaluator=False) as g:
        assert _routes(g, 2) == ["teacher", "teacher"]
        assert all("logprobs" not in r for r in teacher.requests)
        assert metric_value(_metrics(g), "distillgate_cascade_checks_total", model="support") in (None, 0)


def test_failed_escalation_serves_the_students_answer_with_teacher_to_student(make_config, student, teacher):
    student.logprob = -3.0  # every answer escalates
    routing = {"cascade": {"enabled": True}, "retries": {"max_attempts": 1}, "fallback": {"teacher_to_student": True}}
    with GatewayThread(make_config(routing=routing), evaluator=False) as g:
        teacher.mode = "fail"
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="support", messages=[{"role": "user", "content": "x"}])
        assert raw.headers["x-distillgate-route"] == "fallback"
        answer = raw.parse().choices[0]
        assert answer.message.content == "student says hi" and answer.logprobs is None
        assert len(student.requests) == 1 and len(teacher.requests) == 1
        text = _metrics(g)
        assert metric_value(text, "distillgate_escalations_total", model="support") == 1
        assert metric_value(text, "distillgate_fallbacks_total", model="support") == 1
    with GatewayThread(make_config(routing={**routing, "fallback": {}}), evaluator=False) as g:
        assert httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH).status_code == 500
