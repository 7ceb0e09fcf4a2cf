"""A background thread that commits queued records in batches, so callers (the event loop) never wait on I/O."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from evaluator.metrics import StoreMetrics

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.05, 0.25, 1.0)


class _FlushMarker:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class BatchWriter:
    """Bounded queue + one writer thread; `put` never blocks, `flush` waits until earlier puts are committed.

    The queue is a deque the writer polls every flush_interval_s: `put` is a lock-free append, so the
    event loop never contends with the writer thread for a queue mutex (queue.Queue's lock + notify made
    every put a possible GIL hand-off). flush/close wake the writer at once.
    """

    def __init__(self, engine: Engine, write_batch: Callable[[Connection, list[Any]], None], *, batch_size: int,
                 flush_interval_s: float, queue_size: int, metrics: StoreMetrics,
                 tick: Callable[[], list[Any]] | None = None) -> None:
        """`tick`: called by the writer thread at every wake-up (at least every flush_interval_s once
        started); what it returns is written with that batch (periodic rows such as route counts)."""
        self._engine = engine
        self._tick = tick
        self._write_batch = write_batch
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._queue: deque[Any] = deque()
        self._queue_size = queue_size
        self._wake = threading.Event()
        self._metrics = metrics
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.errors = 0
        self.dropped = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def put(self, item: Any) -> bool:
        if self._closed or len(self._queue) >= self._queue_size:
            self._count_drop()
            return False
        if self._thread is None:
            self._ensure_thread()
        self._queue.append(item)
        return True

    def start(self) -> None:
        """Starts the writer thread now rather than at the first put (so `tick` runs with nothing queued)."""
        if self._thread is None and not self._closed:
            self._ensure_thread()

    def flush(self, timeout: float | None = None) -> bool:
        """True when everything put before this call is committed and no write failed meanwhile."""
        if self._thread is None:
            return True
        errors_before = self.errors
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout) and self.errors == errors_before

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.append(_STOP)
            self._wake.set()
            thread.join(timeout)

    def _count_drop(self) -> None:
        self.dropped += 1
        self._metrics.writes.labels("dropped").inc()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="distillgate-store-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            if len(self._queue) < self._batch_size:  # let a batch build up: one commit (fsync) per batch
                self._wake.wait(self._interval)
                self._wake.clear()
            batch, markers, stop = self._collect()
            if self._tick is not None:
                try:
                    batch.extend(self._tick())
                except Exception:  # noqa: BLE001 - periodic rows are retried at the next tick
                    log.exception("store writer tick failed")
            if batch:
                self._commit(batch)
            self._metrics.queue_depth.set(len(self._queue))
            for marker in markers:
                marker.done.set()
            if stop:
                return

    def _collect(self) -> tuple[list[Any], list[_FlushMarker], bool]:
        """Up to batch_size records in queue order; stops early at a flush marker or the stop sentinel."""
        batch: list[Any] = []
        queue = self._queue
        while queue and len(batch) < self._batch_size:
            item = queue.popleft()
            if item is _STOP:
                return batch, [], True
            if isinstance(item, _FlushMarker):
                return batch, [item], False
            batch.append(item)
        return batch, [], False

    def _commit(self, batch: list[Any]) -> None:
        for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
            try:
                with self._engine.begin() as conn:
                    self._write_batch(conn, batch)
            except OperationalError as exc:  # locked / connection lost: worth retrying
                if delay is None:
                    self._fail(batch, exc)
                    return
                log.warning("store write failed (attempt %d), retrying: %s", attempt + 1, exc)
                time.sleep(delay)
                continue
            except Exception as exc:  # noqa: BLE001 - a bad record must not kill the writer thread
                if len(batch) > 1:  # isolate the bad record so the rest of the batch is kept
                    for item in batch:
                        self._commit([item])
                else:
                    self._fail(batch, exc)
                return
            self._metrics.writes.labels("ok").inc(len(batch))
            return

    def _fail(self, batch: list[Any], exc: Exception) -> None:
        self.errors += len(batch)
        self._metrics.writes.labels("error").inc(len(batch))
        log.error("store write of %d records failed: %s", len(batch), exc)
