"""One event-loop timer for many per-request deadlines.

A uvloop timer costs a libuv handle to create and another to cancel, a few thousand instructions each
(bench/proxy_instructions.py: aiohttp's per-read socket timeout cost the gateway ~12,000 instructions a
request), while almost every deadline is withdrawn long before it is due. Here a deadline is a dict entry,
written when the clock starts and popped when the awaited thing happens; the shared timer hands what is
still registered once its delay has passed to `_due`. Times are time.perf_counter()'s, so a handler that
took its request's start time already registers with it.

The hot path writes its entries inline (a Python call costs ~470 instructions on 3.11, an object with an
`__init__` ~1,450; a `Deadline` object with add and discard calls measured ~9,000 a request in
bench/hot_path_instructions.py):

    task = current_task(deadlines.loop)
    if task is None or deadlines.timer is None:
        key = deadlines.add(started)         # binds the running loop if need be, starts the timer
    else:
        key = id(task)
        deadlines.pending[key] = (started, task)
    ...
    deadlines.pending.pop(key, None)         # in a finally

A task's key is its id(): a task waits on one thing at a time, and each kind of deadline has its own
instance.
"""
from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any

from gateway.loop_binding import LoopBound


class DelayedCalls(LoopBound):
    """Hands `_due(key, value)` each entry still registered `after_s` after its start, from one timer shared
    by all keys (kept in the order they were added, so a sweep stops at the first key not yet due; an entry
    written with an older start than the one before it, as a unary request's disconnect watch is, comes due
    no later than that one). `pending` maps key -> (perf_counter() at the start, value). Event-loop thread only; the loop is
    gateway.loop_binding's."""

    __slots__ = ("after_s", "pending", "timer")

    def __init__(self, after_s: float) -> None:
        super().__init__()
        self.after_s = after_s
        self.pending: dict[int, tuple[float, Any]] = {}  # oldest first
        self.timer: asyncio.TimerHandle | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sweeps on `loop` from now on (an app served again: the new lifespan's loop); what was pending on the
        previous one is dropped with it."""
        super().bind(loop)
        self.timer = None
        self.pending.clear()

    def put(self, key: int, value: Any, since: float) -> None:
        """Registers `value` under `key` from `since`, on the running loop (moving off a bound loop that has
        closed: gateway.loop_binding), and starts the timer if none runs."""
        loop = self.current_loop()
        self.pending[key] = (since, value)
        if self.timer is None:
            self.timer = loop.call_later(max(0.0, since + self.after_s - perf_counter()), self._sweep)

    def _due(self, key: int, value: Any) -> None:
        raise NotImplementedError

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
    """Deadlines for tasks: an entry's value is the task to cancel when it is due (`add`, or inline as in
    the module's docstring). The keys it cancelled are remembered, so the task's handler tells that
    cancellation from any other (a shutdown, a client gone) with `claim(key)`."""

    __slots__ = ("cancelled",)

    def __init__(self, after_s: float) -> None:
        super().__init__(after_s)
        self.cancelled: set[int] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        super().bind(loop)
        self.cancelled.clear()

    def add(self, since: float) -> int:
        """Registers the running task, its deadline `after_s` after `since`; answers its key."""
        task = asyncio.current_task(self.current_loop())
        self.put(id(task), task, since)
        return id(task)

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

    def _due(self, key: int, task: asyncio.Task | None) -> None:
        if task is not None:
            self.cancel_task(key, task)
