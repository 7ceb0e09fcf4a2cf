"""What the gateway hands the evaluator: every served response counted (`offer`, after the response is sent)
and, when the offer's answer asks for it, its ServedExchange (`take`; its `record()` is the complete
ExchangeRecord), and `call_other` asking the side that did not answer.

The evaluator here is (except in the last test) a small recording stand-in that implements the gateway's side
of evaluator.service.Evaluator (offer/take/start/stop) and, like the real one, runs call_other on the gateway's
event loop.
"""
from __future__ import annotations

import asyncio
import json
import time

import httpx

from conftest import ADMIN_KEY, USER_KEY, chat_body
from evaluator.records import ExchangeRecord, ServedExchange
from fakes.gateway_thread import GatewayThread

AUTH = {"authorization": f"Bearer {USER_KEY}"}


class RecordingEvaluator:
    def __init__(self, call_other) -> None:
        self.call_other = call_other
        self.offered: list[tuple[ServedExchange, dict]] = []
        self._offers: dict[str, dict] = {}
        self.shadows: list[ExchangeRecord | BaseException] = []
        self.started = self.stopped = False
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    # The gateway's side of evaluator.service.Evaluator: offer (counts, answers what wants the exchange), then
    # take (the exchange) for a non-zero answer. This one wants every exchange.
    def offer(self, model, route, prompt_tokens, completion_tokens, request_id, slice_name, escalated=False,  # noqa: ANN001
              key_name=None, confidence=None) -> int:
        self._offers[request_id] = {"escalated": escalated, "key_name": key_name, "confidence": confidence,
                                    "route": route, "tokens": (prompt_tokens, completion_tokens)}
        return 1

    def take(self, record: ServedExchange, wanted: int) -> bool:
        offer = self._offers.pop(record.request_id)
        assert offer.pop("route") == record.route and offer.pop("tokens") == (record.prompt_tokens or 0, record.completion_tokens or 0)
        self.offered.append((record, offer))
        task = asyncio.get_running_loop().create_task(self._shadow(record.record()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _shadow(self, record: ExchangeRecord) -> None:
        try:
            self.shadows.append(await self.call_other(record))
        except Exception as exc:  # recorded so a test can see it
            self.shadows.append(exc)


def _wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _gateway(config, **kw):
    box: dict[str, RecordingEvaluator] = {}

    def factory(call_other):
        box["ev"] = RecordingEvaluator(call_other)
        return box["ev"]

    g = GatewayThread(config, evaluator=factory, **kw)
    return g, box


def test_served_record_and_teacher_shadow(make_config, student, teacher):
    config = make_config({"models": {"support": {"slices": [{"name": "tier", "header": "x-tier", "values": ["pro"]}]}}})
    g, box = _gateway(config)
    with g:
        ev = box["ev"]
        assert ev.started and g.app.state.evaluator is ev
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body("hi there", temperature=0),
                       headers={**AUTH, "x-tier": "pro"})
        _wait(lambda: len(ev.shadows) == 1)
        [(handed, meta)] = ev.offered  # one hand-off per response
        served = handed.record()
        assert handed.record() is served  # assembled once
        assert meta == {"escalated": False, "key_name": "user", "confidence": None}
        assert served.request_id == r.headers["x-request-id"] and served.model == "support"
        assert (served.route, served.version, served.endpoint) == ("student", "base", "chat")
        assert served.request == chat_body("hi there", temperature=0)  # as the client sent it
        assert served.response_text == "student says hi" and served.finish_reason == "stop"
        assert (served.prompt_tokens, served.completion_tokens) == (2, 3)
        assert served.slice == "tier:pro" and served.latency_s > 0
        shadow = ev.shadows[0]
        assert isinstance(shadow, ExchangeRecord)
        assert (shadow.route, shadow.version, shadow.response_text) == ("teacher", "teacher-served", "teacher says hi")
        assert shadow.request_id == served.request_id and shadow.slice == "tier:pro"
        assert shadow.token_logprobs == (-0.1, -0.1, -0.1)
        assert len(shadow.top_logprobs) == 3 and len(shadow.top_logprobs[0]) == 5
        sent = teacher.requests[-1]
        assert sent["model"] == "teacher-served" and sent["logprobs"] is True and sent["top_logprobs"] == 5
        assert sent["stream"] is False and sent["temperature"] == 0
    assert ev.stopped


def test_streamed_record_is_assembled(make_config, student):
    g, box = _gateway(make_config())
    with g:
        ev = box["ev"]
        with httpx.stream("POST", g.url + "/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True}), headers=AUTH) as r:
            b"".join(r.iter_raw())
        _wait(lambda: len(ev.shadows) == 1)
        served = ev.offered[0][0].record()
        assert served.response_text == "student says hi" and served.completion_tokens == 3
        assert served.ttft_s is not None and served.ttft_s <= served.latency_s
        assert "stream_options" not in student.requests[-1] or student.requests[-1]["stream"] is True
        assert ev.shadows[0].route == "teacher"


def test_teacher_served_shadows_to_the_student(make_config, student, teacher):
    g, box = _gateway(make_config())
    with g:
        ev = box["ev"]
        httpx.post(g.url + "/v1/chat/completions", json=chat_body(),
                   headers={"authorization": f"Bearer {ADMIN_KEY}", "x-distillgate-route": "teacher"})
        _wait(lambda: len(ev.shadows) == 1)
        assert ev.offered[0][0].record().route == "teacher"
        shadow = ev.shadows[0]
        assert (shadow.route, shadow.version, shadow.response_text) == ("student", "base", "student says hi")
        assert student.requests[-1]["model"] == "student-served" and "top_logprobs" not in student.requests[-1]


def test_escalation_is_offered_with_confidence_and_reuses_the_student_answer(make_config, student):
    student.logprob = -3.0
    g, box = _gateway(make_config(routing={"cascade": {"enabled": True, "min_mean_logprob": -1.0}}))
    with g:
        ev = box["ev"]
        httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
        _wait(lambda: len(ev.shadows) == 1)
        served, meta = ev.offered[0]
        assert served.route == "cascade" and meta["escalated"] is True and meta["confidence"] == -3.0
        assert ev.shadows[0].route == "student" and ev.shadows[0].response_text == "student says hi"
        assert len(student.requests) == 1  # the shadow did not ask the student a second time


def test_call_other_failure_raises_typed_error(make_config, teacher):
    g, box = _gateway(make_config())
    with g:
        ev = box["ev"]
        teacher.mode = "fail"
        httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
        _wait(lambda: len(ev.shadows) == 1)
        from gateway.errors import UpstreamStatus

        assert isinstance(ev.shadows[0], UpstreamStatus) and ev.shadows[0].status == 500


def test_real_evaluator_scores_a_known_disagreement_fraction(make_config, student, teacher, tmp_path):
    """The real evaluator.service.Evaluator, built by the app: 3 of 10 prompts disagree."""
    from conftest import metric_value

    student.answers = lambda prompt: f"label {prompt}"
    teacher.answers = lambda prompt: "other" if prompt in {"p1", "p4", "p7"} else f"label {prompt}"
    config = make_config({
        "evaluator": {"store": {"url": f"sqlite:///{tmp_path / 'pairs.db'}"}, "agreement": {"min_samples": 5}},
        "models": {"support": {"shadow": {"rate": 1.0}}},
    })
    with GatewayThread(config) as g:
        ev = g.app.state.evaluator
        assert type(ev).__module__ == "evaluator.service"
        for i in range(10):
            assert httpx.post(g.url + "/v1/chat/completions", json=chat_body(f"p{i}"), headers=AUTH).status_code == 200
        _wait(lambda: ev.agreement("support").n == 10, timeout_s=15)
        snap = ev.agreement("support")
        assert (snap.agreed, snap.ratio) == (7, 0.7)
        text = httpx.get(g.url + "/metrics").text
        assert metric_value(text, "distillgate_pairs_total", model="support", version="base", slice="default", status="disagree") == 3
        assert g.app.state.registry is not None  # built on the evaluator store's engine
        assert g.app.state.redistill is not None  # the re-distillation service, for the control endpoints
        assert "# TYPE distillgate_redistill_jobs_total counter" in text  # its metrics share the app's registry


def test_fallback_answer_is_the_teachers_and_shadows_to_the_student(make_config, student):
    g, box = _gateway(make_config(routing={"retries": {"max_attempts": 1}}))
    with g:
        ev = box["ev"]
        student.fail_next = 1
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.headers["x-distillgate-route"] == "fallback"
        _wait(lambda: len(ev.shadows) == 1)
        served = ev.offered[0][0].record()
        assert (served.route, served.version, served.response_text) == ("fallback", "teacher-served", "teacher says hi")
        assert (ev.shadows[0].route, ev.shadows[0].response_text) == ("student", "student says hi")


def test_client_request_ids_are_used_only_when_they_fit_the_store(make_config, student):
    g, box = _gateway(make_config())
    url = g.url + "/v1/chat/completions"
    with g:
        ev = box["ev"]
        fits = "client-" + "x" * 57  # 64 characters: the store's request_id column is String(64)
        r = httpx.post(url, json=chat_body(), headers={**AUTH, "x-request-id": fits})
        assert r.headers["x-request-id"] == fits and student.headers[-1]["x-request-id"] == fits
        for bad in ("y" * 65, b"caf\xe9-id", "has space"):
            r = httpx.post(url, json=chat_body(), headers={**AUTH, "x-request-id": bad})
            assert r.status_code == 200, r.text
            rid = r.headers["x-request-id"]
            assert rid.startswith("dg-") and len(rid) <= 64
            assert student.headers[-1]["x-request-id"] == rid
        _wait(lambda: len(ev.offered) == 4)
        ids = [rec.request_id for rec, _ in ev.offered]
        assert ids[0] == fits and all(i.startswith("dg-") and len(i) <= 64 for i in ids[1:]) and len(set(ids)) == 4


def test_teacher_to_student_fallback_is_recorded_as_the_students_answer(make_config, teacher):
    config = make_config(routing={"student_percent": 0, "retries": {"max_attempts": 1},
                                  "fallback": {"teacher_to_student": True}})
    g, box = _gateway(config)
    with g:
        teacher.mode = "fail"
        r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert r.status_code == 200 and r.headers["x-distillgate-route"] == "fallback"
        _wait(lambda: len(box["ev"].offered) == 1)
        record = box["ev"].offered[0][0].record()
        # the evaluator reads "fallback" as a teacher answer: this one is the student's
        assert record.route == "student" and record.version == "base" and record.response_text == "student says hi"


def test_a_request_answered_just_before_shutdown_reaches_metrics_and_the_evaluator_before_it_stops(make_config):
    """The after-response work is batched per loop iteration (gateway.loop_batch); the lifespan's shutdown
    runs what the loop's last iteration queued before the evaluator stops, so no answered request goes
    uncounted. Driven in-process: the request's handler returns and the app shuts down with no loop
    iteration in between."""
    from gateway.app import create_app

    class Recording:
        def __init__(self) -> None:
            self.ids: list[str] = []
            self.taken: list = []
            self.ids_at_stop: list[str] | None = None

        def offer(self, model, route, prompt_tokens, completion_tokens, request_id, *rest) -> int:  # noqa: ANN001
            self.ids.append(request_id)
            return 0  # nothing wants the exchange

        def take(self, record, wanted) -> bool:  # noqa: ANN001
            self.taken.append(record)
            return False

        async def stop(self) -> None:
            self.ids_at_stop = list(self.ids)

    ev = Recording()
    app = create_app(make_config(), evaluator=ev, redistill=False)
    body = json.dumps(chat_body(model="support")).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [
        (b"authorization", b"Bearer " + USER_KEY.encode()), (b"content-type", b"application/json"),
        (b"x-request-id", b"last-before-shutdown")]}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def serve_one_then_stop() -> int:
        async with app.router.lifespan_context(app):
            await app.hot_routes["/v1/chat/completions"](scope, receive, send)
            queued = len(app.state.proxy.accounting)
        return queued

    assert asyncio.run(serve_one_then_stop()) == 1  # queued, not yet handled, when shutdown began
    assert sent[0]["status"] == 200
    assert ev.ids_at_stop == ["last-before-shutdown"]
    assert ev.taken == []  # an offer answered 0: no exchange is built or handed over
    series = app.state.metrics.series("support", "student")
    assert series.ok.value == 1 and series.completion_tokens.value > 0
