"""Rolling agreement per (model, version, slice) with Wilson score intervals.

Convention: slice "all" (ALL) is the aggregate over a version's slices, and version "all" the aggregate
over versions. Numbers are withheld (None) until a window holds ``min_samples`` pairs.
"""
from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist

from evaluator.settings import AgreementSettings

ALL = "all"


@dataclass(frozen=True, slots=True)
class AgreementSnapshot:
    n: int
    agreed: int
    ratio: float | None
    lower: float | None
    upper: float | None


@lru_cache(maxsize=16)
def _z(confidence: float) -> float:
    # cached: gauges are re-exported for every scored pair.
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson_interval(agreed: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at small n and at 0 or 1)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    z = _z(confidence)
    p = agreed / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


class _Window:
    __slots__ = ("items", "agreed")

    def __init__(self, size: int) -> None:
        self.items: deque[bool] = deque(maxlen=size)
        self.agreed = 0

    def add(self, agreed: bool) -> None:
        if len(self.items) == self.items.maxlen and self.items[0]:
            self.agreed -= 1
        self.items.append(agreed)
        self.agreed += agreed


Key = tuple[str, str, str]


class RollingAgreement:
    """O(1) updates; each pair lands in four windows: its slice, ALL slices, ALL versions, both ALL."""

    def __init__(self, settings: AgreementSettings) -> None:
        self.settings = settings
        self._windows: dict[Key, _Window] = {}

    def add(self, model: str, version: str, slice: str, agreed: bool, *, model_wide: bool = True) -> list[Key]:
        """Records a pair; returns the keys whose windows changed (for gauge export). model_wide=False keeps
        it out of the ALL-versions windows (a shadow-stage candidate no user saw)."""
        keys = [(model, version, slice), (model, version, ALL)]
        if model_wide:
            keys += [(model, ALL, slice), (model, ALL, ALL)]
        keys = list(dict.fromkeys(keys))
        for key in keys:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(self.settings.window_size)
            window.add(agreed)
        return keys

    def snapshot(self, model: str, version: str | None = None, slice: str | None = None) -> AgreementSnapshot:
        window = self._windows.get((model, version or ALL, slice or ALL))
        n = len(window.items) if window else 0
        agreed = window.agreed if window else 0
        if n < self.settings.min_samples:
            return AgreementSnapshot(n, agreed, None, None, None)
        lower, upper = wilson_interval(agreed, n, self.settings.confidence)
        return AgreementSnapshot(n, agreed, agreed / n, lower, upper)

    def keys(self) -> Iterator[Key]:
        return iter(list(self._windows))
