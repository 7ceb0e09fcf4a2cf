"""Teacher token spend and dollars saved against sending every request to the teacher.

Served requests are not seen one by one here: their tokens are in the store's served tally
(evaluator.served_tally), and spend is priced from those totals at scrape. Prices are linear, so pricing
the totals equals pricing each request, except where a model's student costs more than its teacher on
one kind of token: a request's saving can then be negative, savings are counted per request (never
below zero, as a counter must), and only those models pay for it on the hot path.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from evaluator.metrics import ModelServed
from evaluator.records import TEACHER_ROUTES, ExchangeRecord, ServedExchange
from evaluator.served_tally import ServedTally
from evaluator.settings import ModelEvalSettings, PriceSettings

HOUR_S = 3600.0


def teacher_cost(prices: PriceSettings, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * prices.teacher_prompt + completion_tokens * prices.teacher_completion) / 1e6


def student_cost(prices: PriceSettings, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * prices.student_prompt + completion_tokens * prices.student_completion) / 1e6


def saving(prices: PriceSettings, prompt_tokens: int, completion_tokens: int) -> float:
    return teacher_cost(prices, prompt_tokens, completion_tokens) - student_cost(prices, prompt_tokens, completion_tokens)


def tokens(record: ServedExchange) -> tuple[int, int]:
    return record.prompt_tokens or 0, record.completion_tokens or 0


class SpendTracker:
    """Prices served traffic from the tally, counts shadow teacher answers, and keeps the last hour of
    shadow tokens for the sampler's cap. Everything but `totals` runs on the event loop."""

    def __init__(self, models: Mapping[str, ModelEvalSettings], tally: ServedTally,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._models = models
        self._tally = tally
        self._clock = clock
        self._shadow_tokens: dict[str, int] = {}
        self._shadow_dollars: dict[str, float] = {}
        self._shadow_hour: dict[str, deque[tuple[float, int]]] = {}
        self._shadow_hour_total: dict[str, int] = {}
        p = {name: m.prices for name, m in models.items()}
        # Models whose student is dearer than the teacher for some token: savings counted per request.
        self.per_request_savings = frozenset(
            name for name, pr in p.items()
            if pr.teacher_prompt < pr.student_prompt or pr.teacher_completion < pr.student_completion)
        self._saved_per_request: dict[str, float] = dict.fromkeys(self.per_request_savings, 0.0)

    def observe_saving(self, model: str, route: str, prompt_tokens: int, completion_tokens: int) -> None:
        """A served request of a model in `per_request_savings` (the caller checks, to keep others free)."""
        if route not in TEACHER_ROUTES:
            s = saving(self._models[model].prices, prompt_tokens, completion_tokens)
            if s > 0:
                self._saved_per_request[model] += s

    def observe_shadow(self, record: ExchangeRecord) -> None:
        """A shadow answer; only teacher answers cost teacher tokens (and count against the hourly cap)."""
        settings = self._models.get(record.model)
        if settings is None or record.route not in TEACHER_ROUTES:
            return
        p, c = tokens(record)
        model = record.model
        self._shadow_tokens[model] = self._shadow_tokens.get(model, 0) + p + c
        self._shadow_dollars[model] = self._shadow_dollars.get(model, 0.0) + teacher_cost(settings.prices, p, c)
        window = self._shadow_hour.setdefault(model, deque())
        window.append((self._clock(), p + c))
        self._shadow_hour_total[model] = self._shadow_hour_total.get(model, 0) + p + c

    def shadow_tokens_last_hour(self, model: str) -> int:
        window = self._shadow_hour.get(model)
        if not window:
            return 0
        cutoff = self._clock() - HOUR_S
        while window and window[0][0] < cutoff:
            self._shadow_hour_total[model] -= window.popleft()[1]
        return self._shadow_hour_total[model]

    def totals(self) -> dict[str, ModelServed]:
        """Per configured model since start: requests offered, teacher tokens and dollars (served + shadow),
        dollars saved by student answers."""
        served: dict[str, list[int]] = {name: [0, 0, 0, 0, 0] for name in self._models}  # n, teacher p/c, student p/c
        for (model, route), (n, _stored, p, c) in self._tally.totals().items():
            row = served.get(model)
            if row is None:
                continue
            row[0] += n
            at = 1 if route in TEACHER_ROUTES else 3
            row[at] += p
            row[at + 1] += c
        out = {}
        for model, (n, tp, tc, sp, sc) in served.items():
            prices = self._models[model].prices
            saved = (self._saved_per_request[model] if model in self.per_request_savings
                     else saving(prices, sp, sc))
            out[model] = ModelServed(
                offered=n,
                teacher_tokens=tp + tc + self._shadow_tokens.get(model, 0),
                teacher_dollars=teacher_cost(prices, tp, tc) + self._shadow_dollars.get(model, 0.0),
                saved_dollars=saved,
            )
        return out
