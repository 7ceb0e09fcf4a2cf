"""Circuit breaker for one upstream side of one model: closed -> open -> half-open -> closed."""
from __future__ import annotations

import time
from collections.abc import Callable

from gateway.config import BreakerSettings

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


class CircuitBreaker:
    """`allow()` before a call, then exactly one of `record_success()` / `record_failure()`.

    `on_change(state)` is called on every transition (the app exports it as distillgate_breaker_state).
    `healthy`: closed with no failure counted, so a success has nothing to reset (callers skip the call).
    """

    def __init__(
        self,
        settings: BreakerSettings,
        on_change: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = settings.failure_threshold
        self._open_s = settings.open_s
        self._half_open_max = settings.half_open_max
        self._on_change = on_change
        self._clock = clock
        self.state = CLOSED
        self.healthy = True
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        if on_change is not None:
            on_change(CLOSED)

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def allow(self) -> bool:
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self._opened_at < self._open_s:
                return False
            self._set(HALF_OPEN)
            self._probes = 0
        if self._probes < self._half_open_max:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self.state != CLOSED:
            self._set(CLOSED)
        self.healthy = True

    def record_failure(self) -> None:
        self.healthy = False
        if self.state == HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open()

    def _open(self) -> None:
        self._failures = 0
        self._opened_at = self._clock()
        self._set(OPEN)
