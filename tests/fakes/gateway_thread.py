"""The REAL gateway app under uvicorn (uvloop + httptools, as `distillgate serve` runs it) in a thread.

    with GatewayThread(config) as gw:          # gw.url == "http://127.0.0.1:PORT"
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="...")
        gw.app.state.metrics ...               # same process: app state is inspectable

Extra keyword arguments go to gateway.app.create_app (registry=, evaluator=, span_exporter=, ...).
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import DistillgateConfig


class GatewayThread:
    def __init__(self, config: DistillgateConfig, **app_kwargs: Any) -> None:
        self.config = config
        self.app = create_app(config, **app_kwargs)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, loop="uvloop", http="httptools", lifespan="on", log_level="warning", access_log=False,
            timeout_graceful_shutdown=5,
        ))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "GatewayThread":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("gateway failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start within 30 s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._sock.close()

    def __enter__(self) -> "GatewayThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels...}` from a /metrics exposition (labels must match exactly those given)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None
