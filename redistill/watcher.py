"""Built-in agreement watcher: fires when the Wilson lower bound stays below a threshold long enough.

A pure state machine driven by an explicit clock (``check(now)``), so tests and the service control time.
Hysteresis: after firing it only re-arms once the bound recovers above threshold + recover_margin;
cooldown_s spaces firings for a model even when it re-arms.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from redistill.records import Trigger
from redistill.settings import WatcherSettings


class AgreementView(Protocol):
    n: int
    ratio: float | None
    lower: float | None


Agreement = Callable[[str], Any]  # model -> AgreementSnapshot (evaluator) for the live version


@dataclass(slots=True)
class _State:
    armed: bool = True
    below_since: float | None = None
    last_fired: float | None = None


class AgreementWatcher:
    def __init__(self, settings: WatcherSettings, models: Iterable[str], agreement: Agreement) -> None:
        self.settings = settings
        self.models = list(models)
        self._agreement = agreement
        self._state = {m: _State() for m in self.models}

    def check(self, now: float) -> list[Trigger]:
        fired = []
        for model in self.models:
            trig = self._check_one(model, self._agreement(model), now)
            if trig is not None:
                fired.append(trig)
        return fired

    def _check_one(self, model: str, snap: AgreementView, now: float) -> Trigger | None:
        s, cfg = self._state[model], self.settings
        lower = snap.lower
        if lower is None or snap.n < cfg.min_samples:
            s.below_since = None  # not enough evidence either way
            return None
        if not s.armed:
            if lower >= cfg.threshold + cfg.recover_margin:
                s.armed, s.below_since = True, None
            return None
        if lower >= cfg.threshold:
            s.below_since = None
            return None
        if s.below_since is None:
            s.below_since = now
        if now - s.below_since < cfg.for_s:
            return None
        if s.last_fired is not None and now - s.last_fired < cfg.cooldown_s:
            return None
        s.armed, s.below_since, s.last_fired = False, None, now
        return Trigger(
            source="watcher", model=model, created_at=now,
            reason=f"agreement lower bound {lower:.3f} < {cfg.threshold} for {cfg.for_s:.0f}s",
            metrics={"lower": lower, "ratio": float(snap.ratio or 0.0), "n": float(snap.n)},
        )
