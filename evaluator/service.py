"""The Evaluator: what the gateway talks to. Composes sampling, shadow workers, scoring, the pair store,
rolling agreement, drift and spend, and exports their metrics."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

from prometheus_client import REGISTRY, CollectorRegistry

from evaluator.agreement import ALL, AgreementSnapshot, RollingAgreement
from evaluator.drift import DriftMonitor, DriftSnapshot, Observation
from evaluator.features import mean_logprob
from evaluator.metrics import EvaluatorMetrics
from evaluator.records import TEACHER_ROUTES, ExchangeRecord, Feedback, ShadowPair
from evaluator.scorers import JudgeCall, LabelScorer, Scorer, build_scorer, request_text
from evaluator.settings import EvaluatorSettings, ModelEvalSettings
from evaluator.shadow import Decision, Sampler, ShadowQueue
from evaluator.spend import SpendTracker
from evaluator.store import PairStore

log = logging.getLogger(__name__)

CallOther = Callable[[ExchangeRecord], Awaitable[ExchangeRecord]]
JUDGE_MAX_TOKENS = 16


class Evaluator:
    def __init__(self, settings: EvaluatorSettings, models: Mapping[str, ModelEvalSettings], call_other: CallOther,
                 registry: CollectorRegistry | None = None, store: PairStore | None = None) -> None:
        self.settings = settings
        self.models = dict(models)
        self._call_other = call_other
        registry = REGISTRY if registry is None else registry
        self.metrics = EvaluatorMetrics(registry)
        self._owns_store = store is None
        self.store: PairStore = store if store is not None else PairStore(settings.store.url, settings.store, registry)
        self.spend = SpendTracker(self.models, self.metrics)
        self.scorers: dict[str, Scorer] = {name: build_scorer(m.scorer, self._judge_for(name))
                                           for name, m in self.models.items()}
        self._samplers = {name: Sampler(m.shadow, lambda n=name: self.spend.shadow_tokens_last_hour(n))
                          for name, m in self.models.items()}
        self._agreement = RollingAgreement(settings.agreement)
        self._drift = DriftMonitor(settings.drift, label_of=self._label_extractor, on_result=self._export_drift)
        self._queue = ShadowQueue(settings.queue_size, settings.workers, self._shadow)
        self._retention_task: asyncio.Task[None] | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Migrates the store, reloads recent agreement, starts workers, replays shadows left at shutdown."""
        await asyncio.to_thread(self.store.migrate)
        for model in self.models:
            recent = await asyncio.to_thread(self.store.pairs, model, limit=self.settings.agreement.window_size)
            for pair in recent:
                self._count_pair(pair, export_counter=False)
        self._queue.start()
        self._started = True
        pending = await asyncio.to_thread(self.store.take_pending)
        overflow = [record for record in pending if not self._queue.try_put(record)]
        if overflow:
            await asyncio.to_thread(self.store.save_pending, overflow)
        self.metrics.shadow_queue_depth.set(self._queue.depth)
        self._retention_task = asyncio.create_task(self._retention_loop(), name="distillgate-retention")

    async def stop(self) -> None:
        """Drains the shadow queue for up to drain_timeout_s; the rest is persisted and replayed at next start."""
        if not self._started:
            return
        self._started = False
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        leftover = await self._queue.stop(self.settings.drain_timeout_s)
        try:
            await asyncio.to_thread(self.store.save_pending, leftover)
        except Exception:  # noqa: BLE001 - count what is lost, then go on shutting down
            log.exception("could not persist %d pending shadows", len(leftover))
            for record in leftover:
                self.metrics.shadow_dropped.labels(record.model, "shutdown").inc()
        self.metrics.shadow_queue_depth.set(0)
        await asyncio.to_thread(self._drift.close)
        if self._owns_store:
            await asyncio.to_thread(self.store.close)
        else:
            await asyncio.to_thread(self.store.flush)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.store.retention_interval_s)
            try:
                await asyncio.to_thread(self.store.apply_retention)
            except Exception:  # noqa: BLE001 - retry next interval
                log.exception("store retention failed")

    # -- hot path (sync, O(1), never raises) -----------------------------------------------------------
    def offer(self, record: ExchangeRecord, *, escalated: bool = False, key_name: str | None = None,
              confidence: float | None = None) -> bool:
        try:
            sampler = self._samplers.get(record.model)
            if sampler is None:
                return False
            self.metrics.shadow_offered.labels(record.model).inc()
            decision = sampler.decide(record, escalated=escalated, key_name=key_name, confidence=confidence)
            if decision is Decision.SKIP:
                return False
            if decision is Decision.SPEND_CAP:
                self.metrics.shadow_dropped.labels(record.model, "spend_cap").inc()
                return False
            self.metrics.shadow_sampled.labels(record.model).inc()
            if not self._started:
                self.metrics.shadow_dropped.labels(record.model, "shutdown").inc()
                return False
            if not self._queue.try_put(record):
                self.metrics.shadow_dropped.labels(record.model, "queue_full").inc()
                return False
            self.metrics.shadow_queue_depth.set(self._queue.depth)
            return True
        except Exception:  # noqa: BLE001 - the hot path must never fail because of the evaluator
            log.exception("shadow offer failed")
            return False

    def observe(self, record: ExchangeRecord) -> None:
        """Every served request: stored (for reports), counted for spend, fed to drift detection."""
        try:
            self.store.put_exchange(record)
            self.spend.observe_served(record)
            answer = record.response_text if record.route not in TEACHER_ROUTES else None
            confidence = mean_logprob(record) if answer is not None else None
            self._drift.observe(record.model, Observation(request_text(record.request), answer, confidence))
        except Exception:  # noqa: BLE001 - the hot path must never fail because of the evaluator
            log.exception("observe failed")

    # -- shadow worker ---------------------------------------------------------------------------------
    async def _shadow(self, served: ExchangeRecord) -> None:
        self.metrics.shadow_queue_depth.set(self._queue.depth)
        model = served.model
        try:
            other = await self._call_other(served)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an upstream failure is counted, not fatal
            log.info("shadow call for %s failed: %s", served.request_id, exc)
            self.metrics.shadow_completed.labels(model, "error").inc()
            self.metrics.shadow_dropped.labels(model, "error").inc()
            return
        self.metrics.shadow_completed.labels(model, "ok").inc()
        self.spend.observe_shadow(other)
        student, teacher = (other, served) if served.route in TEACHER_ROUTES else (served, other)
        try:
            score = await self.scorers[model].score(student, teacher)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - e.g. the judge answered nonsense
            log.exception("scoring %s failed", served.request_id)
            self.metrics.shadow_dropped.labels(model, "error").inc()
            return
        pair = ShadowPair(served=served, shadow=other, scores={score.name: score.value}, agreed=score.passed)
        self.store.put_pair(pair)
        self._count_pair(pair)

    def _count_pair(self, pair: ShadowPair, export_counter: bool = True) -> None:
        model, version, slice_ = pair.served.model, pair.student.version, pair.served.slice
        if export_counter:
            self.metrics.pairs.labels(model, version, slice_, "agree" if pair.agreed else "disagree").inc()
        for key in self._agreement.add(model, version, slice_, pair.agreed):
            if key[1] != ALL:  # gauges per version (and its ALL-slices aggregate): bounded label values
                self._export_agreement(*key)

    def _export_agreement(self, model: str, version: str, slice_: str) -> None:
        snap = self._agreement.snapshot(model, version, slice_)
        labels = (model, version, slice_)
        self.metrics.agreement_samples.labels(*labels).set(snap.n)
        if snap.ratio is not None:
            self.metrics.agreement_ratio.labels(*labels).set(snap.ratio)
            self.metrics.agreement_lower.labels(*labels).set(snap.lower)
            self.metrics.agreement_upper.labels(*labels).set(snap.upper)

    def _export_drift(self, model: str, snap: DriftSnapshot) -> None:
        m = self.metrics
        for gauge, value in ((m.input_drift, snap.input_score), (m.output_drift, snap.output_score),
                             (m.input_drift_p, snap.input_p), (m.output_drift_p, snap.output_p), (m.drift_auc, snap.auc)):
            if value is not None:
                gauge.labels(model).set(value)

    def _label_extractor(self, model: str) -> Callable[[str], str] | None:
        scorer = self.scorers.get(model)
        return scorer.extract if isinstance(scorer, LabelScorer) else None

    def _judge_for(self, model: str) -> JudgeCall:
        async def judge(prompt: str) -> str:
            # The judge is the teacher: a request served "by the student" makes call_other ask the teacher.
            request = {"model": model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS}
            probe = ExchangeRecord(request_id=f"judge-{uuid.uuid4().hex}", model=model, route="student",
                                   version="judge", endpoint="chat", request=request, response_text="")
            return (await self._call_other(probe)).response_text

        return judge

    # -- queries ---------------------------------------------------------------------------------------
    def agreement(self, model: str, version: str | None = None, slice: str | None = None) -> AgreementSnapshot:
        """Rolling agreement; version/slice None = across all versions/slices."""
        return self._agreement.snapshot(model, version, slice)

    def drift(self, model: str) -> DriftSnapshot:
        return self._drift.snapshot(model)

    def set_drift_reference(self, model: str, prompts: Sequence[str], outputs: Sequence[str] | None = None) -> None:
        """Compare live traffic with the distillation dataset instead of the first observed requests."""
        self._drift.set_reference(model, prompts, outputs)

    async def record_feedback(self, request_id: str, *, label: str | None, rating: float | None,
                              comment: str | None, key_name: str | None) -> bool:
        """Stores feedback for a served request; False when the request id is unknown."""
        exchange = await asyncio.to_thread(self.store.exchange_by_request_id, request_id)
        if exchange is None:  # it may still be waiting in the writer's queue
            await asyncio.to_thread(self.store.flush, 10.0)
            exchange = await asyncio.to_thread(self.store.exchange_by_request_id, request_id)
        if exchange is None:
            return False
        await asyncio.to_thread(self.store.add_feedback, Feedback(request_id, exchange.model, label, rating, comment,
                                                                  key_name, time.time()))
        self.metrics.feedback.labels(exchange.model).inc()
        return True
