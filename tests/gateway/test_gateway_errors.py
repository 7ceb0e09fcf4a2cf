"""Every error status, in OpenAI's error JSON, from a real gateway; and no request body yields a 500."""
from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import USER_KEY, chat_body, metric_value, sha
from fakes.gateway_thread import GatewayThread

AUTH = {"authorization": f"Bearer {USER_KEY}"}


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text
    if code is not None:
        assert err["code"] == code
    return err


@pytest.fixture
def gw(make_config):
    config = make_config({"server": {"max_body_bytes": 2048}},
                         routing={"fallback": {"enabled": False}, "retries": {"max_attempts": 1}})
    with GatewayThread(config, evaluator=False) as g:
        yield g


def test_400_malformed_json_and_bad_fields(gw):
    url = gw.url + "/v1/chat/completions"
    _error(httpx.post(url, content=b"{not json", headers=AUTH), 400, "invalid_request")
    _error(httpx.post(url, content=b"[1, 2]", headers=AUTH), 400)
    assert _error(httpx.post(url, json={"messages": []}, headers=AUTH), 400)["param"] == "model"
    assert _error(httpx.post(url, json=chat_body(stream="yes"), headers=AUTH), 400)["param"] == "stream"


def test_401_missing_or_wrong_key(gw):
    url = gw.url + "/v1/chat/completions"
    _error(httpx.post(url, json=chat_body()), 401, "invalid_api_key")
    _error(httpx.post(url, json=chat_body(), headers={"authorization": "Bearer sk-wrong"}), 401, "invalid_api_key")
    _error(httpx.post(url, json=chat_body(), headers={"authorization": "Basic abc"}), 401)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])


def test_404_unknown_model_and_route(gw):
    err = _error(httpx.post(gw.url + "/v1/chat/completions", json=chat_body(model="gpt-9"), headers=AUTH), 404, "model_not_found")
    assert err["param"] == "model"
    _error(httpx.get(gw.url + "/v1/nowhere", headers=AUTH), 404)


def test_413_by_content_length_and_by_streamed_size(gw):
    url = gw.url + "/v1/chat/completions"
    big = chat_body("x" * 5000)
    _error(httpx.post(url, json=big, headers=AUTH), 413, "request_too_large")

    def chunks():  # no content-length: chunked transfer, so only the streamed size can catch it
        for _ in range(10):
            yield b" " * 500

    _error(httpx.post(url, content=chunks(), headers=AUTH), 413, "request_too_large")


