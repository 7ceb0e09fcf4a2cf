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

from gateway.delayed_calls import TaskDeadlines


class BodyWatch(TaskDeadlines):
    """`pending[key] = (start, task)` while a request reads its body (then `arm()` if `timer` is None), popped
    once read. A task still reading `after_s` after its start is cancelled; its handler then finds
    `claim(key)` true. Event-loop thread only."""

    __slots__ = ()

    def _due(self, key: int, task: asyncio.Task | None) -> None:
        if task is not None:  # None: registered on a loop that has no task for it (an app driven without a lifespan)
            self.cancel_task(key, task)
