"""kind=litellm upstreams: litellm's client (here its OpenAI provider, pointed at a real fake server)
normalised back to OpenAI JSON and SSE by the gateway."""
from __future__ import annotations

import httpx
import openai

from conftest import USER_KEY, chat_body
from fakes.gateway_thread import GatewayThread


def test_litellm_teacher_json_and_stream(make_config, teacher, monkeypatch):
    monkeypatch.setenv("FAKE_TEACHER_KEY", "sk-fake-teacher")
    config = make_config({"upstreams": {"teacher": {
        "kind": "litellm", "litellm_model": "openai/teacher-model", "api_key_env": "FAKE_TEACHER_KEY"}}},
        routing={"student_percent": 0})
    with GatewayThread(config, evaluator=False) as g:
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY)
        raw = client.chat.completions.with_raw_response.create(
            model="support", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert raw.headers["x-distillgate-route"] == "teacher"
        reply = raw.parse()
        assert reply.choices[0].message.content == "teacher says hi" and reply.usage.completion_tokens == 3
        assert teacher.requests[-1]["model"] == "teacher-model" and teacher.requests[-1]["max_tokens"] == 5
        assert teacher.headers[-1]["authorization"] == "Bearer sk-fake-teacher"
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices]
        assert "".join(parts) == "teacher says hi"
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True),
                          headers={"authorization": f"Bearer {USER_KEY}"}) as r:
            assert b"".join(r.iter_raw()).endswith(b"data: [DONE]\n\n")
        teacher.mode, teacher.status = "status", 400
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers={"authorization": f"Bearer {USER_KEY}"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
