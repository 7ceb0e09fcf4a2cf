"""Wilson intervals against hand-computed values; rolling windows and the min-sample rule."""
from __future__ import annotations

import pytest

from evaluator.agreement import ALL, RollingAgreement, wilson_interval
from evaluator.settings import AgreementSettings


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    # z = 1.959964; computed by hand from the Wilson formula.
    (8, 10, 0.4901625, 0.9433178),
    (0, 10, 0.0, 0.2775328),
    (10, 10, 0.7224672, 1.0),
    (45, 50, 0.7863977, 0.9565242),
])
def test_wilson_interval_hand_computed(k: int, n: int, lo: float, hi: float) -> None:
    assert wilson_interval(k, n, 0.95) == pytest.approx((lo, hi), abs=1e-6)


def test_wilson_rejects_empty() -> None:
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_rolling_window_slices_and_min_samples() -> None:
    agreement = RollingAgreement(AgreementSettings(window_size=10, min_samples=5))
    for i in range(4):
        agreement.add("m", "v1", "tier:gold", True)
    below = agreement.snapshot("m", "v1", "tier:gold")
    assert (below.n, below.agreed, below.ratio, below.lower, below.upper) == (4, 4, None, None, None)
    for i in range(20):  # the window keeps the newest 10: 2 agree of the last 10 in this slice
        agreement.add("m", "v1", "tier:gold", i % 5 == 0)
    snap = agreement.snapshot("m", "v1", "tier:gold")
    assert (snap.n, snap.agreed, snap.ratio) == (10, 2, 0.2)
    assert (snap.lower, snap.upper) == pytest.approx(wilson_interval(2, 10))
    for _ in range(10):
        agreement.add("m", "v2", "default", True)
    assert agreement.snapshot("m", "v2").ratio == 1.0  # slice None = the version's aggregate
    assert agreement.snapshot("m", "v1", ALL).n == 10
    overall = agreement.snapshot("m")  # across versions and slices, newest 10 = all v2
    assert (overall.n, overall.agreed) == (10, 10)
    assert agreement.snapshot("unknown").n == 0
