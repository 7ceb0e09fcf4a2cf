"""Work queued during one event-loop iteration, done together at the start of the next.

What the gateway does after a response is complete (metrics, token counts, the evaluator's hand-off) does
not change the client's answer, so it need not run the moment each response ends. Run per request, it
runs between uvicorn's and aiohttp's code for other connections and finds its own code and data evicted
from the core's caches each time; run over every request that finished in one loop iteration, the first
item brings them in and the rest find them there. Measured with bench/paired_ab.py (floor and both gateways
loaded together, both start orders): 2.6–5.5 % less gateway CPU per request at 16 and 64 connections
(bench/HISTORY.md).

Ordering: the drain is a call_soon callback, so it runs before the loop next polls for I/O: a client
that sends its next request after reading a response finds the previous one accounted for.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gateway.loop_binding import LoopBound

log = logging.getLogger("distillgate.gateway")


class LoopBatch(LoopBound):
    """`put(item)` queues a tuple of arguments; `handle(*item)` runs for each, in order, in the loop's next
    iteration, or at once for the whole batch when `limit` items wait (a loop that does not get to its next
    iteration, e.g. a caller awaiting handlers that never suspend, must not queue without bound). A failing
    item is logged and the rest still run. Event-loop thread only."""

    __slots__ = ("_handle", "_items", "_limit")

    def __init__(self, handle: Callable[..., None], limit: int = 512) -> None:
        super().__init__()  # the loop it drains on: gateway.loop_binding
        self._handle = handle
        self._limit = limit
        self._items: list[tuple[Any, ...]] = []

    def put(self, item: tuple[Any, ...]) -> None:
        items = self._items
        if not items:
            self.current_loop().call_soon(self.drain)
        items.append(item)
        if len(items) >= self._limit:
            self.drain()

    def __len__(self) -> int:
        return len(self._items)

    def drain(self) -> None:
        """Handles everything queued so far (the scheduled call; also at shutdown, so nothing is left)."""
        items, self._items = self._items, []
        handle = self._handle
        for item in items:
            try:
                handle(*item)
            except Exception:  # noqa: BLE001 - one bad item must not cost the others their accounting
                log.exception("after-response work failed")