def _raw_exchange(url: str, head: bytes, parts: list[tuple[float, bytes]], *, until: bytes | None = None,
                  wait_s: float = 10.0) -> tuple[bytes, float]:
    """Sends `head`, then each (pause, bytes) part, on one raw socket; answers what the server sent until it
    closed the connection (or, with `until`, until that was among it), and the seconds that took after the
    last part."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(head)
        for pause, data in parts:
            time.sleep(pause)
            sock.sendall(data)
        started, got = time.monotonic(), b""
        # The socket timeout turns a hang into a failure.
        while (until is None or until not in got) and (chunk := sock.recv(65536)):
            got += chunk
        return got, time.monotonic() - started


def _request_head(length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {USER_KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n").encode()


def test_408_when_the_body_stalls_and_slow_bodies_within_the_timeout_are_served(make_config):
    config = make_config({"server": {"body_timeout_s": 0.6}})
    body = orjson.dumps(chat_body())
    with GatewayThread(config, evaluator=False) as g:
        for label, parts in (("half a body", [(0.0, body[:10])]), ("headers only", [])):
            got, after_s = _raw_exchange(g.url, _request_head(len(body)), parts)
            head, _, payload = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), (label, got)
            assert b"connection: close" in head.lower(), label  # the rest of the body may still come: closed
            error = orjson.loads(payload)["error"]
            assert error["code"] == "request_timeout" and set(error) == {"message", "type", "param", "code"}
            assert 0.3 < after_s < 5.0, (label, after_s)  # the timeout, not a hang

        # A body that arrives in pieces within the timeout is served, on a connection kept alive (0.3 s in all:
        # the timeout bounds the whole body, not each wait).
        answer, _ = _raw_exchange(g.url, _request_head(len(body)), [(0.15, body[:10]), (0.15, body[10:])],
                                  until=b"student says hi")
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert b"connection: close" not in answer.lower()

        metrics = httpx.get(g.url + "/metrics").text
        assert metric_value(metrics, "distillgate_requests_total", model="unknown", route="none", status="408") == 2
        assert httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH).status_code == 200


def test_429_rate_limit_with_retry_after(make_config):
    config = make_config({"auth": {"keys": [
        {"name": "user", "sha256": sha(USER_KEY), "rate_limit": {"requests_per_minute": 2}}]}})
    with GatewayThread(config, evaluator=False) as g:
        url = g.url + "/v1/chat/completions"
        assert [httpx.post(url, json=chat_body(), headers=AUTH).status_code for _ in range(2)] == [200, 200]
        r = httpx.post(url, json=chat_body(), headers=AUTH)
        _error(r, 429, "rate_limit_exceeded")
        assert int(r.headers["retry-after"]) >= 1
        assert metric_value(httpx.get(g.url + "/metrics").text, "distillgate_rate_limited_total", model="support") == 1


def test_429_tokens_per_minute(make_config):
    config = make_config({"auth": {"keys": [
        {"name": "user", "sha256": sha(USER_KEY), "rate_limit": {"tokens_per_minute": 5}}]}})
    with GatewayThread(config, evaluator=False) as g:
        url = g.url + "/v1/chat/completions"
        # each answer costs 1 prompt + 3 completion tokens: the second request drains the bucket
        assert [httpx.post(url, json=chat_body(), headers=AUTH).status_code for _ in range(2)] == [200, 200]
        _error(httpx.post(url, json=chat_body(), headers=AUTH), 429)


def test_502_connect_failure_and_garbage(make_config, student):
    config = make_config(routing={"fallback": {"enabled": False}, "retries": {"max_attempts": 1}})
    dead = config.model_copy(deep=True)
    dead.upstreams["vllm"].base_url = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    with GatewayThread(dead, evaluator=False) as g:
        _error(httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH), 502, "upstream_unavailable")
    with GatewayThread(config, evaluator=False) as g:
        student.mode = "garbage"
        _error(httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH), 502, "upstream_bad_response")
        student.mode = "drop"
        _error(httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH), 502, "upstream_unavailable")


def test_504_upstream_timeout(make_config, student):
    config = make_config({"upstreams": {"vllm": {"timeouts": {"first_byte_s": 0.5}}}},
                         routing={"fallback": {"enabled": False}, "retries": {"max_attempts": 1}})
    student.delay_s = 2.0
    with GatewayThread(config, evaluator=False) as g:
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH, timeout=10)
        _error(r, 504, "upstream_timeout")
        assert r.headers["x-distillgate-route"] == "student"


def test_first_byte_timeout_bounds_the_headers_not_a_streams_gaps(make_config, student):
    """first_byte_s is the wait for the response headers (a stream whose headers are late is a 504); gaps
    between a stream's chunks longer than it are fine (total_s bounds the whole answer)."""
    config = make_config({"upstreams": {"vllm": {"timeouts": {"first_byte_s": 0.3}}}},
                         routing={"fallback": {"enabled": False}, "retries": {"max_attempts": 1}})
    student.answer, student.stream_delay_s = "slow words", 0.6
    with GatewayThread(config, evaluator=False) as g:
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY, max_retries=0)
        stream = client.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).split() == ["slow", "words"]
        student.stream_delay_s, student.delay_s = 0.0, 1.5
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH, timeout=10)
        _error(r, 504, "upstream_timeout")


def test_a_cancelled_upstream_call_stays_cancelled(student):
    """Only the first-byte deadline turns a cancellation into UpstreamTimeout; a caller's own cancellation
    (a client gone, a shutdown) propagates as such and leaves no deadline behind."""
    from gateway.config import UpstreamSettings
    from gateway.errors import UpstreamTimeout
    from gateway.upstreams import OpenAIUpstream

    async def run() -> None:
        upstream = OpenAIUpstream("vllm", UpstreamSettings(base_url=student.url, timeouts={"first_byte_s": 0.3}))
        await upstream.start()
        try:
            body = b'{"model": "student-served", "messages": [{"role": "user", "content": "x"}]}'
            call = asyncio.create_task(upstream.post("chat", body, {}, {}))
            await asyncio.sleep(0.1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert not upstream._first_byte.pending
            with pytest.raises(UpstreamTimeout):  # the deadline's own cancellation, on the same upstream
                await upstream.post("chat", body, {}, {})
            assert not upstream._first_byte.pending
        finally:
            await upstream.close()

    student.delay_s = 1.0
    asyncio.run(run())


def test_upstream_4xx_passes_through(gw, student):
    student.mode, student.status = "status", 422
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert _error(r, 422)["message"] == "fake upstream says 422"
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=USER_KEY, max_retries=0)
    student.status = 400
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])


