"""The small policy objects alone, with injected clocks (no sleeping): breaker, retry budget, rate
limiter, routing policies, cascade checks, SSE assembly."""
from __future__ import annotations

import pytest

from gateway.auth import Authenticator, KeyInfo, bearer_token, hash_key
from gateway.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from gateway.cascade import CascadePolicy
from gateway.config import AuthSettings, BreakerSettings, CascadeSettings, RateLimit
from gateway.errors import AuthenticationError, RateLimited
from gateway.exchange import parse_response, parse_sse
from gateway.ratelimit import RateLimiter
from gateway.retry_budget import RetryBudget
from gateway.routing import CanarySplit, StickyPolicy, unit_hash


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_breaker_cycle_and_failed_probe_reopens():
    clock, states = Clock(), []
    b = CircuitBreaker(BreakerSettings(failure_threshold=2, open_s=5, half_open_max=1), states.append, clock)
    b.record_failure()
    assert b.state == CLOSED
    b.record_success()  # success resets the consecutive count
    b.record_failure()
    b.record_failure()
    assert b.state == OPEN and not b.allow()
    clock.t += 5
    assert b.allow() and b.state == HALF_OPEN
    assert not b.allow()  # only half_open_max probes
    b.record_failure()
    assert b.state == OPEN
    clock.t += 5
    assert b.allow()
    b.record_success()
    assert b.state == CLOSED and b.allow()
    assert states == [CLOSED, OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def test_retry_budget_reserve_and_ratio():
    budget = RetryBudget(ratio=0.5, reserve=1.0)
    assert budget.try_spend() and not budget.try_spend()
    budget.on_request()
    assert not budget.try_spend()
    budget.on_request()
    assert budget.try_spend()


def test_rate_limiter_refills_over_time():
    clock = Clock()
    limiter = RateLimiter(clock)
    key = KeyInfo("k", frozenset({"*"}), rate_limit=RateLimit(requests_per_minute=2, tokens_per_minute=100))
    limiter.admit(key)
    limiter.admit(key)
    with pytest.raises(RateLimited) as exc:
        limiter.admit(key)
    assert exc.value.retry_after_s == pytest.approx(30.0)
    clock.t += 30
    limiter.admit(key)
    limiter.spend_tokens(key, 150)  # over budget: the next request waits for the deficit to refill
    clock.t += 20  # refilled 33 of the 50-token deficit
    with pytest.raises(RateLimited) as exc:
        limiter.admit(key)
    assert "tokens" in exc.value.message
    clock.t += 40
    limiter.admit(key)


def test_auth_digest_env_and_bearer(monkeypatch):
    monkeypatch.setenv("K2", "second-key")
    auth = Authenticator(AuthSettings(keys=[
        {"name": "a", "sha256": hash_key("first-key").upper(), "models": ["m"]},
        {"name": "b", "env": "K2"},
        {"name": "c", "env": "UNSET_ENV_VAR_FOR_TEST"},
    ]))
    assert auth.authenticate_header("Bearer first-key").name == "a"
    assert auth.authenticate_header("bearer second-key").name == "b"
    assert auth.authenticate_header(None, "second-key").name == "b"  # Azure-style api-key header
    for bad in (None, "Bearer ", "Bearer nope", "Token first-key"):
        with pytest.raises(AuthenticationError):
            auth.authenticate_header(bad)
    assert bearer_token("Bearer  x ") == "x"
    assert Authenticator(AuthSettings(mode="none")).authenticate_header(None).name == "anonymous"


def test_sticky_and_canary_policies():
    sticky = StickyPolicy("X-User", "user")
    assert sticky.unit({"x-user": "u1"}, {}) == unit_hash("u1") == sticky.unit({}, {"user": "u1"})
    assert sticky.unit({}, {"user": 7}) is None

    class V:
        def __init__(self, id):
            self.id = id

    class Active:
        live, canary, canary_percent = V("v1"), V("v2"), 25.0

    split = CanarySplit()
    assert split.pick(None, 0.1) == "base"
    assert split.pick(Active, 0.2) == "v2" and split.pick(Active, 0.3) == "v1"


def _chat_doc(logprobs):
    return {"choices": [{"message": {"content": "x"}, "finish_reason": "stop",
                         "logprobs": {"content": [{"token": "x", "logprob": lp, "top_logprobs": []} for lp in logprobs]}}]}


def test_cascade_thresholds():
    policy = CascadePolicy(CascadeSettings(enabled=True, min_mean_logprob=-1.0, min_token_logprob=-4.0))
    assert not policy.check(parse_response(_chat_doc([-0.5, -0.5]))).escalate
    assert policy.check(parse_response(_chat_doc([-2.0, -0.5]))).reason == "low_mean_logprob"
    assert policy.check(parse_response(_chat_doc([-5.0, 0.0, 0.0, 0.0, 0.0, 0.0]))).reason == "low_token_logprob"
    assert policy.check(parse_response({"choices": [{"message": {"content": "x"}}]})).reason == "no_logprobs"
    assert policy.student_payload({"prompt": "p"}, "completions")["logprobs"] == 0
    assert policy.student_payload({"messages": []}, "chat")["logprobs"] is True


def test_parse_sse_split_across_reads():
    stream = (b'data: {"choices":[{"index":0,"delta":{"content":"he"}}]}\n\ndata: {"choices":[{"index":0,"del'
              b'ta":{"content":"llo"},"finish_reason":"stop"}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":2,'
              b'"completion_tokens":2}}\n\ndata: [DONE]\n\n')
    chunks = [stream[i:i + 17] for i in range(0, len(stream), 17)]
    answer = parse_sse(chunks)
    assert (answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens) == ("hello", "stop", 2, 2)


def test_with_usage_asks_only_when_the_client_did_not():
    from gateway.stream_usage import with_usage

    body = {"model": "m", "stream": True}
    assert with_usage(body)["stream_options"] == {"include_usage": True} and "stream_options" not in body
    kept = with_usage({"stream_options": {"include_usage": False, "continuous_usage_stats": False}})
    assert kept["stream_options"] == {"include_usage": True, "continuous_usage_stats": False}
    assert with_usage({"stream_options": {"include_usage": True}}) is None
    assert with_usage({"stream_options": "bad"}) is None  # malformed: the upstream's 400 answers the client
    assert with_usage({"stream_options": {"include_usage": "yes"}}) is None


def test_usage_stripper_removes_only_what_include_usage_added_at_any_read_boundary():
    import orjson

    from gateway.stream_usage import UsageStripper

    content = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"x \\"usage\\":null,y"}}],"usage":null}\n\n'
    spaced = b'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "z"}}], "usage": null}\r\n\r\n'
    counted = b'data: {"id":"c","choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    final = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    plain = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"usage"}}]}\n\n: keep-alive\n\n'
    stream = content + spaced + counted + plain + final + b"data: [DONE]\n\n"
    expected = (content.replace(b',"usage":null}\n', b"}\n") + spaced.replace(b', "usage": null', b"")
                + b'data: {"id":"c","choices":[{"index":0,"delta":{}}]}\n\n' + plain + b"data: [DONE]\n\n")
    assert orjson.loads(expected.split(b"\n\n")[0][6:])["choices"][0]["delta"]["content"] == 'x "usage":null,y'
    for i in range(0, len(stream), 7):
        for j in range(i, len(stream), 23):
            s = UsageStripper()
            assert s.feed(stream[:i]) + s.feed(stream[i:j]) + s.feed(stream[j:]) + s.flush() == expected, (i, j)
    s = UsageStripper()  # an unfinished last event is passed on as it is when the upstream stops
    assert s.feed(b"data: {\"a\":1}\n\ndata: {\"b\"") == b"data: {\"a\":1}\n\n" and s.flush() == b"data: {\"b\""
    # Reads of whole events without usage (most of a stream) are passed on as they are, not cut up and joined
    whole = b': keep-alive\n\ndata: {"id":"c","choices":[{"index":0,"delta":{"content":"a"}}]}\r\n\r\n'
    assert UsageStripper().feed(whole) is whole
    # OpenAI's null member last in the object is cut there, even when a nested member looks the same
    nested = b'data: {"choices":[{"index":0,"delta":{"content":"q"},"usage":null}],"usage":null}\n\n'
    assert UsageStripper().feed(nested) == b'data: {"choices":[{"index":0,"delta":{"content":"q"},"usage":null}]}\n\n'


