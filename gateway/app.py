"""The gateway ASGI app factory.

The OpenAI hot routes are raw ASGI handlers dispatched by GatewayApp.__call__ before FastAPI's own
middleware stack (Starlette's error/exception middlewares cost ~0.1 ms a request); everything else
(/v1/models, health, metrics, control endpoints) is ordinary FastAPI.

app.state (what other packages' routers may read): config (DistillgateConfig), upstreams (name ->
Upstream), routers (model -> ModelRouter), auth (Authenticator: `authenticate(request) -> KeyInfo`,
raises gateway.errors.AuthenticationError), limiter, evaluator (Evaluator | None, set at start-up),
registry (redistill Registry | None, set at start-up), poller (RegistryPoller), metrics (GatewayMetrics),
metrics_registry (CollectorRegistry), proxy (Proxy), call_other (ShadowCaller), tracing (Tracing | None),
redistill (RedistillService | None, set at start-up).
"""
from __future__ import annotations

import asyncio
import gc
import importlib
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.access_log import AccessLog
from gateway.auth import Authenticator
from gateway.config import DistillgateConfig
from gateway.errors import GatewayError, InvalidRequest, NotFound, error_response_parts
from gateway.metrics import GatewayMetrics
from gateway.proxy import Proxy
from gateway.ratelimit import RateLimiter
from gateway.readiness import Readiness
from gateway.registry_poll import RegistryPoller
from gateway.routing import ModelRouter
from gateway.shadow_calls import ShadowCaller
from gateway.tracing import Tracing
from gateway.upstreams import build_upstream

log = logging.getLogger("distillgate.gateway")

HOT_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}


class GatewayApp(FastAPI):
    """FastAPI with an outer dispatcher: the OpenAI proxy paths go straight to their raw ASGI handlers."""

    hot_routes: dict[str, Any] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            handler = self.hot_routes.get(scope["path"])
            if handler is not None:  # any method: the handler answers 405 itself
                try:
                    await handler(scope, receive, send)
                except Exception:  # the handlers answer their own errors; this is the last line, never a traceback
                    log.exception("unhandled error on %s", scope["path"])
                    await _send_internal_error(send)
                return
        await super().__call__(scope, receive, send)


async def _send_internal_error(send: Any) -> None:
    status, headers, body = error_response_parts(RuntimeError())
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception:  # the response had already started, or the client is gone
        pass


def _error_response(exc: BaseException) -> Response:
    status, headers, body = error_response_parts(exc)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def _build_evaluator(evaluator: Any, config: DistillgateConfig, call_other: ShadowCaller, registry: CollectorRegistry) -> Any:
    """`evaluator`: an instance (used as is), a factory `f(call_other)`, False (none), or None (build one if importable
    and the config's evaluator is enabled)."""
    if evaluator is False or (evaluator is None and not config.evaluator.enabled):
        return None
    if evaluator is not None:
        return evaluator if hasattr(evaluator, "offer") else evaluator(call_other)
    try:
        service = importlib.import_module("evaluator.service")
    except ImportError as exc:
        if exc.name != "evaluator.service":
            raise  # present but broken: fail at start-up rather than silently serve unevaluated
        log.warning("evaluator.service not installed: serving without shadow evaluation")
        return None
    # shadow_version: the promotion "shadow" stage's version per model, so the evaluator can score it unseen.
    return service.Evaluator(config.evaluator, config.models, call_other, registry=registry,
                             shadow_version=call_other.shadow_version)


def _build_registry(evaluator: Any, config: DistillgateConfig) -> Any:
    """The model-version registry on the evaluator store's engine, when both exist."""
    engine = getattr(getattr(evaluator, "store", None), "engine", None)
    if engine is None:
        return None
    try:
        module = importlib.import_module("redistill.registry")
    except ImportError:
        return None
    return module.Registry(engine, canary_percent=config.redistill.promote.canary_percent)


def _build_redistill(config: DistillgateConfig, evaluator: Any, registry: Any, metrics_registry: CollectorRegistry) -> Any:
    """redistill.assemble.build_service on the evaluator store's engine, when both exist."""
    engine = getattr(getattr(evaluator, "store", None), "engine", None)
    if engine is None:
        return None
    try:
        assemble = importlib.import_module("redistill.assemble")
    except ImportError as exc:
        if exc.name != "redistill.assemble":
            raise
        return None
    return assemble.build_service(config, engine, evaluator=evaluator, registry=registry, metrics_registry=metrics_registry)


