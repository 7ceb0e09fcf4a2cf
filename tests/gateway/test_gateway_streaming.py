"""SSE pass-through: chunk by chunk, [DONE], include_usage, TTFT metrics, client disconnect cancelling
the upstream, fallback before the first byte."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from conftest import USER_KEY, chat_body, metric_value
from fakes.gateway_thread import GatewayThread

AUTH = {"authorization": f"Bearer {USER_KEY}"}


def _metrics_once(g: GatewayThread, name: str, value: float, **labels: str) -> str:
    """/metrics once `name{labels}` reached `value`: metrics are recorded after the client has the last byte."""
    deadline = time.monotonic() + 5.0
    while True:
        text = httpx.get(g.url + "/metrics").text
        if metric_value(text, name, **labels) == value or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


def test_stream_with_usage_and_done(make_config, student):
    student.stream_delay_s = 0.03  # separate network reads, so inter-chunk gaps exist to be measured
    with GatewayThread(make_config(), evaluator=False) as g:
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY)
        chunks = list(client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "one two"}], stream=True,
            stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "student says hi"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
        assert student.requests[-1]["stream_options"] == {"include_usage": True}
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-distillgate-route"] == "student" and r.headers["x-request-id"]
            raw = b"".join(r.iter_raw())
        assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"[DONE]") == 1
        assert b'"usage"' not in raw  # not asked for: not shown ...
        assert student.requests[-1]["stream_options"] == {"include_usage": True}  # ... but asked for, and counted
        text = _metrics_once(g, "distillgate_requests_total", 2, model="support", route="student", status="200")
        assert metric_value(text, "distillgate_ttft_seconds_count", model="support", route="student") == 2
        assert metric_value(text, "distillgate_inter_token_seconds_count", model="support", route="student") >= 2  # reads may coalesce on a busy machine
        assert metric_value(text, "distillgate_completion_tokens_total", model="support", route="student") == 6
        assert metric_value(text, "distillgate_prompt_tokens_total", model="support", route="student") == 3
        assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="200") == 2


def test_completions_stream(make_config):
    with GatewayThread(make_config(), evaluator=False) as g:
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY)
        parts = [c.choices[0].text for c in client.completions.create(model="support", prompt="p", stream=True) if c.choices]
        assert "".join(parts) == "student says hi"


def test_client_disconnect_cancels_the_upstream(make_config, student):
    student.answer = " ".join(f"w{i}" for i in range(100))
    student.stream_delay_s = 0.05
    with GatewayThread(make_config(), evaluator=False) as g:
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
            first = next(r.iter_raw())
            assert first.startswith(b"data: ")
        # the gateway must drop its upstream connection long before the 100 chunks (5 s) are out
        assert student.stream_closed.wait(4.0), "upstream stream was not cancelled"
        assert student.stream_disconnects == 1
        text = httpx.get(g.url + "/metrics").text
        assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="499") == 1
        assert metric_value(text, "distillgate_in_flight_requests", model="support") == 0


def test_a_client_that_leaves_a_unary_request_cancels_the_upstream_call(make_config, student):
    """Not only streams: a client whose own timeout (0.3 s) ends a non-streaming request while the upstream is
    still generating (3 s) makes the gateway drop its upstream connection once its watch starts
    (gateway.disconnects.UNARY_WATCH_AFTER_S, 1 s; vLLM then aborts the request), count a 499 and serve the
    next request as usual."""
    student.delay_s = 3.0
    with GatewayThread(make_config(), evaluator=False) as g:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH, timeout=0.3)
        assert student.abandoned_event.wait(2.0), "the upstream call outlived its client"
        assert student.abandoned == 1
        text = httpx.get(g.url + "/metrics").text
        assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="499") == 1
        assert metric_value(text, "distillgate_in_flight_requests", model="support") == 0
        student.delay_s = 1.3  # longer than the watch's 1 s: a watcher starts, and must not cancel an answer
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH, timeout=5)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "student says hi"
        assert student.abandoned == 1
        text = httpx.get(g.url + "/metrics").text
        assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="200") == 1


def test_finished_streams_reuse_the_upstream_connection_and_a_cancelled_one_does_not(make_config, student):
    with GatewayThread(make_config(), evaluator=False) as g:
        for _ in range(3):
            with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
                assert b"".join(r.iter_raw()).endswith(b"data: [DONE]\n\n")
        assert len(student.peers) == 3 and len(set(student.peers)) == 1  # one pooled connection carried all three
        student.answer = " ".join(f"w{i}" for i in range(100))
        student.stream_delay_s = 0.05
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
            next(r.iter_raw())
        assert student.stream_closed.wait(4.0)  # the unfinished one was dropped, so the upstream stopped
        student.answer, student.stream_delay_s = "ok", 0.0
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
            b"".join(r.iter_raw())
        assert student.peers[-1] != student.peers[0]  # ... and the next request needed a new connection


def test_disconnect_is_noticed_while_the_upstream_is_silent(make_config, student):
    """The disconnect watcher starts 50 ms into a stream (gateway.disconnects.STREAM_WATCH_AFTER_S), not at the next
    upstream chunk: here the next chunk is 1.5 s away, and the relay is cancelled long before."""
    student.answer = "a b c d e"
    student.stream_delay_s = 1.5
    with GatewayThread(make_config(), evaluator=False) as g:
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
            assert next(r.iter_raw()).startswith(b"data: ")
        gone = time.monotonic()
        while metric_value(httpx.get(g.url + "/metrics").text, "distillgate_requests_total", model="support",
                           route="student", status="499") != 1:
            assert time.monotonic() - gone < 1.2, "the relay was not cancelled before the upstream spoke again"
            time.sleep(0.02)
        assert student.stream_closed.wait(3.0)  # the upstream finds its connection gone at its next write


def test_stream_falls_back_before_first_byte(make_config, student):
    config = make_config(routing={"retries": {"max_attempts": 1}})
    with GatewayThread(config, evaluator=False) as g:
        student.mode = "fail"
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
            assert r.status_code == 200 and r.headers["x-distillgate-route"] == "fallback"
            body = b"".join(r.iter_raw())
        assert b"teacher" in body and body.endswith(b"data: [DONE]\n\n")


def test_stream_upstream_4xx_is_a_plain_error(make_config, student):
    with GatewayThread(make_config(), evaluator=False) as g:
        student.mode, student.status = "status", 400
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["message"] == "fake upstream says 400"


def test_mid_stream_upstream_failure_is_reported_in_band(make_config, student):
    student.answer = "a b c d e f"
    student.stream_cut_after = 2
    with GatewayThread(make_config(), evaluator=False) as g:
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
            assert r.status_code == 200
            raw = b"".join(r.iter_raw())
        events = [e for e in raw.split(b"\n\n") if e]
        assert len(events) == 3 and b'"error"' in events[-1] and b"[DONE]" not in raw
        text = httpx.get(g.url + "/metrics").text
        assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="502") == 1


@pytest.mark.parametrize(("null_usage", "delay_s"), [(False, 0.0), (True, 0.005)])
def test_usage_the_gateway_asked_for_is_hidden_byte_for_byte(make_config, student, null_usage, delay_s):
    """The client gets exactly the bytes the upstream sends when usage is not asked for (OpenAI's
    "usage": null on every chunk included), while token metrics count the stream."""
    student.created, student.null_usage, student.stream_delay_s = 1700000000, null_usage, delay_s
    student.answer = "a quoted \"usage\": null b"
    bodies = [("/chat/completions", chat_body("one two", stream=True)),
              ("/completions", {"model": "support", "prompt": "one two", "stream": True,
                                "stream_options": {"include_usage": False}})]
    with GatewayThread(make_config(), evaluator=False) as g:
        for path, body in bodies:
            with httpx.stream("POST", g.url + "/v1" + path, json=body, headers=AUTH) as r:
                via_gateway = b"".join(r.iter_raw())
            assert student.requests[-1]["stream_options"]["include_usage"] is True
            direct = httpx.post(student.url + path, json={**body, "model": "student-served"}).content
            assert b'"usage"' not in direct.replace(b'\\"usage\\"', b"")  # the fake adds none unasked
            assert via_gateway == direct
        text = _metrics_once(g, "distillgate_requests_total", 2, model="support", route="student", status="200")
        assert metric_value(text, "distillgate_prompt_tokens_total", model="support", route="student") == 4
        assert metric_value(text, "distillgate_completion_tokens_total", model="support", route="student") == 10  # 5 words, twice


def test_streaming_request_on_a_cascade_model_is_a_plain_student_stream(make_config, student):
    student.logprob = -5.0  # a non-streaming request would escalate
    with GatewayThread(make_config(routing={"cascade": {"enabled": True}}), evaluator=False) as g:
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=USER_KEY)
        with client.chat.completions.with_streaming_response.create(
                model="support", messages=[{"role": "user", "content": "x"}], stream=True) as r:
            assert r.headers["x-distillgate-route"] == "student"
            text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
        assert text == "student says hi"
        assert "logprobs" not in student.requests[-1]
        assert metric_value(httpx.get(g.url + "/metrics").text, "distillgate_cascade_checks_total", model="support") in (None, 0)


def test_client_hanging_up_right_after_done_is_a_complete_answer(make_config, student):
    student.linger_after_done_s = 30.0  # the upstream's end of stream comes long after [DONE]
    with GatewayThread(make_config(), evaluator=False) as g:
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
            raw = b""
            for part in r.iter_raw():
                raw += part
                if raw.endswith(b"data: [DONE]\n\n"):
                    break  # hang up, as the openai SDK may, without waiting for the end of the response
        assert student.stream_closed.wait(10), "the upstream stream was not closed after the client left"
        text = _metrics_once(g, "distillgate_requests_total", 1, model="support", route="student", status="200")
        assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="200") == 1
        assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="499") is None
        assert metric_value(text, "distillgate_completion_tokens_total", model="support", route="student") == 3


def test_the_done_event_ends_the_response_without_waiting_for_the_upstreams_end(make_config, student):
    """A client reading to the end of the response (not hanging up at [DONE]) has it when [DONE] arrives:
    the gateway ends the response with that read instead of waiting for the upstream's end of body, which
    this upstream holds back for 30 s. The upstream is then let go (its connection dropped, not pooled)."""
    student.linger_after_done_s = 30.0
    with GatewayThread(make_config(), evaluator=False) as g:
        timeout = httpx.Timeout(10.0, read=5.0)  # a response still open at [DONE] would hit the read timeout
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH,
                          timeout=timeout) as r:
            raw = b"".join(r.iter_raw())
        assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"[DONE]") == 1
        assert b"student" in raw
        assert student.stream_closed.wait(10), "the lingering upstream stream was not let go"
        text = _metrics_once(g, "distillgate_requests_total", 1, model="support", route="student", status="200")
        assert metric_value(text, "distillgate_requests_total", model="support", route="student", status="200") == 1
        assert metric_value(text, "distillgate_completion_tokens_total", model="support", route="student") == 3
        student.linger_after_done_s = 0.0
        for _ in range(2):  # an upstream that ends at [DONE] keeps its pooled connection
            with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True), headers=AUTH) as r:
                assert b"".join(r.iter_raw()).endswith(b"data: [DONE]\n\n")
        assert student.peers[-1] == student.peers[-2] != student.peers[0]


@pytest.mark.parametrize(("reads", "ends"), [
    ([b'data: {"a":1}\n\ndata: [DONE]\n\n'], True),
    ([b'data: {"a":1}\n\n', b"data: [DONE]\n\n"], True),
    ([b"data: [DONE]\n\n"], True),
    ([b'data: {"content":"x', b"data: [DONE]\n\n"], False),  # the read before ended inside a line
    ([b'data: {"content":"xdata: [DONE]\n\n'], False),
    ([b"data: [DONE]\r\n\r\n"], False),  # other framings end at the upstream's end of body, as before
    ([b"data: [DONE]\n\nmore"], False),
])
def test_done_event_detection(reads, ends) -> None:
    from gateway.streaming import _ends_with_done_event

    assert _ends_with_done_event(reads) is ends


def test_delayed_calls_hand_over_only_keys_still_registered_after_the_delay() -> None:
    """One timer for every request's deadline (body, first byte, disconnect watch): each key is due `after_s`
    after its start, a key popped first never is, and keys registered later are swept on a later turn."""
    from time import perf_counter

    from gateway.delayed_calls import DelayedCalls

    class Recorder(DelayedCalls):
        def __init__(self, after_s: float) -> None:
            super().__init__(after_s)
            self.due: list[tuple[str, float]] = []
            self.t0 = perf_counter()

        def _due(self, key: int, value: str) -> None:
            self.due.append((value, perf_counter() - self.t0))

    async def run() -> list[tuple[str, float]]:
        watch = Recorder(after_s=0.05)
        watch.put(1, "a", perf_counter())
        watch.put(2, "ended", perf_counter())
        await asyncio.sleep(0.02)
        watch.pending[3] = (perf_counter(), "late")  # inline, as the hot path writes them while a timer runs
        watch.pending.pop(2, None)  # as a handler withdraws its entry
        await asyncio.sleep(0.2)
        assert watch.timer is None  # nothing pending: the timer stopped
        watch.put(4, "after-idle", perf_counter())  # ... and a new one starts
        await asyncio.sleep(0.1)
        return watch.due

    due = asyncio.run(run())
    assert [name for name, _ in due] == ["a", "late", "after-idle"]
    a, late = due[0][1], due[1][1]
    assert 0.045 <= a < 0.15 and late - a >= 0.015  # each at its own deadline, not both at the first


def _deadline_hits(deadlines, rebind: bool) -> tuple[bool, bool]:
    """(cancelled by its deadline and claimed, running on the new loop) for a task that registers with
    `deadlines` on a second loop after the first loop closed with a timer pending."""
    from time import perf_counter

    async def first() -> None:
        deadlines.add(perf_counter())  # this loop closes before the timer is due

    async def second() -> tuple[bool, bool]:
        if rebind:
            deadlines.bind(asyncio.get_running_loop())
        key = deadlines.add(perf_counter())
        try:
            await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            return deadlines.claim(key), deadlines.loop is asyncio.get_running_loop()
        return False, deadlines.loop is asyncio.get_running_loop()

    asyncio.run(first())
    return asyncio.run(second())


def test_deadlines_bound_to_another_loop_fire_on_it() -> None:
    """An app served again (a new lifespan, a new loop) binds its deadlines to the new loop: a timer left
    pending on the old, closed loop must not keep new keys from ever coming due."""
    from gateway.delayed_calls import TaskDeadlines

    assert _deadline_hits(TaskDeadlines(after_s=0.01), rebind=True) == (True, True)


def test_deadlines_on_a_closed_loop_move_to_the_running_one_without_a_bind() -> None:
    """An app driven again on a new loop without its lifespan (no bind): the deadline machinery moves to the
    running loop instead of leaving new keys behind a timer of the dead loop."""
    from gateway.delayed_calls import TaskDeadlines

    assert _deadline_hits(TaskDeadlines(after_s=0.01), rebind=False) == (True, True)
