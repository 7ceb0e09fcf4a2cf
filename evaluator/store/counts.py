"""Per-model/route request and token counters, accumulated in memory and written in periodic rows.

Every served request is counted here even when its exchange is not stored (served_sample_rate), so
route rates and cost in reports stay exact. `add` runs on the event loop (a dict update); `drain`
runs wherever the rows are handed to the writer.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from evaluator.records import ServedExchange


class RouteCounts:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._since = clock()
        # drain() may run in another thread (flush from a report) while add() runs on the loop.
        self._lock = threading.Lock()

    def add(self, record: ServedExchange, stored: bool) -> None:
        key = (record.model, record.route)
        with self._lock:
            row = self._counts.get(key)
            if row is None:
                row = self._counts[key] = [0, 0, 0, 0]
            row[0] += 1
            row[1] += stored
            row[2] += record.prompt_tokens or 0
            row[3] += record.completion_tokens or 0

    def due(self, interval_s: float) -> bool:
        return bool(self._counts) and self._clock() - self._since >= interval_s

    def drain(self) -> list[dict[str, Any]]:
        """The rows counted since the last drain (empty when nothing was served)."""
        with self._lock:
            counts, self._counts = self._counts, {}
            since, now = self._since, self._clock()
            self._since = now
        return [{"model": m, "route": r, "requests": n, "stored": s, "prompt_tokens": p, "completion_tokens": c,
                 "period_start": since, "created_at": now} for (m, r), (n, s, p, c) in counts.items()]
