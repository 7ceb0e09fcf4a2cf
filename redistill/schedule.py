"""Periodic re-distillation on a cron expression (croniter)."""
from __future__ import annotations

from collections.abc import Iterable

from croniter import croniter

from redistill.records import Trigger


class ScheduleError(ValueError):
    pass


class CronSchedule:
    """``due(now)`` yields one trigger per model each time the cron expression's next time has passed."""

    def __init__(self, expression: str, models: Iterable[str], start: float) -> None:
        if not croniter.is_valid(expression):
            raise ScheduleError(f"invalid cron expression {expression!r}")
        self.expression = expression
        self.models = list(models)
        self._next = croniter(expression, start).get_next(float)

    @property
    def next_at(self) -> float:
        return self._next

    def due(self, now: float) -> list[Trigger]:
        if now < self._next:
            return []
        fired_for = self._next
        # Skip missed slots (process was down): one run, then the next future slot.
        it = croniter(self.expression, now)
        self._next = it.get_next(float)
        return [Trigger(source="schedule", model=m, reason=f"schedule {self.expression}", created_at=now,
                        metrics={"slot": fired_for}) for m in self.models]
