"""/readyz: are the upstreams reachable? Probed at most every `ttl_s`, so probes cannot be a load source."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from gateway.upstreams import Upstream


class Readiness:
    def __init__(self, upstreams: Mapping[str, Upstream], ttl_s: float = 2.0) -> None:
        self.upstreams = upstreams
        self.ttl_s = ttl_s
        self._checked_at = float("-inf")
        self._result: dict[str, bool] = {}
        self._lock = asyncio.Lock()

    async def check(self) -> dict[str, bool]:
        async with self._lock:
            if time.monotonic() - self._checked_at >= self.ttl_s:
                names = list(self.upstreams)
                results = await asyncio.gather(*(self.upstreams[n].probe() for n in names))
                self._result = dict(zip(names, results))
                self._checked_at = time.monotonic()
            return self._result
