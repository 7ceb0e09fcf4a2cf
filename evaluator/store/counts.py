"""Per-model/route request and token counts as periodic rows: what the served tally gained since the last rows.

Every served request is counted (evaluator.served_tally) even when its exchange is not stored
(served_sample_rate), so route rates and cost in reports stay exact. `drain` runs in the store's writer
thread every counts_interval_s and on flush/close; the event loop only bumps the tally.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from evaluator.served_tally import ServedTally, Totals


class RouteCounts:
    def __init__(self, tally: ServedTally, clock: Callable[[], float] = time.time) -> None:
        self._tally = tally
        self._clock = clock
        self._last: Totals = {}
        self._since = clock()
        # The writer thread's periodic drain and a flush() from another thread may overlap.
        self._lock = threading.Lock()

    def due(self, interval_s: float) -> bool:
        return self._clock() - self._since >= interval_s

    def drain(self) -> list[dict[str, Any]]:
        """The rows counted since the last drain (empty when nothing was served)."""
        with self._lock:
            totals, now = self._tally.totals(), self._clock()
            last, self._last = self._last, totals
            since, self._since = self._since, now
        rows = []
        for (model, route), now_total in totals.items():
            before = last.get((model, route), (0, 0, 0, 0))
            if now_total != before:
                n, s, p, c = (a - b for a, b in zip(now_total, before))
                rows.append({"model": model, "route": route, "requests": n, "stored": s, "prompt_tokens": p,
                             "completion_tokens": c, "period_start": since, "created_at": now})
        return rows
