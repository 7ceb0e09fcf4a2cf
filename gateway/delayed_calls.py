"""One event-loop timer for many per-request deadlines.

A uvloop timer costs a libuv handle to create and another to cancel, a few thousand instructions each
(bench/proxy_instructions.py: aiohttp's per-read socket timeout cost the gateway ~12,000 instructions a
request), while almost every deadline is withdrawn long before it is due. Here a deadline is a dict
entry: `add` when the clock starts, `discard` when the awaited thing happens, and the shared timer calls
what is still registered once its delay has passed. Times are time.perf_counter()'s, so a caller that took
its request's start time already can register with it (gateway.body_watch).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any

from gateway.loop_binding import LoopBound


class DelayedCalls(LoopBound):
    """Calls `fire()` for each key still registered `after_s` after it was added, from one timer shared by
    all keys (kept in the order they were added, so a sweep stops at the first key not yet due).
    Event-loop thread only; the loop is gateway.loop_binding's.

    `pending` maps key -> (perf_counter() when added, value); what a due entry's value means is `_due`'s (here
    a callable to call). A caller may write an entry itself, in start order, then call `arm()` when `timer`
    is None: what `add` does, without the call."""

    __slots__ = ("after_s", "pending", "timer")

    def __init__(self, after_s: float) -> None:
        super().__init__()
        self.after_s = after_s
        self.pending: dict[int, tuple[float, Any]] = {}  # oldest first
        self.timer: asyncio.TimerHandle | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs every later add() on `loop` (an app served again: the new lifespan's loop); what was pending
        on the previous one is dropped with it."""
        super().bind(loop)
        self.timer = None
        self.pending.clear()

    def add(self, key: int, fire: Callable[[], object]) -> None:
        loop = self.current_loop()  # also moves off a loop that has closed (gateway.loop_binding)
        self.pending[key] = (perf_counter(), fire)
        if self.timer is None:
            self.timer = loop.call_later(self.after_s, self._sweep)

    def discard(self, key: int) -> None:
        self.pending.pop(key, None)

    def arm(self) -> None:
        """Starts the shared timer (none is running)."""
        self.timer = self.current_loop().call_later(self.after_s, self._sweep)

    def _due(self, key: int, fire: Any) -> None:
        fire()

    def _sweep(self) -> None:
        self.timer = None
        now = perf_counter()
        due_before = now - self.after_s
        pending = self.pending
        while pending:
            key = next(iter(pending))
            since, value = pending[key]
            if since > due_before:
                self.timer = self.loop.call_later(since + self.after_s - now, self._sweep)
                return
            del pending[key]
            self._due(key, value)


class TaskDeadlines(DelayedCalls):
    """A DelayedCalls whose due entries lead to cancelling a request's task (`cancel_task`), remembering
    which keys it cancelled, so the task's handler can tell that cancellation from any other (a shutdown,
    a client gone) with `claim(key)`."""

    __slots__ = ("cancelled",)

    def __init__(self, after_s: float) -> None:
        super().__init__(after_s)
        self.cancelled: set[int] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        super().bind(loop)
        self.cancelled.clear()

    def cancel_task(self, key: int, task: asyncio.Task) -> None:
        self.cancelled.add(key)
        task.cancel()

    def claim(self, key: int) -> bool:
        """True (once) when this cancelled `key`'s task; the running task (that one) is then un-cancelled,
        so its handler can answer or count the request instead of unwinding."""
        if key not in self.cancelled:
            return False
        self.cancelled.discard(key)
        task = asyncio.current_task(self.loop)
        if task is not None:
            task.uncancel()
        return True


class Deadline:
    """Cancels the task that created it when fired (by a DelayedCalls); `fired` tells that cancellation
    from any other (the caller then un-cancels its task and raises its own timeout error)."""

    __slots__ = ("task", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`loop`: the running loop when known (LoopBound.current_loop()), which spares current_task() a getpid()."""
        self.task = asyncio.current_task(loop)
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        if self.task is not None:
            self.task.cancel()
