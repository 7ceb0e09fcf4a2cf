"""Every gateway endpoint through the official `openai` client (sync, async, streaming) and raw HTTP."""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from conftest import ADMIN_KEY, OTHER_KEY, USER_KEY, chat_body, metric_value
from fakes.gateway_thread import GatewayThread


@pytest.fixture
def gw(make_config):
    with GatewayThread(make_config(), evaluator=False) as g:
        yield g


def test_chat_sync_rewrites_only_model_and_tags_the_route(gw, student):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=USER_KEY)
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "hi there"}], temperature=0.3, max_tokens=7, user="u1")
    reply = raw.parse()
    assert reply.choices[0].message.content == "student says hi"
    assert reply.usage.completion_tokens == 3
    assert raw.headers["x-distillgate-route"] == "student"
    assert raw.headers["x-request-id"].startswith("dg-")
    sent = student.requests[-1]
    assert sent == {"model": "student-served", "messages": [{"role": "user", "content": "hi there"}],
                    "temperature": 0.3, "max_tokens": 7, "user": "u1"}
    # the request id travels to the upstream too
    assert student.headers[-1]["x-request-id"] == raw.headers["x-request-id"]


def test_client_request_id_is_kept(gw):
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat_body(),
                   headers={"authorization": f"Bearer {USER_KEY}", "x-request-id": "my-id-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "my-id-42"


def test_chat_async_and_streaming(gw):
    async def go():
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=USER_KEY)
        replies = await asyncio.gather(*(client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(8)))
        stream = await client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "s"}], stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return replies, parts

    replies, parts = asyncio.run(go())
    assert {r.choices[0].message.content for r in replies} == {"student says hi"}
    assert "".join(parts) == "student says hi"


def test_completions_and_embeddings(gw, student):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=USER_KEY)
    c = client.completions.create(model="support", prompt="say hi", max_tokens=5)
    assert c.choices[0].text == "student says hi"
    assert student.requests[-1]["model"] == "student-served" and student.requests[-1]["prompt"] == "say hi"
    e = client.embeddings.create(model="support", input=["abc", "de"])
    assert [d.embedding[0] for d in e.data] == [3.0, 2.0]
    assert student.requests[-1]["model"] == "student-served"


def test_models_lists_logical_names_per_key(gw):
    admin = openai.OpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY)
    assert sorted(m.id for m in admin.models.list()) == ["other", "support"]
    user = openai.OpenAI(base_url=gw.url + "/v1", api_key=USER_KEY)
    assert [m.id for m in user.models.list()] == ["support"]
    r = httpx.get(gw.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_key_allow_list_hides_other_models(gw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"
    ok = client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    assert ok.choices[0].message.content == "student says hi"


def test_health_ready_and_metrics(gw, student):
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    # Before any traffic every configured model x side exports a closed breaker (the Grafana panel is never empty).
    fresh = httpx.get(gw.url + "/metrics").text
    for model in ("support", "other"):
        for route in ("student", "teacher"):
            assert metric_value(fresh, "distillgate_breaker_state", model=model, route=route) == 0, (model, route)
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["upstreams"] == {"vllm": True, "teacher": True}
    httpx.post(gw.url + "/v1/chat/completions", json=chat_body(), headers={"authorization": f"Bearer {USER_KEY}"})
    text = httpx.get(gw.url + "/metrics").text
    assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="200") == 1
    assert metric_value(text, "distillgate_prompt_tokens_total", model="support", route="student") == 1
    assert metric_value(text, "distillgate_completion_tokens_total", model="support", route="student") == 3
    assert metric_value(text, "distillgate_request_duration_seconds_count", model="support", route="student") == 1
    assert metric_value(text, "distillgate_overhead_seconds_count", model="support", route="student") == 1
    assert metric_value(text, "distillgate_in_flight_requests", model="support") == 0
    assert metric_value(text, "distillgate_breaker_state", model="support", route="student") == 0


def test_readyz_reports_an_unreachable_upstream(make_config, student):
    config = make_config()
    with GatewayThread(config, evaluator=False) as g:
        student.mode = "fail"
        r = httpx.get(g.url + "/readyz")
        assert r.status_code == 503 and r.json()["upstreams"]["vllm"] is False


def test_upstream_cookies_are_not_replayed_to_later_requests(make_config, student):
    """One upstream session carries every request: a cookie the upstream sets (a load balancer's affinity
    cookie in front of several vLLM replicas would pin all traffic to one) must not ride along on the next
    request, nor reach the client. By host name: aiohttp's default jar ignores cookies from IP addresses."""
    student.set_cookie = "INGRESSCOOKIE=replica-1; Path=/; HttpOnly"
    by_name = student.url.replace("127.0.0.1", "localhost")
    with GatewayThread(make_config({"upstreams": {"vllm": {"base_url": by_name}}}), evaluator=False) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=USER_KEY)
        replies = [client.chat.completions.with_raw_response.create(
            model="support", messages=[{"role": "user", "content": text}]) for text in ("a", "b")]
    assert all("set-cookie" not in r.headers for r in replies)
    assert len(student.headers) == 2
    assert [h.get("cookie") for h in student.headers] == [None, None]


def test_evaluator_can_be_switched_off_in_config(make_config, tmp_path):
    """evaluator.enabled: false serves as a plain router: answers and gateway metrics, no evaluator at all."""
    config = make_config({"evaluator": {"enabled": False, "store": {"url": f"sqlite:///{tmp_path}/pairs.db"}}})
    with GatewayThread(config) as gw:
        assert gw.app.state.evaluator is None
        reply = openai.OpenAI(base_url=gw.url + "/v1", api_key=USER_KEY).chat.completions.create(
            model="support", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "student says hi"
        text = httpx.get(gw.url + "/metrics").text
    assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="200") == 1
    assert "distillgate_shadow_offered_total" not in text
    assert not (tmp_path / "pairs.db").exists()
