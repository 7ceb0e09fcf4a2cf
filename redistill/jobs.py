"""The jobs and triggers tables: what ran, why, and how it ended (sync SQL; call from a thread when async)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from evaluator.store.schema import jobs, pairs, triggers
from redistill.records import Trigger

TERMINAL = frozenset({"succeeded", "rejected", "failed"})


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    model: str
    trigger_id: int | None
    runner: str
    status: str  # queued | running | succeeded | rejected | failed
    version_id: str | None
    error: str | None
    log_path: str | None
    started_at: float
    finished_at: float | None


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_trigger(self, trigger: Trigger, outcome: str, job_id: str | None = None) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(insert(triggers).values(
                model=trigger.model, source=trigger.source, reason=trigger.reason, metrics=dict(trigger.metrics),
                outcome=outcome, job_id=job_id, created_at=trigger.created_at,
            ))
            return int(res.inserted_primary_key[0])

    def set_trigger_job(self, trigger_id: int, outcome: str, job_id: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(triggers).where(triggers.c.id == trigger_id).values(outcome=outcome, job_id=job_id))

    def triggers(self, model: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(triggers).where(triggers.c.model == model).order_by(triggers.c.id)).mappings()
            return [dict(r) for r in rows]

    def create(self, job_id: str, model: str, runner: str, *, trigger_id: int | None = None,
               log_path: str | None = None, status: str = "queued", now: float | None = None) -> JobRecord:
        with self.engine.begin() as conn:
            conn.execute(insert(jobs).values(
                id=job_id, model=model, trigger_id=trigger_id, runner=runner, status=status,
                log_path=log_path, started_at=time.time() if now is None else now,
            ))
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise KeyError(f"unknown job {job_id!r}")
        return JobRecord(**dict(row))

    def update(self, job_id: str, status: str, *, version_id: str | None = None, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status}
        if version_id is not None:
            values["version_id"] = version_id
        if error is not None:
            values["error"] = error[-4000:]
        if status in TERMINAL:
            values["finished_at"] = time.time()
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    def finish_if_unfinished(self, job_id: str, error: str) -> bool:
        """A runner saw its job end without a verdict (crash, kill): mark it failed. True if it did."""
        with self.engine.begin() as conn:
            res = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.not_in(TERMINAL))
                               .values(status="failed", error=error, finished_at=time.time()))
            return bool(res.rowcount)

    def unfinished(self) -> list[JobRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.status.not_in(TERMINAL))).mappings().all()
        return [JobRecord(**dict(r)) for r in rows]

    def last_started(self, model: str) -> float | None:
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(jobs.c.started_at)).where(jobs.c.model == model)).scalar()

    def pairs_since(self, model: str, since: float) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(pairs)
                                    .where(pairs.c.model == model, pairs.c.created_at >= since)).scalar() or 0)
