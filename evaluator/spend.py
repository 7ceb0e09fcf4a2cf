"""Teacher token spend and dollars saved against sending every request to the teacher."""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from evaluator.metrics import EvaluatorMetrics
from evaluator.records import TEACHER_ROUTES, ExchangeRecord, ServedExchange
from evaluator.settings import ModelEvalSettings, PriceSettings

HOUR_S = 3600.0


def teacher_cost(prices: PriceSettings, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * prices.teacher_prompt + completion_tokens * prices.teacher_completion) / 1e6


def student_cost(prices: PriceSettings, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * prices.student_prompt + completion_tokens * prices.student_completion) / 1e6


def tokens(record: ServedExchange) -> tuple[int, int]:
    return record.prompt_tokens or 0, record.completion_tokens or 0


class SpendTracker:
    """Counts served and shadow teacher spend; keeps the last hour of shadow tokens for the sampler's cap."""

    def __init__(self, models: Mapping[str, ModelEvalSettings], metrics: EvaluatorMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._models = models
        self._metrics = metrics
        self._clock = clock
        self._shadow_hour: dict[str, deque[tuple[float, int]]] = {}
        self._shadow_hour_total: dict[str, int] = {}
        self._saved: dict[str, object] = {}

    def observe_served(self, record: ServedExchange) -> None:
        settings = self._models.get(record.model)
        if settings is None:
            return
        p, c = tokens(record)
        if record.route in TEACHER_ROUTES:
            self._teacher(record.model, settings.prices, p, c)
        else:
            saved = teacher_cost(settings.prices, p, c) - student_cost(settings.prices, p, c)
            if saved > 0:
                counter = self._saved.get(record.model)
                if counter is None:  # `.labels()` once per model, not per request
                    counter = self._saved[record.model] = self._metrics.saved.labels(record.model)
                counter.inc(saved)

    def observe_shadow(self, record: ExchangeRecord) -> None:
        """A shadow answer; only teacher answers cost teacher tokens (and count against the hourly cap)."""
        settings = self._models.get(record.model)
        if settings is None or record.route not in TEACHER_ROUTES:
            return
        p, c = tokens(record)
        self._teacher(record.model, settings.prices, p, c)
        window = self._shadow_hour.setdefault(record.model, deque())
        window.append((self._clock(), p + c))
        self._shadow_hour_total[record.model] = self._shadow_hour_total.get(record.model, 0) + p + c

    def shadow_tokens_last_hour(self, model: str) -> int:
        window = self._shadow_hour.get(model)
        if not window:
            return 0
        cutoff = self._clock() - HOUR_S
        while window and window[0][0] < cutoff:
            self._shadow_hour_total[model] -= window.popleft()[1]
        return self._shadow_hour_total[model]

    def _teacher(self, model: str, prices: PriceSettings, p: int, c: int) -> None:
        self._metrics.teacher_tokens.labels(model).inc(p + c)
        self._metrics.teacher_spend.labels(model).inc(teacher_cost(prices, p, c))
