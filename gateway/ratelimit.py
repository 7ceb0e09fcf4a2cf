"""Per-key rate limits: requests/min and tokens/min as token buckets.

Tokens are only known after the answer, so a request is admitted while the key's token bucket is
positive and the actual usage is debited afterwards (the bucket may go negative, delaying the next one).
"""
from __future__ import annotations

import time
from collections.abc import Callable

from gateway.auth import KeyInfo
from gateway.errors import RateLimited


class _Bucket:
    __slots__ = ("capacity", "rate", "level", "stamp")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def admit(self, key: KeyInfo) -> None:
        """Take one request from the key's budget or raise RateLimited with a retry-after."""
        limits = key.rate_limit
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return
        now = self._clock()
        if limits.tokens_per_minute is not None:
            tb = self._tokens.get(key.name)
            if tb is None:
                tb = self._tokens[key.name] = _Bucket(limits.tokens_per_minute, now)
            tb.refill(now)
            if tb.level <= 0:
                raise RateLimited(f"Rate limit reached for key {key.name!r}: tokens per minute.", tb.seconds_until(1.0))
        if limits.requests_per_minute is not None:
            rb = self._requests.get(key.name)
            if rb is None:
                rb = self._requests[key.name] = _Bucket(limits.requests_per_minute, now)
            rb.refill(now)
            if rb.level < 1.0:
                raise RateLimited(f"Rate limit reached for key {key.name!r}: requests per minute.", rb.seconds_until(1.0))
            rb.level -= 1.0

    def spend_tokens(self, key: KeyInfo, tokens: int) -> None:
        tb = self._tokens.get(key.name)
        if tb is not None and tokens:
            tb.refill(self._clock())
            tb.level -= tokens
