"""OpenTelemetry spans for proxied calls, with GenAI semantic-convention attributes.

Built only when tracing is enabled: the app keeps `None` otherwise and the hot path creates no span
objects at all. The provider is private to the app (never the global one), so tests can inject an
in-memory exporter and two apps never share spans.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TracingSettings

OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}


class Tracing:
    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
        self.tracer = self.provider.get_tracer("distillgate.gateway")
        self.propagator = TraceContextTextMapPropagator()
        self.header_names = frozenset(self.propagator.fields)  # what start() reads of the incoming headers

    def start(self, endpoint: str, model: str, system: str, incoming: Mapping[str, str]) -> Any:
        parent = self.propagator.extract(carrier=dict(incoming))
        op = OPERATION.get(endpoint, endpoint)
        return self.tracer.start_span(
            f"{op} {model}",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": op, "gen_ai.system": system, "gen_ai.request.model": model},
        )

    def inject(self, span: Any, headers: dict[str, str]) -> None:
        """Adds W3C `traceparent` (and `tracestate`) for the upstream call."""
        self.propagator.inject(headers, context=trace.set_span_in_context(span))

    @staticmethod
    def finish(span: Any, *, response_model: str, route: str, status: int,
               input_tokens: int | None, output_tokens: int | None) -> None:
        span.set_attribute("gen_ai.response.model", response_model)
        span.set_attribute("distillgate.route", route)
        span.set_attribute("http.response.status_code", status)
        if input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()
