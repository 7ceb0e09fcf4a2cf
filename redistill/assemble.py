"""Wiring the loop from the one config (typed Any: redistill never imports the gateway's config model).

The gateway calls ``build_service`` in its lifespan (after the evaluator started) and stores the result
in ``app.state.redistill``; the CLI uses ``admin_factory`` for manual rollback.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from redistill.jobs import JobStore
from redistill.metrics import RedistillMetrics
from redistill.promote import PromotionController, VLLMAdmin
from redistill.registry import Registry
from redistill.runners import KubernetesRunner, LocalRunner, Runner
from redistill.service import RedistillService


def admin_factory(config: Any) -> Callable[[str], VLLMAdmin]:
    """model -> VLLMAdmin for the vLLM server that serves its student (one per upstream, reused)."""
    cache: dict[str, VLLMAdmin] = {}

    def admin_for(model: str) -> VLLMAdmin:
        upstream_name = config.models[model].student.upstream
        if upstream_name not in cache:
            up = config.upstreams[upstream_name]
            if up.kind != "openai" or not up.base_url:
                raise ValueError(f"model {model}: runtime LoRA needs a vLLM (kind: openai) student upstream")
            cache[upstream_name] = VLLMAdmin(up.base_url, api_key=up.api_key(),
                                             timeout_s=up.timeouts.total_s)
        return cache[upstream_name]

    admin_for.cache = cache  # type: ignore[attr-defined]
    return admin_for


def build_runner(config: Any) -> Runner:
    rs = config.redistill.runner
    return KubernetesRunner(rs.kubernetes) if rs.kind == "kubernetes" else LocalRunner()


def build_service(
    config: Any,
    engine: Engine,
    *,
    evaluator: Any = None,
    registry: Registry | None = None,
    metrics_registry: CollectorRegistry | None = None,
    runner: Runner | None = None,
) -> RedistillService:
    """evaluator: anything with ``agreement(model, version=None)`` (evaluator.service.Evaluator)."""
    rs = config.redistill
    models = list(config.models)
    metrics = RedistillMetrics(metrics_registry)
    registry = registry or Registry(engine, canary_percent=rs.promote.canary_percent)
    controller = None
    if evaluator is not None:
        controller = PromotionController(
            registry, admin_factory(config), lambda m, v: evaluator.agreement(m, v), rs.promote, models,
            metrics=metrics, interval_s=rs.promote.interval_s,
        )

    def live_agreement(model: str) -> Any:
        live = registry.active(model).live
        return evaluator.agreement(model, live.id if live else "base")

    return RedistillService(
        rs, models, jobs=JobStore(engine), runner=runner or build_runner(config), controller=controller,
        agreement=live_agreement if evaluator is not None else None,
        config_dump=lambda: config.model_dump(mode="json"), metrics=metrics,
    )