def test_cascade_student_payload_forwards_malformed_logprob_fields_as_sent():
    policy = CascadePolicy(CascadeSettings(enabled=True, top_logprobs=2))
    assert policy.student_payload({"top_logprobs": "5"}, "chat") == {"logprobs": True, "top_logprobs": "5"}
    assert policy.student_payload({"top_logprobs": [1]}, "chat")["top_logprobs"] == [1]
    assert policy.student_payload({"top_logprobs": 7}, "chat")["top_logprobs"] == 7
    assert policy.student_payload({}, "chat")["top_logprobs"] == 2
    assert policy.student_payload({"logprobs": "x"}, "completions")["logprobs"] == 2


def test_metrics_render_prometheus_buckets_counters_and_gauges() -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.exposition import generate_latest

    from gateway.metrics import GatewayMetrics

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    series = metrics.series("m", "student")
    for value in (0.005, 0.0051, 0.3, 99.0):  # on a bound, just above it, mid-range, past the last bound
        series.duration.observe(value)
    series.prompt_tokens.inc(7)
    metrics.count_request("m", "student", 200)
    metrics.count_request("m", "student", 200)
    metrics.model("m").in_flight.inc()
    metrics.set_breaker_state("m", "teacher", "open")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(generate_latest(registry).decode()) for s in fam.samples}

    def bucket(le: str) -> float:
        return samples[("distillgate_request_duration_seconds_bucket", (("le", le), ("model", "m"), ("route", "student")))]

    assert bucket("0.005") == 1  # `le`: a value equal to a bound counts in that bucket
    assert bucket("0.01") == 2 and bucket("0.25") == 2 and bucket("0.5") == 3 and bucket("60.0") == 3
    assert bucket("+Inf") == 4
    assert samples[("distillgate_request_duration_seconds_count", (("model", "m"), ("route", "student")))] == 4
    assert samples[("distillgate_request_duration_seconds_sum", (("model", "m"), ("route", "student")))] == pytest.approx(99.3101)
    assert samples[("distillgate_prompt_tokens_total", (("model", "m"), ("route", "student")))] == 7
    assert samples[("distillgate_requests_total", (("model", "m"), ("route", "student"), ("status", "200")))] == 2
    assert samples[("distillgate_in_flight_requests", (("model", "m"),))] == 1
    assert samples[("distillgate_breaker_state", (("model", "m"), ("route", "teacher")))] == 2
    GatewayMetrics(CollectorRegistry())  # a second app's registry: no clash


