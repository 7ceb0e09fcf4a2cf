"""`call_other`: the evaluator's way to ask the side that did NOT answer the same request.

Non-streaming; when the other side is the teacher it is asked for token logprobs and the top-5
alternatives (for distillation with top-k KD). Raises the gateway's typed errors on failure.
`target_version` asks the student at that version (its LoRA adapter name) whatever answered: the
evaluator uses it for the version in the promotion "shadow" stage, which `shadow_version(model)` names
from the registry poller's snapshot.
"""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import orjson

from evaluator.records import TEACHER_ROUTES, ExchangeRecord
from gateway.errors import UpstreamBadResponse
from gateway.exchange import build_record, parse_response
from gateway.upstreams import request_body

if TYPE_CHECKING:
    from gateway.proxy import Proxy

TEACHER_TOP_LOGPROBS = 5


class ShadowCaller:
    def __init__(self, proxy: "Proxy") -> None:
        self.proxy = proxy

    def shadow_version(self, model: str) -> str | None:
        """The version id in the registry's shadow stage for `model`, if any (no I/O: the poller's snapshot)."""
        return self.proxy.poller.version_in(model, "shadow")

    async def __call__(self, served: ExchangeRecord, *, target_version: str | None = None) -> ExchangeRecord:
        p = self.proxy
        router = p.routers[served.model]
        if target_version is not None:
            decision = router.side("student", target_version)
        elif served.route in TEACHER_ROUTES:
            remembered = p.escalated_students.pop(served.request_id, None)
            if remembered is not None:
                return remembered  # cascade already asked the student for this very request
            # The student as it serves now: the live version, or the canary for its share.
            decision = router.side("student", router.canary.pick(p.poller.active(served.model), random.random()))
        else:
            decision = router.side("teacher")
        payload = dict(served.request)
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
        reply = await upstream.post(served.endpoint, request_body(payload, decision.upstream_model), payload,
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

