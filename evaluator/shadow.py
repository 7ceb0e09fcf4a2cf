"""Shadow sampling and the bounded queue + worker pool that call the other model off the hot path."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from enum import Enum

from evaluator.records import ExchangeRecord, ServedExchange
from evaluator.settings import ShadowSettings

log = logging.getLogger(__name__)


class Decision(str, Enum):
    SKIP = "skip"
    SAMPLE = "sample"
    SPEND_CAP = "spend_cap"  # would have been sampled, but the teacher token budget said no


def hash_unit(request_id: str) -> float:
    """A request id's stable position in [0, 1): the same id is always sampled the same way."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Sampler:
    """Decides whether a served request is shadowed: always-rules first, then the rate, under a spend cap.

    Back-off: the effective rate is the configured one until half the hourly teacher-token budget is
    spent, then falls linearly to zero at the cap; past the cap nothing is shadowed, always-rules included.
    """

    def __init__(self, settings: ShadowSettings, shadow_tokens_last_hour: Callable[[], int],
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self._spent = shadow_tokens_last_hour
        self._rng = rng or random.Random()
        self._direction_route = "student" if settings.direction == "student_to_teacher" else "teacher"
        # The always-rules, read once (decide runs on every served request).
        self._on_escalation = settings.always_on_escalation
        self._below_confidence = settings.always_below_confidence
        self._keys = frozenset(settings.always_for_keys)
        self._slices = frozenset(settings.always_for_slices)

    def _always(self, slice_name: str, escalated: bool, key_name: str | None, confidence: float | None) -> bool:
        slices = self._slices
        return (
            (escalated and self._on_escalation)
            or (confidence is not None and self._below_confidence is not None and confidence < self._below_confidence)
            or (key_name is not None and key_name in self._keys)
            or (bool(slices) and (slice_name in slices or slice_name.split(":", 1)[0] in slices))
        )

    def _budget_factor(self) -> float:
        cap = self.settings.teacher_tokens_per_hour
        if cap is None:
            return 1.0
        used = self._spent() / cap
        return max(0.0, min(1.0, 2.0 * (1.0 - used)))

    def decide(self, record: ServedExchange, escalated: bool = False, key_name: str | None = None,
               confidence: float | None = None) -> Decision:
        return self.decide_for(record.route, record.request_id, record.slice, escalated, key_name, confidence)

    def decide_for(self, route: str, request_id: str, slice_name: str, escalated: bool, key_name: str | None,
                   confidence: float | None) -> Decision:
        """`decide` from what a request is counted by, before any record of it is built (positional: every
        request)."""
        # The always-rules only when one could apply; the budget only for a request that would otherwise be
        # sampled (it walks a window).
        if (escalated or confidence is not None or self._keys or self._slices) \
                and self._always(slice_name, escalated, key_name, confidence):
            return Decision.SAMPLE if self._budget_factor() > 0 else Decision.SPEND_CAP
        rate = self.settings.rate
        if rate <= 0 or route != self._direction_route:
            return Decision.SKIP
        u = hash_unit(request_id) if self.settings.deterministic else self._rng.random()
        if u >= rate:
            return Decision.SKIP
        return Decision.SAMPLE if u < rate * self._budget_factor() else Decision.SPEND_CAP


class ShadowQueue:
    """A bounded asyncio queue drained by a fixed pool of workers; `try_put` never waits."""

    def __init__(self, size: int, workers: int, handle: Callable[[ExchangeRecord], Awaitable[None]]) -> None:
        self._queue: asyncio.Queue[ExchangeRecord] = asyncio.Queue(maxsize=size)
        self._workers = workers
        self._handle = handle
        self._tasks: list[asyncio.Task[None]] = []
        self._unfinished: list[ExchangeRecord] = []
        self.accepting = False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def try_put(self, record: ExchangeRecord) -> bool:
        if not self.accepting:
            return False
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            return False
        return True

    def start(self) -> None:
        self.accepting = True
        self._tasks = [asyncio.create_task(self._work(), name=f"distillgate-shadow-{i}") for i in range(self._workers)]

    async def _work(self) -> None:
        while True:
            record = await self._queue.get()
            try:
                await self._handle(record)
            except asyncio.CancelledError:
                self._unfinished.append(record)
                raise
            except Exception:  # noqa: BLE001 - the handler counts its own failures; a worker must not die
                log.exception("shadow handler failed for %s", record.request_id)
            finally:
                self._queue.task_done()

    async def stop(self, drain_timeout_s: float) -> list[ExchangeRecord]:
        """Stops accepting, lets workers drain for up to drain_timeout_s, returns what was not shadowed."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._queue.join(), drain_timeout_s)
        except TimeoutError:
            pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        leftover, self._unfinished = self._unfinished, []
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
            self._queue.task_done()
        return leftover
