"""The event loop that per-request machinery (gateway.delayed_calls, gateway.loop_batch) schedules on.

Kept rather than looked up per request: asyncio.get_running_loop() is a getpid() system call on Python
3.11 (~0.2 us), and the hot path would make it several times a request. The app's lifespan binds the loop
it runs on (its upstream sessions are tied to that loop too); until then, the first running loop seen is
kept. A bound loop that has since closed (an app driven again on a new loop without its lifespan, as a
test harness may) gives way to the running one, so nothing is scheduled on a dead loop, where it would
either raise after the response was sent or never run.
"""
from __future__ import annotations

import asyncio


class LoopBound:
    """Base for objects that schedule callbacks on one event loop. Event-loop thread only."""

    __slots__ = ("loop",)

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedules on `loop` from now on (subclasses drop what was pending on the previous one)."""
        self.loop = loop

    def current_loop(self) -> asyncio.AbstractEventLoop:
        """The bound loop, or the running one (bound from now on) when none is bound or the bound one closed.
        Call from the event-loop thread, with a loop running."""
        loop = self.loop
        if loop is None or loop.is_closed():
            self.bind(asyncio.get_running_loop())
            loop = self.loop
        return loop
