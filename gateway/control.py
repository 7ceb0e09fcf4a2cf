"""Control endpoints for the re-distillation loop: Alertmanager webhook, feedback, versions, rollback.

Reads app.state: config, evaluator, registry, redistill (RedistillService), auth. Errors are the
gateway's typed errors rendered here as OpenAI-shaped JSON, so the router behaves the same in any app.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)

Handler = Callable[[Request], Awaitable[Response]]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, default=str), status_code=status, media_type="application/json")


def _typed_errors(fn: Handler) -> Handler:
    @functools.wraps(fn)
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except GatewayError as exc:
            headers = {k.decode(): v.decode() for k, v in exc.headers()}
            return Response(exc.body(), status_code=exc.status, headers=headers, media_type="application/json")

    return wrapper


def _authenticate(request: Request) -> Any:
    """The one place that depends on the gateway's auth (KeyInfo: name, admin, may_use(model))."""
    return request.app.state.auth.authenticate(request)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("request body is empty; expected JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def _parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequest(f"{param}: {err['msg']}" if param else err["msg"], param=param) from None


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64)
    # Only a sample of served-only exchanges is stored (evaluator.store.served_sample_rate): naming the
    # model lets feedback on an unsampled request still be recorded.
    model: str | None = Field(None, max_length=128)
    label: str | None = Field(None, max_length=10_000)
    rating: float | None = Field(None, ge=0.0, le=1.0)
    comment: str | None = Field(None, max_length=10_000)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    reason: str = Field("manual rollback (api)", max_length=500)


def _version_json(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    gate = v.gate_report or {}
    return {
        "id": v.id, "model": v.model, "status": v.status, "base_model": v.base_model, "adapter_path": v.adapter_path,
        "parent_id": v.parent_id, "dataset_manifest_hash": v.dataset_manifest_hash,
        "gate": {k: gate.get(k) for k in ("passed", "retention", "candidate_score", "current_score", "teacher_score",
                                          "n", "reasons") if k in gate} or None,
        "created_at": v.created_at, "updated_at": v.updated_at,
    }


def _active_json(active: Any) -> dict[str, Any]:
    return {"live": _version_json(active.live), "canary": _version_json(active.canary),
            "canary_percent": active.canary_percent, "shadow": _version_json(active.shadow)}


def build_control_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/distillgate/alerts")
    @_typed_errors
    async def alerts(request: Request) -> Response:
        from redistill.webhook import WebhookError, parse_alertmanager

        config = request.app.state.config
        env = config.redistill.trigger.webhook_token_env
        expected = os.environ.get(env)
        if not expected:
            raise AuthenticationError(f"the alert webhook is disabled: set the {env} environment variable")
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise AuthenticationError("invalid webhook bearer token")
        body = await _body(request)
        try:
            triggers = parse_alertmanager(body, config.redistill.trigger.alert_names, time.time())
        except WebhookError as exc:
            raise InvalidRequest(f"not an Alertmanager webhook payload: {exc}") from None
        service = getattr(request.app.state, "redistill", None)
        results = []
        for trig in triggers:
            if trig.model not in config.models:
                results.append({"model": trig.model, "status": "unknown_model"})
                continue
            if service is None:
                results.append({"model": trig.model, "status": "skipped", "reason": "re-distillation is not enabled"})
                continue
            out = await service.submit(trig)
            results.append({"model": out.model, "status": out.status, "job_id": out.job_id, "reason": out.reason})
        return _json({"received": len(body.get("alerts", [])), "triggers": results})

    @router.post("/v1/distillgate/feedback")
    @_typed_errors
    async def feedback(request: Request) -> Response:
        key = _authenticate(request)
        fb = _parse(FeedbackBody, await _body(request))
        if fb.label is None and fb.rating is None and fb.comment is None:
            raise InvalidRequest("give at least one of label, rating, comment")
        evaluator = getattr(request.app.state, "evaluator", None)
        if evaluator is None:
            raise ServiceUnavailable("feedback needs the evaluator, which is not running")
        unknown = NotFound(f"no served request with id {fb.request_id!r}", param="request_id")
        exchange = await asyncio.to_thread(evaluator.store.exchange_by_request_id, fb.request_id)
        model = exchange.model if exchange is not None else fb.model
        if model is not None and not (key.admin or key.may_use(model)):
            raise unknown  # another key's request: same answer as unknown, nothing revealed
        ok = await evaluator.record_feedback(fb.request_id, label=fb.label, rating=fb.rating, comment=fb.comment,
                                             key_name=key.name, model=None if exchange is not None else fb.model)
        if not ok:
            raise unknown
        return _json({"request_id": fb.request_id, "recorded": True})

    @router.get("/v1/distillgate/versions")
    @_typed_errors
    async def versions(request: Request) -> Response:
        key = _authenticate(request)
        model = request.query_params.get("model")
        if not model:
            raise InvalidRequest("query parameter 'model' is required", param="model")
        if model not in request.app.state.config.models or not (key.admin or key.may_use(model)):
            raise ModelNotFound(model)
        registry = getattr(request.app.state, "registry", None)
        if registry is None:
            return _json({"model": model, "active": {"live": None, "canary": None, "canary_percent": 0.0,
                                                     "shadow": None}, "versions": []})
        active = await asyncio.to_thread(registry.active, model)
        listed = await asyncio.to_thread(registry.list, model)
        return _json({"model": model, "active": _active_json(active), "versions": [_version_json(v) for v in listed]})

    @router.post("/v1/distillgate/rollback")
    @_typed_errors
    async def rollback(request: Request) -> Response:
        key = _authenticate(request)
        if not key.admin:
            raise PermissionDenied("rollback needs an admin key")
        body = _parse(RollbackBody, await _body(request))
        if body.model not in request.app.state.config.models:
            raise ModelNotFound(body.model)
        service = getattr(request.app.state, "redistill", None)
        controller = getattr(service, "controller", None)
        if controller is not None:
            active = await controller.rollback(body.model, body.reason)  # also swaps vLLM adapters
        else:
            registry = getattr(request.app.state, "registry", None)
            if registry is None:
                raise ServiceUnavailable("no model registry is configured")
            active = await asyncio.to_thread(registry.rollback, body.model, body.reason)
        return _json({"model": body.model, "active": _active_json(active)})

    return router