def test_authenticator_remembers_a_valid_header_but_never_an_invalid_one() -> None:
    from gateway.config import KeySettings

    auth = Authenticator(AuthSettings(mode="keys", keys=[KeySettings(name="a", sha256=hash_key("sk-good"), models=["*"])]))
    first = auth.authenticate_header("Bearer sk-good")
    assert auth.authenticate_header("Bearer sk-good") is first
    for _ in range(2):  # a wrong key fails every time, not only before some cache fills
        with pytest.raises(AuthenticationError):
            auth.authenticate_header("Bearer sk-bad")
    assert ("Bearer sk-bad", None) not in auth._seen


def test_sse_usage_reads_the_last_usage_object_only() -> None:
    from gateway.exchange import sse_usage

    events = [b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n',
              b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n',
              b"data: [DONE]\n\n"]
    whole = sse_usage([b"".join(events)])
    assert whole == (5, 2)
    # the same whether the usage event came in one read, its own read, or split across two
    assert whole == sse_usage([e for e in events]) == sse_usage([b"".join(events)[:40], b"".join(events)[40:]])
    full = parse_sse([b"".join(events)])
    assert (full.prompt_tokens, full.completion_tokens) == whole
    # `"usage"` inside the text, null usage, and no usage at all: no tokens, no error
    assert sse_usage([b'data: {"choices":[{"delta":{"content":"\\"usage\\": 3"}}],"usage":null}\n\n',
                      b"data: [DONE]\n\n"]) == (None, None)
    assert sse_usage([b"data: [DONE]\n\n"]) == (None, None)
    assert sse_usage([]) == (None, None)
    # an earlier usage object counts when a later event is not a JSON object or is malformed
    assert sse_usage([events[1] + b'data: ["usage"]\n\n' + b'data: {"usage": {"prompt_tokens": 1,\n\n']) == (5, 2)
    # counts that are not integers are not counts
    assert sse_usage([b'data: {"choices":[],"usage":{"prompt_tokens":"5","completion_tokens":2}}\n\n']) == (None, 2)
    # details objects inside usage, a brace in a string, a nested "usage" that is not the top-level member,
    # CRLF framing: the top-level usage's counts all the same
    assert sse_usage([b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,'
                      b'"prompt_tokens_details":{"cached_tokens":0}}}\n\n']) == (5, 2)
    assert sse_usage([b'data: {"choices":[],"usage":{"prompt_tokens":5,"note":"}","completion_tokens":2}}\n\n']) == (5, 2)
    assert sse_usage([b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2},'
                      b'"x":{"usage":{"prompt_tokens":9}}}\n\n']) == (5, 2)
    assert sse_usage([b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}\r\n\r\n']) == (4, 3)


def test_answer_tokens_come_from_the_parsed_answer_or_the_usage_object() -> None:
    from gateway.exchange import ParsedAnswer, answer_tokens

    assert answer_tokens(ParsedAnswer(prompt_tokens=3, completion_tokens=4), {"usage": {"prompt_tokens": 9}}) == (3, 4)
    assert answer_tokens(None, {"usage": {"prompt_tokens": 9, "completion_tokens": 1.5}}) == (9, None)
    assert answer_tokens(None, {"usage": None}) == answer_tokens(None, None) == (None, None)


def test_request_body_is_the_json_for_the_upstream_in_an_allocation_of_its_own_size():
    import tracemalloc

    import orjson

    from gateway.upstreams import request_body

    payload = {"model": "m", "messages": [{"role": "user", "content": "héllo " * 3}], "max_tokens": 8}
    assert request_body(payload, "served-name") == orjson.dumps({**payload, "model": "served-name"})
    assert payload["model"] == "m" and list(payload) == ["model", "messages", "max_tokens"]  # the caller's, as it was
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [request_body(payload, "served-name") for _ in range(50)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_body = sum(s.size_diff for s in after.compare_to(before, "filename")) / len(kept)
    # orjson.dumps' own result would hold ~4 KiB each (its write buffer); the copy holds the JSON's length.
    assert per_body < len(kept[0]) + 256


def test_lazy_exchange_builds_the_same_record_from_its_bytes_or_from_parsed_objects():
    from dataclasses import replace

    import orjson

    from gateway.exchange import LazyExchange

    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
    body = (b'{"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":3,"completion_tokens":1}}')

    def exchange() -> LazyExchange:
        return LazyExchange("r1", "m", "fallback", "base", "chat", raw, "default", 3, 1, 0.01, None, None, body, None)

    from_bytes = exchange().record()
    given = exchange()
    from_parsed = given.record(orjson.loads(raw), orjson.loads(body))
    assert replace(from_parsed, created_at=0.0) == replace(from_bytes, created_at=0.0)
    assert from_bytes.response_text == "hello" and from_bytes.request["max_tokens"] == 4
    assert given.record() is from_parsed  # built once


def test_loop_batch_handles_one_iterations_items_together_in_order_in_the_next():
    import asyncio

    from gateway.loop_batch import LoopBatch

    handled: list[tuple[int, str]] = []
    drains: list[int] = []

    class Counting(LoopBatch):
        def drain(self) -> None:
            drains.append(len(self))
            super().drain()

    async def main() -> None:
        batch = Counting(lambda n, s: handled.append((n, s)))
        for i in range(3):
            batch.put((i, f"r{i}"))
        assert handled == []  # nothing runs inside the request that queued it
        await asyncio.sleep(0)
        assert handled == [(0, "r0"), (1, "r1"), (2, "r2")]
        assert drains == [3]  # one scheduled drain for the whole iteration
        batch.put((3, "r3"))
        await asyncio.sleep(0)
        assert handled[-1] == (3, "r3") and drains == [3, 1]

    asyncio.run(main())


def test_loop_batch_logs_a_failing_item_and_still_handles_the_rest(caplog):
    import asyncio

    from gateway.loop_batch import LoopBatch

    handled: list[int] = []

    def handle(n: int) -> None:
        if n == 1:
            raise ValueError("bad item")
        handled.append(n)

    async def main() -> None:
        batch = LoopBatch(handle)
        for n in range(3):
            batch.put((n,))
        await asyncio.sleep(0)

    with caplog.at_level("ERROR", logger="distillgate.gateway"):
        asyncio.run(main())
    assert handled == [0, 2]
    assert "after-response work failed" in caplog.text and "bad item" in caplog.text


def test_loop_batch_is_bounded_and_drain_leaves_nothing_queued():
    import asyncio

    from gateway.loop_batch import LoopBatch

    handled: list[int] = []

    async def main() -> None:
        batch = LoopBatch(handled.append, limit=4)
        for n in range(10):  # the loop never gets to its next iteration meanwhile
            batch.put((n,))
        assert handled == list(range(8)) and len(batch) == 2  # two full batches ran at once
        batch.drain()  # e.g. at shutdown
        assert handled == list(range(10)) and len(batch) == 0
        await asyncio.sleep(0)  # the drain scheduled for the third batch finds nothing left
        assert handled == list(range(10))

    asyncio.run(main())


def test_loop_batch_bound_to_a_closed_loop_moves_to_the_running_one():
    import asyncio

    from gateway.loop_batch import LoopBatch

    handled: list[int] = []
    batch = LoopBatch(handled.append)
    old = asyncio.new_event_loop()
    batch.bind(old)
    old.close()

    async def main() -> None:
        batch.put((1,))  # must not raise (the response is already sent when this runs)
        await asyncio.sleep(0)
        assert handled == [1] and batch.loop is asyncio.get_running_loop()

    asyncio.run(main())
