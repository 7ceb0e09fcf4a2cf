"""Drift comparisons in a child process, so the gateway's process never loads scipy/scikit-learn.

Why a process and not the drift thread: those libraries add ~95 MB to the serving process (measured:
113 MB -> 207 MB once the first comparison imported them), and a comparison (~20 ms of sklearn fits,
~0.6 s for the first one's imports) would otherwise hold the gateway's GIL while requests wait.

Why not multiprocessing's pools: a spawned pool child first re-imports the parent's main module (the
gateway's CLI, ~20 MB of config models) and brings a resource-tracker process along; this child is
`python -m evaluator.drift_worker`, importing only what a comparison needs. It talks over a socket pair
with multiprocessing.connection's framing (pickled values): two windows of Observations in, a
DriftSnapshot (or the child's error text) out. Started by `warm()` when drift sees its first request
(the child imports scipy and scikit-learn then, ~1.5 s of CPU, while the reference window fills: inside
the first comparison those imports landed minutes into live traffic, on the gateway's core), or by the
first comparison at the latest; kept, and replaced if it dies.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection

from evaluator.drift import Comparer, DriftSnapshot, LabelOf, Observation, preload_comparison_libraries
from evaluator.settings import DriftSettings

log = logging.getLogger(__name__)

_FD_ENV = "DISTILLGATE_DRIFT_WORKER_FD"


class DriftWorkerError(RuntimeError):
    """The child failed a comparison (its traceback is the message) or could not be kept alive."""


class DriftWorker:
    """`compare(...)` runs DriftDetector.compare in the child and blocks until it answers: call it from the
    drift thread, never from the event loop. One comparison at a time (a lock), like the drift thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._closed = False

    def _start(self) -> Connection:
        parent, child = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "evaluator.drift_worker"], pass_fds=(child.fileno(),),
                env={**os.environ, _FD_ENV: str(child.fileno())}, stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def warm(self) -> None:
        """Starts the child now if it is not running (it imports its libraries at once); blocking: call it
        from the drift thread. A failure is logged and left to the first comparison to retry."""
        with self._lock:
            if self._closed or self._conn is not None:
                return
            try:
                self._start()
            except OSError:
                log.exception("could not start the drift worker process; the first comparison will retry")

    def compare(self, settings: DriftSettings, label_of: LabelOf | None, reference: Sequence[Observation],
                current: Sequence[Observation]) -> DriftSnapshot:
        request = (settings, label_of, list(reference), list(current))
        with self._lock:
            if self._closed:
                raise DriftWorkerError("drift worker is closed")
            for attempt in (1, 2):
                conn = self._conn or self._start()
                try:
                    conn.send(request)
                    ok, value = conn.recv()
                except (EOFError, OSError):
                    # The child died (OOM killer, a native crash): start a fresh one and try once more.
                    log.warning("drift worker process died; starting a new one (attempt %d)", attempt)
                    self._drop()
                    continue
                if not ok:
                    raise DriftWorkerError(value)
                return value
        raise DriftWorkerError("drift worker process keeps dying")

    @property
    def pid(self) -> int | None:
        """The child's pid once started (tests, diagnostics)."""
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()  # EOF: the child's loop ends
                self._conn = None
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None


def serve(conn: Connection) -> None:
    """The child's loop: one comparison per message until the parent closes its end."""
    try:
        preload_comparison_libraries()
    except ImportError:  # the first comparison raises it again, with a traceback the parent logs
        pass
    compare = Comparer()
    while True:
        try:
            settings, label_of, reference, current = conn.recv()
        except EOFError:
            return
        try:
            reply = (True, compare(settings, label_of, reference, current))
        except Exception:  # noqa: BLE001 - the parent logs it; the child stays up for the next window
            reply = (False, traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:  # the parent is gone (killed mid-comparison): nothing left to answer
            return


if __name__ == "__main__":
    serve(Connection(int(os.environ[_FD_ENV])))
