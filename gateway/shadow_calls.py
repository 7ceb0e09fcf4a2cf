"""`call_other`: the evaluator's way to ask the side that did NOT answer the same request.

Non-streaming; when the other side is the teacher it is asked for token logprobs and the top-5
alternatives (for distillation with top-k KD). Raises the gateway's typed errors on failure.
"""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import orjson

from evaluator.records import TEACHER_ROUTES, ExchangeRecord
from gateway.errors import UpstreamBadResponse
from gateway.exchange import build_record, parse_response

if TYPE_CHECKING:
    from gateway.proxy import Proxy

TEACHER_TOP_LOGPROBS = 5


class ShadowCaller:
    def __init__(self, proxy: "Proxy") -> None:
        self.proxy = proxy

    async def __call__(self, served: ExchangeRecord) -> ExchangeRecord:
        p = self.proxy
        remembered = p.escalated_students.pop(served.request_id, None)
        if remembered is not None and served.route in TEACHER_ROUTES:
            return remembered  # cascade already asked the student for this very request
        router = p.routers[served.model]
        if served.route in TEACHER_ROUTES:
            # A version in the registry's shadow stage gets the shadow traffic; else live/canary as served.
            active = p.poller.active(served.model)
            candidate = getattr(active, "shadow", None) if active is not None else None
            version = candidate.id if candidate is not None else router.canary.pick(active, random.random())
            decision = router.side("student", version)
        else:
            decision = router.side("teacher")
        payload = dict(served.request)
        payload["model"] = decision.upstream_model
        payload["stream"] = False
        payload.pop("stream_options", None)
        if decision.route == "teacher":
            if served.endpoint == "chat":
                payload["logprobs"] = True
                payload["top_logprobs"] = TEACHER_TOP_LOGPROBS
            else:
                payload["logprobs"] = TEACHER_TOP_LOGPROBS
        upstream = p.upstreams[decision.target.upstream]
        t0 = time.perf_counter()
        reply = await upstream.post(served.endpoint, orjson.dumps(payload), payload,
                                    {"x-request-id": served.request_id, "x-distillgate-shadow": "1"})
        try:
            doc = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse("shadow upstream answered with invalid JSON") from None
        if not isinstance(doc, dict):
            raise UpstreamBadResponse("shadow upstream answered with a non-object")
        return build_record(
            request_id=served.request_id, model=served.model, route=decision.route, version=decision.version,
            endpoint=served.endpoint, request=served.request, answer=parse_response(doc), status=200,
            latency_s=time.perf_counter() - t0, ttft_s=None, slice_name=served.slice,
        )

