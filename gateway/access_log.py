"""Structured JSON access log (off by default, sampled) on the `distillgate.access` logger."""
from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import orjson

from gateway.config import AccessLogSettings


class AccessLog:
    def __init__(self, settings: AccessLogSettings, logger: logging.Logger | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self._rate = settings.sample_rate
        self._rng = rng
        self.logger = logger or logging.getLogger("distillgate.access")

    def write(self, entry: dict[str, Any]) -> None:
        if self._rate >= 1.0 or self._rng() < self._rate:
            self.logger.info(orjson.dumps(entry).decode())
