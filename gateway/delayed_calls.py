"""One event-loop timer for many per-request deadlines.

A uvloop timer costs a libuv handle to create and another to cancel, a few thousand instructions each
(bench/proxy_instructions.py: aiohttp's per-read socket timeout cost the gateway ~12,000 instructions a
request), while almost every deadline is withdrawn long before it is due. Here a deadline is a dict
entry: `add` when the clock starts, `discard` when the awaited thing happens, and the shared timer calls
what is still registered once its delay has passed.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable


class DelayedCalls:
    """Calls `fire()` for each key still registered `after_s` after it was added, from one timer shared by
    all keys (kept in the order they were added, so a sweep stops at the first key not yet due).
    Event-loop thread only."""

    __slots__ = ("after_s", "_pending", "_timer", "loop")

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._pending: dict[int, tuple[float, Callable[[], object]]] = {}  # key -> (added at, fire); oldest first
        self._timer: asyncio.TimerHandle | None = None
        # The loop every add() runs on: bound by the app's lifespan (its upstream sessions are tied to that loop
        # too), or the first running loop seen. Kept because asyncio.get_running_loop() is a getpid() system
        # call on Python 3.11 (~0.2 us), and the hot path would make it on every request.
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs every later add() on `loop` (an app served again: the new lifespan's loop); what was pending
        on the previous one is dropped with it."""
        self.loop = loop
        self._timer = None
        self._pending.clear()

    def add(self, key: int, fire: Callable[[], object]) -> None:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        self._pending[key] = (loop.time(), fire)
        if self._timer is None:
            self._timer = loop.call_later(self.after_s, self._sweep)

    def discard(self, key: int) -> None:
        self._pending.pop(key, None)

    def _sweep(self) -> None:
        self._timer = None
        loop = self.loop
        due_before = loop.time() - self.after_s
        pending = self._pending
        while pending:
            key = next(iter(pending))
            since, fire = pending[key]
            if since > due_before:
                self._timer = loop.call_at(since + self.after_s, self._sweep)
                return
            del pending[key]
            fire()


class Deadline:
    """Cancels the task that created it when fired (by a DelayedCalls); `fired` tells that cancellation
    from any other (the caller then un-cancels its task and raises its own timeout error)."""

    __slots__ = ("task", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`loop`: the running loop when known (DelayedCalls.loop), which spares current_task() a getpid()."""
        self.task = asyncio.current_task(loop)
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        if self.task is not None:
            self.task.cancel()
