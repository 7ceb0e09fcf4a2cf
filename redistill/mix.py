"""Oversampling disagreements and drifted slices while keeping the slice mix close to current traffic."""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from redistill.records import Example


def slice_shares(slices: Sequence[str]) -> dict[str, float]:
    counts = Counter(slices)
    total = sum(counts.values()) or 1
    return {s: c / total for s, c in counts.items()}


def oversample(
    examples: Sequence[Example],
    *,
    disagreement_factor: float,
    target_mix: Mapping[str, float] | None,
    max_factor: float = 4.0,
) -> tuple[list[Example], dict[str, float]]:
    """Repeat examples (never drop any): disagreements ``disagreement_factor`` times, then each slice by
    the factor that moves its share toward ``target_mix`` (the slice mix of *recent* traffic, so a slice
    that drift made more common gets more weight). Factors are capped at ``max_factor``; fractional
    factors repeat a deterministic prefix. Returns the examples and the per-slice factors used."""
    weighted: list[Example] = []
    for ex in examples:
        reps = disagreement_factor if ex.disagreement else 1.0
        weighted.extend([ex] * _count(reps, ex.request_hash))
    factors: dict[str, float] = {}
    if target_mix:
        current = slice_shares([e.slice for e in weighted])
        raw = {s: target_mix.get(s, share) / share for s, share in current.items()}
        # Only ratios matter for the mix: the least-boosted slice stays at 1x and nothing is dropped.
        low = min(raw.values()) or 1.0
        factors = {s: min(max_factor, max(1.0, r / low)) for s, r in raw.items()}
        out = []
        for ex in weighted:
            out.extend([ex] * _count(factors[ex.slice], ex.request_hash))
        weighted = out
    return weighted, factors


def _count(factor: float, key: str) -> int:
    """Integer repeats for a fractional factor, deterministically from the example's hash."""
    whole = int(factor)
    frac = factor - whole
    bump = 1 if frac > 0 and (int(key[:8], 16) / 0xFFFFFFFF) < frac else 0
    return max(1, whole + bump)
