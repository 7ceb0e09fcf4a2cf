"""Client disconnects cancel the request's upstream call, streaming or not.

ASGI tells an app that its client left only through receive() (`http.disconnect`), and only to a task
that is reading it. A request that has read its body is followed here: once it has been running for
WATCH_AFTER_S, a watcher task reads receive() for it and, on `http.disconnect`, cancels the request's task,
whose upstream call then closes its connection, so the model server stops generating (vLLM aborts a
request whose connection closes). Most requests end before that and never get a watcher: a task per
request costs ~16 µs of CPU (bench/gateway_overhead.py), a dict entry on the shared timer of
gateway.delayed_calls a fraction of one; a disconnect in a request's first 50 ms is noticed at that point.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.delayed_calls import TaskDeadlines

WATCH_AFTER_S = 0.05

Receive = Callable[[], Awaitable[dict[str, Any]]]


class DisconnectWatch(TaskDeadlines):
    """`follow(since, receive)` while a request waits on its upstream or relays a stream, `release(key)`
    when it is done with that. A server's receive() reports `http.disconnect` once the response is complete,
    so a request still followed after ending its response is cancelled as well (the stream relay relies on
    it to cut an upstream that lingers after `[DONE]`); a unary request releases as its handler returns, with
    nothing between its last write and the release that lets the loop run a watcher. After a
    cancellation, `claim(key)` tells whether it was this watch's (the client left). Event-loop thread only."""

    __slots__ = ("watchers",)

    def __init__(self, after_s: float = WATCH_AFTER_S) -> None:
        super().__init__(after_s)
        self.watchers: dict[int, asyncio.Task] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        super().bind(loop)
        self.watchers.clear()

    def follow(self, since: float, receive: Receive) -> int:
        """Follows the running task from `since` (perf_counter); answers its key. Inline, while a timer runs:
        `pending[id(task)] = (since, (task, receive))` (gateway.delayed_calls)."""
        task = asyncio.current_task(self.current_loop())
        self.put(id(task), (task, receive), since)
        return id(task)

    def release(self, key: int) -> None:
        self.pending.pop(key, None)
        watcher = self.watchers.pop(key, None)
        if watcher is not None:
            watcher.cancel()

    def _due(self, key: int, entry: tuple[asyncio.Task | None, Receive]) -> None:
        task, receive = entry
        if task is not None and not task.done():  # None: no task on the loop it was registered on (no lifespan)
            self.watchers[key] = task.get_loop().create_task(self._watch(key, task, receive))

    async def _watch(self, key: int, task: asyncio.Task, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.watchers.pop(key, None)
                self.cancel_task(key, task)
                return
