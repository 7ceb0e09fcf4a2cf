"""Client disconnects cancel the request's upstream call, streaming or not.

ASGI tells an app that its client left only through receive() (`http.disconnect`), and only to a task
that is reading it. A request that has read its body is followed here: once it has been running for a
while, a watcher task reads receive() for it and, on `http.disconnect`, cancels the request's task, whose
upstream call then closes its connection, so the model server stops generating (vLLM aborts a request
whose connection closes). Requests that end before that never get a watcher, which costs a task: ~30 µs
of CPU a request (a 100 ms upstream at 32 connections: 0.21 against 0.18 ms a request without it), where
the dict entry on the shared timer of gateway.delayed_calls costs a fraction of a microsecond.

How long "a while" is: a stream after STREAM_WATCH_AFTER_S (50 ms: a stream runs for seconds and its
watcher also cuts an upstream that lingers after `[DONE]`), a non-streaming request after
UNARY_WATCH_AFTER_S (1 s: short answers, such as a distilled classifier's, never pay for a watcher; a
client that leaves one costs the model at most a second of generation; long generations are cut within a
second of the client leaving).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.delayed_calls import TaskDeadlines

STREAM_WATCH_AFTER_S = 0.05
UNARY_WATCH_AFTER_S = 1.0

Receive = Callable[[], Awaitable[dict[str, Any]]]


class DisconnectWatch(TaskDeadlines):
    """`follow(since, receive)` while a request waits on its upstream or relays a stream, `release(key)`
    when it is done with that. A server's receive() reports `http.disconnect` once the response is complete,
    so a request still followed after ending its response is cancelled as well (the stream relay relies on
    it to cut an upstream that lingers after `[DONE]`); a unary request releases as its handler returns, with
    nothing between its last write and the release that lets the loop run a watcher. After a
    cancellation, `claim(key)` tells whether it was this watch's (the client left). Event-loop thread only."""

    __slots__ = ("watchers",)

    def __init__(self, after_s: float) -> None:
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
