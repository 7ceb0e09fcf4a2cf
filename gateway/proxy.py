"""The hot path: raw ASGI handlers for /v1/chat/completions, /v1/completions and /v1/embeddings.

Mounted inside the FastAPI app as plain ASGI callables (a FastAPI route costs ~0.2 ms more per request,
MACHINE-FACTS). The body is parsed once with orjson; only `model` (and, for cascade, logprobs) is
rewritten before forwarding. Everything after the last byte is sent (metrics, token counts, evaluator
offer) runs after the client has its answer, batched per event-loop iteration (gateway.loop_batch).

Request ids: a client's `x-request-id` is used as ours (echoed, forwarded, stored) only when it is
well formed (evaluator.records.well_formed_request_id: 1-64 visible ASCII characters); anything else is
replaced by a generated id and the client's value is used nowhere (no log, no label, no record).
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from asyncio import CancelledError, current_task
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from evaluator.records import ALWAYS_STORED_ROUTES, ExchangeRecord, well_formed_request_id
from evaluator.slices import DEFAULT_SLICE, assign_slice, slice_header_names
from gateway.access_log import AccessLog
from gateway.auth import Authenticator, KeyInfo
from gateway.breaker import CLOSED, CircuitBreaker
from gateway.cascade import CascadePolicy
from gateway.config import DistillgateConfig
from gateway.delayed_calls import TaskDeadlines
from gateway.disconnects import STREAM_WATCH_AFTER_S, UNARY_WATCH_AFTER_S, DisconnectWatch
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatus,
    error_response_parts,
)
from gateway.exchange import LazyExchange, ParsedAnswer, answer_tokens, build_record, parse_response, sse_usage
from gateway.loop_batch import LoopBatch
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.registry_poll import RegistryPoller
from gateway.retry_budget import RetryBudget
from gateway.routing import BASE_VERSION, ModelRouter, RouteDecision
from gateway.stream_usage import UsageStripper, with_usage
from gateway.streaming import relay_sse
from gateway.tracing import Tracing
from gateway.upstreams import Upstream, UpstreamReply, UpstreamStream, request_body

log = logging.getLogger("distillgate.gateway")

ROUTE_HEADER = b"x-distillgate-route"
REQUEST_ID_HEADER = b"x-request-id"
_JSON = b"application/json"


class BreakerOpen(UpstreamConnectError):
    code = "circuit_open"


class _ClientGone(Exception):
    """The client disconnected before the request body arrived."""


class UpstreamTime:
    """Seconds one request spent waiting on upstreams, over every attempt (overhead = total - this).
    No __init__: built on every request, and a Python __init__ costs a frame."""

    seconds = 0.0


@dataclass(slots=True)
class Outcome:
    """What answered a request: the route label and decision actually used."""

    route: str  # student | teacher | fallback
    decision: RouteDecision
    escalated: bool = False
    confidence: float | None = None
    student_answer: ParsedAnswer | None = None  # cascade: the student's answer that was escalated


class RequestIds:
    """Cheap unique ids: a random per-process prefix and a counter (no uuid4 per request)."""

    def __init__(self) -> None:
        self._prefix = "dg-" + os.urandom(6).hex() + "-"
        self._count = itertools.count(1)

    def next(self) -> str:
        return self._prefix + str(next(self._count))  # str(): format(n, "x") parses a format spec each time


def _check_declared_length(content_length: str | None, limit: int) -> None:
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise InvalidRequest("invalid content-length header") from None
        if declared > limit:
            raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")


def _whole_body(message: dict, limit: int) -> bytes | None:
    """The body when this first message holds all of it (the usual case), else None."""
    if message["type"] != "http.request" or message.get("more_body", False):
        return None
    body = message.get("body", b"")
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return body


async def read_body(receive: Any, limit: int, first: dict | None = None) -> bytes:
    """The request body, refusing more than `limit` bytes as it arrives (the declared content-length is
    _check_declared_length's); `first`: a message already received."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = first if first is not None else await receive()
        first = None
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(part)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Proxy:
    """Everything one request needs, injected by the app factory."""

    def __init__(
        self,
        config: DistillgateConfig,
        *,
        auth: Authenticator,
        limiter: RateLimiter,
        routers: Mapping[str, ModelRouter],
        upstreams: Mapping[str, Upstream],
        metrics: GatewayMetrics,
        poller: RegistryPoller,
        tracing: Tracing | None,
        access_log: AccessLog | None,
    ) -> None:
        self.config = config
        self.auth = auth
        self.limiter = limiter
        self.routers = routers
        self.upstreams = upstreams
        self.metrics = metrics
        self.poller = poller
        self.tracing = tracing
        self.access_log = access_log
        self.evaluator: Any | None = None  # set by the app's lifespan once it has started
        self.max_body = config.server.max_body_bytes
        self.body_deadlines = TaskDeadlines(config.server.body_timeout_s)
        self.ids = RequestIds()
        self.disconnects = DisconnectWatch(STREAM_WATCH_AFTER_S)  # streams
        self.unary_disconnects = DisconnectWatch(UNARY_WATCH_AFTER_S)
        self.accounting = LoopBatch(self._account)
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self.budgets: dict[tuple[str, str], RetryBudget] = {}
        self.cascades: dict[str, CascadePolicy] = {}
        self.max_attempts: dict[str, int] = {}
        self.slices = {name: m.slices for name, m in config.models.items()}
        self.in_flight = {name: metrics.model(name).in_flight for name in config.models}
        for name, m in config.models.items():
            r = m.routing
            self.max_attempts[name] = r.retries.max_attempts
            for route in ("student", "teacher"):
                self.breakers[(name, route)] = CircuitBreaker(
                    r.fallback.breaker, on_change=lambda s, n=name, rt=route: metrics.set_breaker_state(n, rt, s)
                )
                self.budgets[(name, route)] = RetryBudget(r.retries.budget_ratio)
            self.cascades[name] = CascadePolicy(r.cascade)
        # Only the request headers someone reads are decoded (an SDK client sends a dozen; a few are read).
        names = set(PROXY_HEADERS)
        for name, router in routers.items():
            names |= router.header_names | slice_header_names(self.slices[name])
        if tracing is not None:
            names |= tracing.header_names
        self.header_names = frozenset(n.encode("latin-1") for n in names)
        # Student answers of escalated requests, so the shadow call does not ask the student twice.
        self.escalated_students: OrderedDict[str, ExchangeRecord] = OrderedDict()

    def bind_loop(self, loop: Any) -> None:
        """The loop this app's lifespan runs on: the disconnect watch's timer and the after-response batch use it
        (an app served again binds its new loop)."""
        self.disconnects.bind(loop)
        self.unary_disconnects.bind(loop)
        self.body_deadlines.bind(loop)
        self.accounting.bind(loop)

    def endpoint(self, kind: str) -> "ProxyEndpoint":
        return ProxyEndpoint(self, kind)

    # ---- upstream calls with breaker, retry budget and fallback -------------------------------------

    async def _attempt(self, model: str, d: RouteDecision, body: bytes, payload: dict, headers: dict,
                       endpoint: str, stream: bool, spent: UpstreamTime) -> tuple[UpstreamReply | UpstreamStream, Any]:
        key = (model, d.route)
        breaker = self.breakers[key]
        if breaker.state is not CLOSED and not breaker.allow():
            raise BreakerOpen(f"upstream for {model}/{d.route} is failing; circuit open")
        upstream = self.upstreams[d.target.upstream]
        budget = self.budgets[key]
        budget.on_request()
        attempts = self.max_attempts[model]
        attempt = 0
        perf = time.perf_counter
        while True:
            attempt += 1
            started = perf()
            try:
                if stream:
                    result = await upstream.open_stream(endpoint, body, payload, headers)
                    if not breaker.healthy:
                        breaker.record_success()
                    return result, None
                reply = await upstream.post(endpoint, body, payload, headers)
                try:
                    doc = orjson.loads(reply.body)
                except orjson.JSONDecodeError:
                    raise UpstreamBadResponse(f"upstream {d.target.upstream!r} answered with invalid JSON") from None
                if not isinstance(doc, dict):
                    raise UpstreamBadResponse(f"upstream {d.target.upstream!r} answered with a non-object")
                if not breaker.healthy:
                    breaker.record_success()
                return reply, doc
            except UpstreamStatus as exc:
                if exc.status >= 500:
                    breaker.record_failure()
                else:
                    breaker.record_success()  # a 4xx says the upstream is up; it is the request that is wrong
                if not exc.retryable:
                    raise
                last: UpstreamError = exc
            except UpstreamError as exc:
                breaker.record_failure()
                last = exc
            finally:
                spent.seconds += perf() - started
            if attempt >= attempts or not budget.try_spend() or not breaker.allow():
                raise last
            self.metrics.series(model, d.route).retries.inc()

    async def _call(self, model: str, router: ModelRouter, d: RouteDecision, payload: dict, headers: dict,
                    endpoint: str, stream: bool, spent: UpstreamTime) -> tuple[Outcome, UpstreamReply | UpstreamStream, Any]:
        try:
            result, doc = await self._attempt(model, d, request_body(payload, d.upstream_model), payload, headers,
                                              endpoint, stream, spent)
            return Outcome(d.route, d), result, doc
        except UpstreamError as exc:
            other = self._fallback_side(model, router, d, exc)
            if other is None:
                raise
            self.metrics.model(model).fallbacks.inc()
            result, doc = await self._attempt(model, other, request_body(payload, other.upstream_model), payload,
                                              headers, endpoint, stream, spent)
            return Outcome("fallback", other), result, doc

    def _fallback_side(self, model: str, router: ModelRouter, d: RouteDecision, exc: UpstreamError) -> RouteDecision | None:
        """The side that answers when `d`'s side failed with `exc`; None when there is no fallback."""
        fb = self.config.models[model].routing.fallback
        if not fb.enabled or (isinstance(exc, UpstreamStatus) and exc.status not in fb.on_status):
            return None
        if d.route == "student":
            return router.side("teacher")
        if fb.teacher_to_student:
            return router.side("student", self._student_version(model))
        return None

    async def _cascade(self, model: str, router: ModelRouter, d: RouteDecision, payload: dict, headers: dict,
                       endpoint: str, spent: UpstreamTime) -> tuple[Outcome, UpstreamReply, dict, ParsedAnswer | None]:
        policy = self.cascades[model]
        student_payload = policy.student_payload(payload, endpoint)
        outcome, reply, doc = await self._call(model, router, d, student_payload, headers, endpoint, False, spent)
        if outcome.route != "student":
            return outcome, reply, doc, None
        answer = parse_response(doc)
        verdict = policy.check(answer)
        self.metrics.model(model).cascade_checks.inc()
        if not verdict.escalate:
            if policy.strip_logprobs(doc, payload):
                reply.body = orjson.dumps(doc)
            outcome.confidence = verdict.confidence
            return outcome, reply, doc, answer
        self.metrics.model(model).escalations.inc()
        teacher = router.side("teacher")
        try:
            t_reply, t_doc = await self._attempt(model, teacher, request_body(payload, teacher.upstream_model), payload,
                                                 headers, endpoint, False, spent)
        except UpstreamError as exc:
            if self._fallback_side(model, router, teacher, exc) is None:
                raise
            # teacher_to_student: the escalation failed, so the student's own answer is served after all.
            self.metrics.model(model).fallbacks.inc()
            if policy.strip_logprobs(doc, payload):
                reply.body = orjson.dumps(doc)
            return Outcome("fallback", outcome.decision, confidence=verdict.confidence), reply, doc, answer
        out = Outcome("teacher", teacher, escalated=True, confidence=verdict.confidence, student_answer=answer)
        return out, t_reply, t_doc, answer

    # ---- after the response: metrics, tokens, trace, log, evaluator ---------------------------------

    def _finish(self, t0: float, model: str, endpoint: str, key: KeyInfo, rid: str, hdrs: Mapping[str, str],
                payload: dict, raw: bytes, outcome: Outcome, upstream_s: float, answer: ParsedAnswer | None,
                doc: dict | None, answer_body: bytes | None, ttft_s: float | None, span: Any,
                chunks: list[bytes] | None) -> None:
        """The response is complete: its duration is taken now, the rest (`_account`) runs with the other
        requests that finished in this loop iteration (gateway.loop_batch). A traced request is accounted at
        once, so its span ends with the response. Positional: called on every request (keywords cost a dict)."""
        total = time.perf_counter() - t0
        if span is not None:
            self._account(total, model, endpoint, key, rid, hdrs, payload, raw, outcome, upstream_s, answer, doc,
                          answer_body, ttft_s, span, chunks)
        else:
            self.accounting.put((total, model, endpoint, key, rid, hdrs, payload, raw, outcome, upstream_s, answer,
                                 doc, answer_body, ttft_s, None, chunks))

    def _account(self, total: float, model: str, endpoint: str, key: KeyInfo, rid: str, hdrs: Mapping[str, str],
                 payload: dict, raw: bytes, outcome: Outcome, upstream_s: float, answer: ParsedAnswer | None,
                 doc: dict | None, answer_body: bytes | None, ttft_s: float | None, span: Any,
                 chunks: list[bytes] | None) -> None:
        """Metrics, token limits, trace, access log and the evaluator's hand-off for one answered request.
        `raw`: the request body `payload` was parsed from; `doc`: the upstream's JSON answer, parsed from
        `answer_body`, or `answer`, when parsed already. `chunks`: a stream's relayed SSE, whose usage is read
        here and whose full answer the evaluator assembles only if it needs it."""
        if chunks is not None:
            prompt, completion = sse_usage(chunks)  # usage sits in the last chunks
        else:
            prompt, completion = answer_tokens(answer, doc)
        route = outcome.route
        self.metrics.series(model, route).answered(total, max(0.0, total - upstream_s), prompt or 0, completion or 0)
        if key.rate_limit.tokens_per_minute is not None:
            self.limiter.spend_tokens(key, (prompt or 0) + (completion or 0))
        if span is not None:
            Tracing.finish(span, response_model=outcome.decision.upstream_model, route=route, status=200,
                           input_tokens=prompt, output_tokens=completion)
        if self.access_log is not None:
            self.access_log.write({"request_id": rid, "key": key.name, "model": model, "route": route,
                                   "version": outcome.decision.version, "endpoint": endpoint, "status": 200,
                                   "duration_s": round(total, 6), "prompt_tokens": prompt, "completion_tokens": completion})
        ev = self.evaluator
        if ev is None or endpoint == "embeddings":
            return
        try:
            # An escalated answer is the teacher's: the record says "cascade" (a teacher route for the evaluator).
            # The evaluator reads "fallback" as a teacher answer: a teacher->student fallback is recorded as
            # "student" (the side that answered) so pairs and teacher spend stay right.
            if outcome.escalated:
                record_route = "cascade"
            else:
                record_route = "student" if outcome.decision.route == "student" else route
            rules = self.slices[model]
            slice_name = assign_slice(rules, hdrs, payload) if rules else DEFAULT_SLICE
            # Counted and sampled first: the exchange is built only for the few requests something keeps.
            wanted = ev.offer(model, record_route, prompt or 0, completion or 0, rid, slice_name, outcome.escalated,
                              key.name, outcome.confidence)
            if not wanted and not outcome.escalated:
                return
            served = LazyExchange(  # positional: see LazyExchange.__init__
                rid, model, record_route, outcome.decision.version, endpoint, raw, slice_name, prompt, completion,
                total, ttft_s, answer, answer_body, chunks,
            )
            if record_route in ALWAYS_STORED_ROUTES:  # recorded whatever the sampling: from what is parsed already
                served.record(payload, doc)
            if outcome.escalated:
                self._remember_student(served.record(), outcome)
            if wanted:
                ev.take(served, wanted)
        except Exception:  # the evaluator must never break serving
            log.exception("evaluator hand-off failed for request %s", rid)

    def _remember_student(self, served: ExchangeRecord, outcome: Outcome) -> None:
        student_answer = outcome.student_answer
        if student_answer is None:
            return
        student = build_record(
            request_id=served.request_id, model=served.model, route="student", version=self._student_version(served.model),
            endpoint=served.endpoint, request=served.request, answer=student_answer, status=200,
            latency_s=0.0, ttft_s=None, slice_name=served.slice,
        )
        self.escalated_students[served.request_id] = student
        while len(self.escalated_students) > 1024:
            self.escalated_students.popitem(last=False)

    def _student_version(self, model: str) -> str:
        return self.poller.version_in(model, "live") or BASE_VERSION

    def _fail(self, model: str, route: str, status: int, span: Any) -> None:
        self.metrics.count_request(model, route, status)
        if span is not None:
            Tracing.finish(span, response_model="", route=route, status=status, input_tokens=None, output_tokens=None)


# Request headers the proxy itself reads; routing, slices and tracing declare theirs (Proxy.header_names).
PROXY_HEADERS = frozenset({"authorization", "api-key", "content-length", "x-request-id"})


class ProxyEndpoint:
    """One raw ASGI endpoint (chat | completions | embeddings) over a shared Proxy."""

    def __init__(self, proxy: Proxy, endpoint: str) -> None:
        self.proxy = proxy
        self.endpoint = endpoint

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        t0 = time.perf_counter()
        p = self.proxy
        wanted = p.header_names
        hdrs = {}
        for k, v in scope["headers"]:  # a loop, not a comprehension: on 3.11 that is a function call (~0.1 us)
            if k in wanted:
                hdrs[k.decode("latin-1")] = v.decode("latin-1")
        rid = hdrs.get("x-request-id")
        if rid is None or not well_formed_request_id(rid):
            rid = p.ids.next()
        model_label = "unknown"
        route = "none"
        span = None
        in_flight = None
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed here; use POST")
            key = p.auth.authenticate_header(hdrs.get("authorization"), hdrs.get("api-key"))
            # The body's deadline, registered inline (gateway.delayed_calls) while it is read: a client that
            # sends its headers and then trickles (or never sends) its body is answered 408 instead of holding a
            # connection, a task and up to max_body_bytes for as long as it likes.
            watch = p.body_deadlines
            task = current_task(watch.loop)
            if task is None or watch.timer is None:
                task_key = watch.add(t0)
            else:
                task_key = id(task)
                watch.pending[task_key] = (t0, task)
            try:
                first = await receive()
                raw = _whole_body(first, p.max_body)
                if raw is None:  # more to come: refuse an oversized declared length before reading it
                    _check_declared_length(hdrs.get("content-length"), p.max_body)
                    raw = await read_body(receive, p.max_body, first)
            except CancelledError:
                if not watch.claim(task_key):
                    raise
                raise RequestTimeout(f"the request body did not arrive within {watch.after_s:g} s") from None
            finally:
                watch.pending.pop(task_key, None)
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise InvalidRequest("request body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise InvalidRequest("request body must be a JSON object")
            model = payload.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequest("you must provide a model parameter", param="model")
            router = p.routers.get(model)
            if router is None or not key.may_use(model):
                raise ModelNotFound(model)
            model_label = model
            stream = payload.get("stream", False)
            if stream is None:
                stream = False
            if not isinstance(stream, bool):
                raise InvalidRequest("`stream` must be a boolean", param="stream")
            if self.endpoint == "embeddings":
                stream = False
            if key.limited:
                try:
                    p.limiter.admit(key)
                except RateLimited:
                    p.metrics.model(model).rate_limited.inc()
                    raise
            decision = router.decide(hdrs, payload, key, p.poller.snapshot.get(model))
            route = decision.route
            up_headers = {"x-request-id": rid}
            if p.tracing is not None:
                span = p.tracing.start(self.endpoint, model, "openai", hdrs)
                p.tracing.inject(span, up_headers)
            in_flight = p.in_flight[model]
            in_flight.value += 1
            if stream:
                await self._stream(t0, scope, receive, send, model, router, decision, payload, raw, up_headers, key, rid,
                                   hdrs, span)
            else:
                # Followed while it waits on its upstream (gateway.disconnects; DisconnectWatch.follow and release,
                # inline): a client that leaves cancels the upstream call, so the model stops generating.
                gone = p.unary_disconnects
                if task is None or gone.timer is None:
                    task_key = gone.follow(t0, receive)
                else:
                    gone.pending[task_key] = (t0, (task, receive))
                try:
                    await self._unary(t0, send, model, router, decision, payload, raw, up_headers, key, rid, hdrs, span)
                except CancelledError:
                    if not gone.claim(task_key):
                        raise
                    p._fail(model, route, 499, span)
                finally:
                    if task_key in gone.watchers:
                        gone.release(task_key)
                    else:
                        gone.pending.pop(task_key, None)
        except _ClientGone:
            return
        except GatewayError as exc:
            await self._send_error(send, exc, rid, route)
            p._fail(model_label, route, exc.status, span)
        except Exception as exc:  # never a traceback to the client
            log.exception("unhandled error in %s request %s", self.endpoint, rid)
            await self._send_error(send, exc, rid, route)
            p._fail(model_label, route, 500, span)
        finally:
            if in_flight is not None:
                in_flight.value -= 1

    async def _send_error(self, send: Any, exc: BaseException, rid: str, route: str) -> None:
        status, headers, body = error_response_parts(exc)
        headers = [*headers, (b"content-length", str(len(body)).encode()), (REQUEST_ID_HEADER, rid.encode())]
        if route != "none":
            headers.append((ROUTE_HEADER, route.encode()))
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:  # response already started (mid-stream failure) or client gone
            pass

    async def _unary(self, t0, send, model, router, decision, payload, raw, up_headers, key, rid, hdrs, span) -> None:
        p = self.proxy
        answer = None
        spent = UpstreamTime()
        # Cascade starts at the student: a request routed to the teacher (split, sticky, override) goes straight there.
        if self.endpoint != "embeddings" and decision.route == "student" and decision.reason != "override" \
                and p.cascades[model].settings.enabled:
            outcome, reply, doc, answer = await p._cascade(model, router, decision, payload, up_headers, self.endpoint, spent)
            if outcome.escalated:
                answer = None  # the served answer is the teacher's; parse it later only if needed
        else:
            outcome, reply, doc = await p._call(model, router, decision, payload, up_headers, self.endpoint, False, spent)
        body = reply.body
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", reply.content_type),
                (b"content-length", str(len(body)).encode()),
                (ROUTE_HEADER, outcome.route.encode()),
                (REQUEST_ID_HEADER, rid.encode()),
            ],
        })
        await send({"type": "http.response.body", "body": body, "more_body": False})
        p._finish(t0, model, self.endpoint, key, rid, hdrs, payload, raw, outcome, spent.seconds, answer, doc, body,
                  None, span, None)

    async def _stream(self, t0, scope, receive, send, model, router, decision, payload, raw, up_headers, key, rid, hdrs,
                      span) -> None:
        p = self.proxy
        spent = UpstreamTime()
        # Usage is asked for on every stream (token metrics, limits, teacher spend) and hidden again from
        # clients that did not ask; `payload` stays the client's own for the evaluator.
        asked = with_usage(payload)
        outcome, upstream_stream, _ = await p._call(model, router, decision, payload if asked is None else asked,
                                                    up_headers, self.endpoint, True, spent)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", upstream_stream.content_type),
                (b"cache-control", b"no-cache"),
                (ROUTE_HEADER, outcome.route.encode()),
                (REQUEST_ID_HEADER, rid.encode()),
            ],
        })
        stats = await relay_sse(upstream_stream, send, receive, t0, p.metrics.series(model, outcome.route),
                                p.disconnects, None if asked is None else UsageStripper())
        if not stats.completed:
            p.metrics.count_request(model, outcome.route, 499 if stats.client_disconnected else 502)
            if span is not None:
                Tracing.finish(span, response_model=outcome.decision.upstream_model, route=outcome.route,
                               status=499 if stats.client_disconnected else 502, input_tokens=None, output_tokens=None)
            return
        p._finish(t0, model, self.endpoint, key, rid, hdrs, payload, raw, outcome, spent.seconds + stats.upstream_wait_s,
                  None, None, None, stats.ttft_s, span, stats.chunks)