def create_app(
    config: DistillgateConfig,
    *,
    registry: Any = None,
    evaluator: Any = None,
    metrics_registry: CollectorRegistry | None = None,
    span_exporter: Any = None,
    redistill: Any = None,
    tune_gc: bool = False,
) -> GatewayApp:
    """Build the gateway app. Nothing touches the network until the lifespan starts.

    registry: a redistill Registry (None: built on the evaluator store's engine when possible, else
    every model serves its base student). evaluator: see _build_evaluator. redistill: the
    RedistillService for the control endpoints (None: built by redistill.assemble.build_service on the
    evaluator store's engine and started/stopped with the app; False: none; an instance: used as is). metrics_registry: where the
    gateway's and evaluator's metrics live (default: a fresh one per app, served at /metrics).
    tune_gc: freeze start-up objects and raise GC thresholds (process-wide: the CLI's `serve` sets it).
    """
    metrics_registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
    metrics = GatewayMetrics(metrics_registry)
    upstreams = {name: build_upstream(name, s) for name, s in config.upstreams.items()}
    routers = {name: ModelRouter(name, m) for name, m in config.models.items()}
    auth = Authenticator(config.auth)
    limiter = RateLimiter()
    poller = RegistryPoller(registry, config.models, config.server.registry_poll_s)
    tracing = Tracing(config.tracing, span_exporter) if config.tracing.enabled else None
    access_log = AccessLog(config.server.access_log) if config.server.access_log.enabled else None
    proxy = Proxy(config, auth=auth, limiter=limiter, routers=routers, upstreams=upstreams, metrics=metrics,
                  poller=poller, tracing=tracing, access_log=access_log)
    call_other = ShadowCaller(proxy)
    readiness = Readiness(upstreams)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        proxy.bind_loop(asyncio.get_running_loop())
        for upstream in upstreams.values():
            await upstream.start()
        ev = _build_evaluator(evaluator, config, call_other, metrics_registry)
        if ev is not None and hasattr(ev, "start"):
            await ev.start()
        proxy.evaluator = ev
        app.state.evaluator = ev
        if poller.registry is None:
            poller.registry = _build_registry(ev, config)
        app.state.registry = poller.registry
        await poller.start()
        service, owns_service = redistill, False
        if redistill is None:
            service = _build_redistill(config, ev, poller.registry, metrics_registry)
            owns_service = service is not None
        elif redistill is False:
            service = None
        if owns_service and hasattr(service, "start"):
            await service.start()
        app.state.redistill = service
        if tune_gc:
            # MACHINE-FACTS: fewer, later collections cut CPU per request and p99 under load.
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 50, 1000)
        try:
            yield
        finally:
            proxy.accounting.drain()  # requests answered in the loop's last iteration reach metrics and evaluator
            if owns_service and hasattr(service, "stop"):
                await service.stop()
            await poller.stop()
            if ev is not None and hasattr(ev, "stop"):
                await ev.stop()
            for upstream in upstreams.values():
                await upstream.close()
            if tracing is not None:
                tracing.shutdown()

    app = GatewayApp(title="distillgate", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    st = app.state
    st.config = config
    st.upstreams = upstreams
    st.routers = routers
    st.auth = auth
    st.limiter = limiter
    st.evaluator = None
    st.registry = registry
    st.poller = poller
    st.metrics = metrics
    st.metrics_registry = metrics_registry
    st.proxy = proxy
    st.call_other = call_other
    st.tracing = tracing
    st.redistill = redistill

    app.hot_routes = {path: proxy.endpoint(kind) for path, kind in HOT_PATHS.items()}

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(InvalidRequest(f"invalid request: {exc.errors()[0].get('msg', 'bad input')}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _error_response(NotFound(f"no route for {request.method} {request.url.path}"))
        err = GatewayError(str(exc.detail))
        err.status = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(exc)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        key = auth.authenticate(request)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "distillgate"}
                for name in config.models if key.may_use(name)]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        result = await readiness.check()
        ok = all(result.values())
        body = {"status": "ready" if ok else "unavailable", "upstreams": result}
        return Response(orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json")

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    _include_control_router(app)
    return app


def _include_control_router(app: FastAPI) -> None:
    try:
        control = importlib.import_module("gateway.control")
    except ImportError as exc:
        if exc.name not in ("gateway.control",):
            log.warning("gateway.control failed to import: %s", exc)
        return
    build: Callable[[], Any] | None = getattr(control, "build_control_router", None)
    if build is not None:
        app.include_router(build())
