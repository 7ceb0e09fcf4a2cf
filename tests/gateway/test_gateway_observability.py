"""Observability of the hot path: OpenTelemetry spans (GenAI attributes, W3C propagation, OTLP export),
none at all when tracing is off, and the structured access log."""
from __future__ import annotations

import json
import logging
import time

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import USER_KEY, chat_body
from fakes.gateway_thread import GatewayThread

AUTH = {"authorization": f"Bearer {USER_KEY}"}


def _wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_tracing_spans_with_genai_attributes_and_propagation(make_config, student):
    exporter = InMemorySpanExporter()
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with GatewayThread(make_config({"tracing": {"enabled": True}}), evaluator=False, span_exporter=exporter) as g:
        httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers={
            **AUTH, "traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01"})
        _wait(lambda: len(exporter.get_finished_spans()) == 1)
    span = exporter.get_finished_spans()[0]
    attrs = dict(span.attributes)
    assert span.name == "chat support"
    assert attrs["gen_ai.system"] == "openai" and attrs["gen_ai.request.model"] == "support"
    assert attrs["gen_ai.response.model"] == "student-served"
    assert attrs["gen_ai.usage.input_tokens"] == 1 and attrs["gen_ai.usage.output_tokens"] == 3
    assert format(span.context.trace_id, "032x") == parent_trace
    upstream_tp = student.headers[-1]["traceparent"]
    assert upstream_tp.split("-")[1] == parent_trace and upstream_tp.split("-")[2] == format(span.context.span_id, "016x")

def test_no_tracing_no_spans_no_traceparent(make_config, student):
    with GatewayThread(make_config(), evaluator=False) as g:
        assert g.app.state.tracing is None
        httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert "traceparent" not in student.headers[-1]

def test_access_log_is_structured_json(make_config, caplog):
    with caplog.at_level(logging.INFO, logger="distillgate.access"):
        with GatewayThread(make_config({"server": {"access_log": {"enabled": True}}}), evaluator=False) as g:
            r = httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
    entries = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "distillgate.access"]
    assert len(entries) == 1
    e = entries[0]
    assert e["request_id"] == r.headers["x-request-id"] and e["key"] == "user" and e["route"] == "student"
    assert e["status"] == 200 and e["completion_tokens"] == 3

def test_otlp_exporter_sends_spans_to_the_collector(make_config):
    """tracing.otlp_endpoint set: spans reach a (real, local) OTLP/HTTP receiver by shutdown at the latest."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[ExportTraceServiceRequest] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
        with GatewayThread(make_config({"tracing": {"enabled": True, "otlp_endpoint": endpoint}}), evaluator=False) as g:
            httpx.post(g.url + "/v1/chat/completions", json=chat_body(), headers=AUTH)
        spans = [s for req in received for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        assert [s.name for s in spans] == ["chat support"]
        service = {a.key: a.value.string_value for rs in received[0].resource_spans for a in rs.resource.attributes}
        assert service["service.name"] == "distillgate"
    finally:
        collector.shutdown()