def test_bad_values_get_openai_errors_never_500(gw, student):
    url = gw.url + "/v1/chat/completions"
    _error(httpx.post(url, content=b'{"model": "support", "messages": "\xff\xfe"}', headers=AUTH), 400, "invalid_request")
    _error(httpx.post(url, content=b'{"model": "\\ud800"}', headers=AUTH), 400)  # a lone surrogate
    _error(httpx.post(url, content=b'{"model": "support", "n": 1e400}', headers=AUTH), 400)
    _error(httpx.post(url, content=b"[" * 5000 + b"]" * 5000, headers=AUTH), 413)
    _error(httpx.post(url, content=b"[" * 600 + b"]" * 600, headers=AUTH), 400)  # nested too deep / not an object
    for model in (7, ["support"], {"name": "support"}, None, True):
        assert _error(httpx.post(url, json=chat_body(model=model), headers=AUTH), 400)["param"] == "model"
    # values the upstream rejects are forwarded as sent and its 400 reaches the client unchanged
    for extra in ({"n": 10**12}, {"max_tokens": -5}):
        err = _error(httpx.post(url, json=chat_body(**extra), headers=AUTH), 400)
        assert err["message"].startswith(next(iter(extra))) and student.requests[-1][next(iter(extra))] == extra[next(iter(extra))]
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=USER_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1"):
        client.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}], max_tokens=-1)


def test_upstream_error_without_openai_json_is_wrapped(gw, student):
    student.mode, student.status = "status_html", 404
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert r.headers["content-type"].startswith("application/json")
    assert _error(r, 404)["message"] == "upstream answered 404"
    student.status = 503  # fallback is off in this gateway: the 503 itself reaches the client, as JSON
    assert _error(httpx.post(gw.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH), 503)["type"] == "upstream_error"


def test_405_on_get_of_a_post_route(gw):
    _error(httpx.get(gw.url + "/v1/chat/completions", headers=AUTH), 405)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["support", "other", "nope", ""]) | json_values,
        "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=30)}), max_size=3) | json_values,
        "stream": st.booleans() | json_values,
        "max_tokens": json_values,
        "logprobs": json_values,
        "top_logprobs": st.integers(-3, 30) | json_values,
        "n": st.integers(-2, 2**40) | json_values,
        "stream_options": json_values,
        "user": json_values,
    },
)


def test_generated_bodies_never_500(make_config):
    # `support` runs the cascade (it rewrites logprobs fields), `other` the plain path; both are generated.
    config = make_config({"server": {"max_body_bytes": 2048}, "auth": {"keys": [{"name": "user", "sha256": sha(USER_KEY)}]}},
                         routing={"fallback": {"enabled": False}, "retries": {"max_attempts": 1},
                                  "cascade": {"enabled": True, "top_logprobs": 2}})
    seen: set[int] = set()
    with GatewayThread(config, evaluator=False) as gw, httpx.Client(base_url=gw.url, headers=AUTH, timeout=10) as client:

        # The explicit examples make sure both outcomes the last line asserts are exercised every run: random
        # bodies are valid rarely enough that 120 of them occasionally held no 200.
        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body=bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
        @example(body={"model": "other", "messages": [{"role": "user", "content": "hi"}]}, path="/v1/chat/completions")
        @example(body={"model": "support", "messages": [{"role": "user", "content": "hi"}], "logprobs": "yes"},
                 path="/v1/chat/completions")
        @example(body={"messages": []}, path="/v1/chat/completions")
        def check(body, path):
            r = client.post(path, json=body)
            seen.add(r.status_code)
            assert r.status_code < 500, (body, r.status_code, r.text)
            if r.status_code != 200:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}

        check()

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(raw=st.binary(max_size=200) | st.builds(lambda b: b'{"model": "support", "x": "' + b + b'"}', st.binary(max_size=20)))
        def check_bytes(raw):
            r = client.post("/v1/chat/completions", content=raw)
            assert r.status_code < 500, (raw, r.text)
            if r.status_code != 200:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}

        check_bytes()
    assert 200 in seen and 400 in seen
