"""A deadline for request bodies: a client that sends its headers and then trickles (or never sends) its
body is answered 408 after server.body_timeout_s instead of holding a connection, a task and up to
server.max_body_bytes of buffered body for as long as it likes (uvicorn bounds the wait between requests,
not the wait for a body).

A body is only known to be there once receive() has answered, so every request is registered while it
reads one, usually for no time at all. The handler writes and removes its entry itself (its start time and
task) on the shared timer of gateway.delayed_calls, with no call of its own: in
bench/hot_path_instructions.py a `Deadline` object with `add` and `discard` calls cost ~9,000 instructions
a request, the inline entry ~3,000.
"""
from __future__ import annotations

import asyncio

from gateway.delayed_calls import DelayedCalls


class BodyWatch(DelayedCalls):
    """`pending[key] = (start, task)` while a request reads its body (then `arm()` if `timer` is None), popped
    once read. A task still reading `after_s` after its start is cancelled and its key remembered, so the
    handler tells its timeout (`timed_out(key)`) from any other cancellation. Event-loop thread only."""

    __slots__ = ("fired",)

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.fired: set[int] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        super().bind(loop)
        self.fired.clear()

    def timed_out(self, key: int) -> bool:
        """True (once) when `key`'s task was cancelled for its deadline; the task is then un-cancelled, so its
        handler can answer the client instead of unwinding."""
        if key not in self.fired:
            return False
        self.fired.discard(key)
        task = asyncio.current_task(self.loop)
        if task is not None:
            task.uncancel()
        return True

    def _due(self, key: int, task: asyncio.Task | None) -> None:
        if task is not None:  # None: registered on a loop that has no task for it (an app driven without a lifespan)
            self.fired.add(key)
            task.cancel()
