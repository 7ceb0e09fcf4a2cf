"""RedistillService: the gateway-side half of the loop (no training here).

It accepts triggers (webhook, watcher, schedule, manual), records every one, enforces one job per model
and a cooldown, starts a runner, follows the job to its end, and hands a gated candidate to the
PromotionController (which loads the adapter into vLLM and walks it through shadow -> canary -> live).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from redistill.jobs import TERMINAL, JobRecord, JobStore
from redistill.metrics import RedistillMetrics
from redistill.promote import PromotionController
from redistill.records import Trigger
from redistill.runners import JobExit, JobHandle, JobSpec, Runner
from redistill.schedule import CronSchedule
from redistill.settings import RedistillSettings
from redistill.watcher import AgreementWatcher

log = logging.getLogger(__name__)

# While a job runs, its row is read this often: the verdict there, not only the process's exit, ends the wait.
JOB_POLL_S = 5.0
# A job whose verdict is written but whose process has not ended after this long is stopped (the verdict stands).
VERDICT_GRACE_S = 60.0
# After a stop, how long the process's exit is awaited before the service goes on without seeing it.
STOP_WAIT_S = 20.0


@dataclass(frozen=True, slots=True)
class TriggerOutcome:
    status: str  # accepted | duplicate | cooldown | skipped
    model: str
    trigger_id: int
    job_id: str | None = None
    reason: str = ""


class RedistillService:
    def __init__(
        self,
        settings: RedistillSettings,
        models: Iterable[str],
        *,
        jobs: JobStore,
        runner: Runner,
        controller: PromotionController | None = None,
        agreement: Callable[[str], Any] | None = None,
        config_dump: Callable[[], dict[str, Any]] | None = None,
        metrics: RedistillMetrics | None = None,
        clock: Callable[[], float] = time.time,
        job_poll_s: float = JOB_POLL_S,
        verdict_grace_s: float = VERDICT_GRACE_S,
    ) -> None:
        """agreement(model) -> the live version's AgreementSnapshot (drives the built-in watcher).
        config_dump() -> the full config as JSON data, written next to each local job."""
        self.settings = settings
        self.models = list(models)
        self.jobs = jobs
        self.runner = runner
        self.controller = controller
        self.metrics = metrics
        self._config_dump = config_dump
        self._clock = clock
        self._job_poll_s = job_poll_s
        self._verdict_grace_s = verdict_grace_s
        self._running: dict[str, tuple[str, JobHandle, asyncio.Task[None]]] = {}
        self._lock = asyncio.Lock()
        trig = settings.trigger
        self.watcher = (AgreementWatcher(trig.watcher, self.models, agreement)
                        if agreement is not None and trig.watcher.enabled else None)
        self.schedule = CronSchedule(trig.schedule, self.models, clock()) if trig.schedule else None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # -- lifecycle (the gateway's lifespan calls these) --------------------------------------------
    async def start(self) -> None:
        # Jobs left unfinished by a previous gateway process have no one following them any more.
        for job in await asyncio.to_thread(self.jobs.unfinished):
            if job.runner == "local":
                await asyncio.to_thread(self.jobs.finish_if_unfinished, job.id, "gateway restarted while it ran")
        self._stopping.clear()
        self._tasks.append(asyncio.create_task(self._trigger_loop(), name="redistill-triggers"))
        if self.controller is not None:
            self._tasks.append(asyncio.create_task(self.controller.run(), name="redistill-promotion"))

    async def stop(self) -> None:
        self._stopping.set()
        if self.controller is not None:
            self.controller.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        # Running jobs keep running (a local job is in its own session); their rows are settled on restart.
        for _, _, follower in list(self._running.values()):
            follower.cancel()

    # -- triggers ----------------------------------------------------------------------------------
    async def submit(self, trigger: Trigger, *, since_s: float | None = None, dry_run: bool = False,
                     force: bool = False) -> TriggerOutcome:
        """Record the trigger and start a job unless one runs (duplicate) or the model cooled down
        too recently (cooldown; ``force`` skips it, as a manual trigger does)."""
        if trigger.model not in self.models:
            raise KeyError(f"unknown model {trigger.model!r}")
        async with self._lock:
            if trigger.model in self._running:
                return await self._record(trigger, "duplicate", self._running[trigger.model][0],
                                          "a job is already running for this model")
            last = await asyncio.to_thread(self.jobs.last_started, trigger.model)
            cooldown = self.settings.trigger.watcher.cooldown_s
            if not force and trigger.source != "manual" and last is not None and self._clock() - last < cooldown:
                return await self._record(trigger, "cooldown", None, f"last job started {self._clock() - last:.0f}s ago")
            if trigger.source == "schedule":
                since = last if last is not None else self._clock() - self.settings.dataset.since_s
                new = await asyncio.to_thread(self.jobs.pairs_since, trigger.model, since)
                if new < self.settings.trigger.min_new_pairs:
                    return await self._record(trigger, "skipped", None,
                                              f"{new} new pairs < min_new_pairs {self.settings.trigger.min_new_pairs}")
            return await self._start_job(trigger, since_s=since_s, dry_run=dry_run)

    async def _record(self, trigger: Trigger, status: str, job_id: str | None, reason: str) -> TriggerOutcome:
        outcome = status if status != "skipped" else f"skipped:{reason}"
        tid = await asyncio.to_thread(self.jobs.record_trigger, trigger, outcome[:32], job_id)
        if self.metrics:
            self.metrics.triggers.labels(trigger.model, status).inc()
        log.info("trigger %s for %s: %s (%s)", trigger.source, trigger.model, status, reason)
        return TriggerOutcome(status, trigger.model, tid, job_id, reason)

    async def _start_job(self, trigger: Trigger, *, since_s: float | None, dry_run: bool) -> TriggerOutcome:
        job_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._clock())) + "-" + uuid.uuid4().hex[:6]
        job_dir = Path(self.settings.workdir) / "jobs" / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        config_path = None
        if self._config_dump is not None:
            config_path = job_dir / "config.json"  # JSON is YAML: the job's CLI loads it as its config
            config_path.write_bytes(orjson.dumps(self._config_dump()))
        log_path = job_dir / "job.log"
        tid = await asyncio.to_thread(self.jobs.record_trigger, trigger, "job_started", job_id)
        await asyncio.to_thread(self.jobs.create, job_id, trigger.model, self.runner.name, trigger_id=tid,
                                log_path=str(log_path), now=self._clock())
        spec = JobSpec(job_id, trigger.model, str(config_path) if config_path else None, since_s, dry_run, log_path)
        try:
            handle = await self.runner.start(spec)
        except Exception as exc:
            await asyncio.to_thread(self.jobs.update, job_id, "failed", error=f"runner could not start: {exc}")
            if self.metrics:
                self.metrics.jobs.labels(trigger.model, "failed").inc()
            raise
        if self.metrics:
            self.metrics.triggers.labels(trigger.model, "accepted").inc()
            self.metrics.jobs.labels(trigger.model, "started").inc()
            self.metrics.job_running.labels(trigger.model).set(1)
        follower = asyncio.create_task(self._follow(trigger.model, job_id, handle), name=f"redistill-job-{job_id}")
        self._running[trigger.model] = (job_id, handle, follower)
        return TriggerOutcome("accepted", trigger.model, tid, job_id, trigger.reason)

    # -- following a job ---------------------------------------------------------------------------
    async def _follow(self, model: str, job_id: str, handle: JobHandle) -> None:
        started = self._clock()
        try:
            exit_ = await self._job_exit(job_id, handle)
            if exit_.code != 0:
                await asyncio.to_thread(self.jobs.finish_if_unfinished, job_id, f"job process ended: {exit_.message}")
            else:
                await asyncio.to_thread(self.jobs.finish_if_unfinished, job_id,
                                        "job process ended without recording a verdict")
            job = await asyncio.to_thread(self.jobs.get, job_id)
            await self._on_finished(job)
        finally:
            self._running.pop(model, None)
            if self.metrics:
                self.metrics.job_running.labels(model).set(0)
                self.metrics.job_duration.labels(model).observe(max(0.0, self._clock() - started))

    async def _job_exit(self, job_id: str, handle: JobHandle) -> JobExit:
        """How the job's process ended, not waiting on it forever: past runner.job_timeout_s the job is failed
        (its stacks dumped into its log first) and stopped; a verdict already written whose process lingers
        (or whose exit was never reported) is stopped after verdict_grace_s and the verdict stands."""
        timeout = self.settings.runner.job_timeout_s
        deadline = time.monotonic() + timeout
        verdict_at: float | None = None
        exited = asyncio.ensure_future(handle.wait())
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=self._job_poll_s)
                if done:
                    return exited.result()
                now = time.monotonic()
                if now >= deadline:
                    log.error("job %s still running after %.0fs: dumping its stacks to its log and stopping it",
                              job_id, timeout)
                    await handle.dump_stacks()
                    reason = (f"timed out after {timeout:.0f}s (redistill.runner.job_timeout_s); "
                              "a local job's log ends with its thread stacks")
                    await asyncio.to_thread(self.jobs.finish_if_unfinished, job_id, reason)
                    break
                status = (await asyncio.to_thread(self.jobs.get, job_id)).status
                if status in TERMINAL:
                    verdict_at = verdict_at if verdict_at is not None else now
                    if now - verdict_at >= self._verdict_grace_s:
                        log.warning("job %s recorded %s but its process has not ended after %.0fs: stopping it",
                                    job_id, status, self._verdict_grace_s)
                        break
            await handle.cancel()
            done, _ = await asyncio.wait({exited}, timeout=STOP_WAIT_S)
            return exited.result() if done else JobExit(-1, "stopped; its exit was not reported")
        finally:
            exited.cancel()

    async def _on_finished(self, job: JobRecord) -> None:
        if self.metrics:
            self.metrics.jobs.labels(job.model, job.status).inc()
            if job.status in ("succeeded", "rejected") and job.version_id:
                self.metrics.gate_results.labels(job.model, "pass" if job.status == "succeeded" else "fail").inc()
        if job.status == "succeeded" and job.version_id and self.controller is not None:
            try:
                await self.controller.submit(job.version_id)
            except Exception as exc:  # the version is marked failed by the controller; live is untouched
                log.error("could not hand %s to promotion: %s", job.version_id, exc)

    async def wait_idle(self, model: str) -> JobRecord | None:
        """Wait for the model's running job (if any) to be followed to its end; returns its record."""
        entry = self._running.get(model)
        if entry is None:
            return None
        job_id, _, follower = entry
        await asyncio.shield(follower)
        return await asyncio.to_thread(self.jobs.get, job_id)

    def running_job(self, model: str) -> str | None:
        entry = self._running.get(model)
        return entry[0] if entry else None

    async def cancel(self, model: str) -> bool:
        entry = self._running.get(model)
        if entry is None:
            return False
        await entry[1].cancel()
        return True

    # -- built-in triggers -------------------------------------------------------------------------
    async def check_triggers(self, now: float | None = None) -> list[TriggerOutcome]:
        now = self._clock() if now is None else now
        fired: list[Trigger] = []
        if self.watcher is not None:
            # agreement() reads the registry (SQL): off the event loop
            fired += await asyncio.to_thread(self.watcher.check, now)
        if self.schedule is not None:
            fired += self.schedule.due(now)
        return [await self.submit(t) for t in fired]

    async def _trigger_loop(self) -> None:
        interval = self.settings.trigger.watcher.interval_s
        while not self._stopping.is_set():
            try:
                await self.check_triggers()
            except Exception:
                log.exception("trigger check failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass
