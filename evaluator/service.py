"""The Evaluator: what the gateway talks to. Composes sampling, shadow workers, scoring, the pair store,
rolling agreement, drift and spend, and exports their metrics.

What the gateway injects:
- ``call_other(served, *, target_version=None) -> ExchangeRecord``: asks the side that did NOT answer
  (teacher for a student answer, student for a teacher answer). With ``target_version`` it asks the
  student at that version (its LoRA adapter) instead: the evaluator passes it only for shadow-stage
  candidates, so a plain ``call_other(served)`` is enough when ``shadow_version`` is not given.
- ``shadow_version(model) -> str | None`` (optional): the version id in the promotion "shadow" stage, if
  any (the gateway reads its registry poller's snapshot; a dict lookup). For each sampled request of such
  a model the worker also asks the candidate and scores it against the teacher's answer: a pair stored
  and counted under version = the candidate id (route "candidate"), so ``agreement(model, version=id)``
  fills up with no user ever seeing the candidate. Candidate pairs stay out of the model-wide
  (all-versions) agreement.

Hot path: ``offer`` only counts and samples, ``take`` (for the few requests sampled) appends (O(1) each);
the gateway builds a request's exchange only when ``offer`` asks for it. Features, drift and store writes happen
in the drift worker and the store's writer thread, throttled (DriftSettings.min_interval_s) and sampled
(StoreSettings.served_sample_rate)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry

from evaluator.agreement import ALL, AgreementSnapshot, RollingAgreement
from evaluator.drift import DriftMonitor, DriftSnapshot, Observation
from evaluator.drift_worker import DriftWorker
from evaluator.features import mean_logprob
from evaluator.metrics import EvaluatorMetrics
from evaluator.records import (
    CANDIDATE_ROUTE,
    TEACHER_ROUTES,
    ExchangeRecord,
    Feedback,
    ServedExchange,
    ShadowPair,
    well_formed_request_id,
)
from evaluator.scorers import JudgeCall, LabelScorer, Scorer, build_scorer, request_text
from evaluator.settings import EvaluatorSettings, ModelEvalSettings
from evaluator.shadow import Decision, Sampler, ShadowQueue
from evaluator.spend import SpendTracker
from evaluator.store import PairStore

log = logging.getLogger(__name__)


class CallOther(Protocol):
    def __call__(self, served: ExchangeRecord, *, target_version: str | None = ...) -> Awaitable[ExchangeRecord]: ...


ShadowVersion = Callable[[str], "str | None"]
# What Evaluator.offer answers: the parts that want a served request's exchange.
WANT_STORE, WANT_DRIFT, WANT_SHADOW = 1, 2, 4
JUDGE_MAX_TOKENS = 16


def observation_of(served: ServedExchange) -> Observation:
    """Drift features of a served exchange (runs in the drift thread, not on the event loop)."""
    record = served.record()
    answer = record.response_text if record.route not in TEACHER_ROUTES else None
    confidence = mean_logprob(record) if answer is not None else None
    return Observation(request_text(record.request), answer, confidence)


class Evaluator:
    def __init__(self, settings: EvaluatorSettings, models: Mapping[str, ModelEvalSettings], call_other: CallOther,
                 registry: CollectorRegistry | None = None, store: PairStore | None = None,
                 shadow_version: ShadowVersion | None = None) -> None:
        self.settings = settings
        self.models = dict(models)
        self._call_other = call_other
        self._shadow_version = shadow_version
        registry = REGISTRY if registry is None else registry
        self.metrics = EvaluatorMetrics(registry, served_totals=lambda: self.spend.totals())
        self._owns_store = store is None
        self.store: PairStore = store if store is not None else PairStore(settings.store.url, settings.store, registry)
        self.spend = SpendTracker(self.models, self.store.served)
        self.scorers: dict[str, Scorer] = {name: build_scorer(m.scorer, self._judge_for(name))
                                           for name, m in self.models.items()}
        self._samplers = {name: Sampler(m.shadow, lambda n=name: self.spend.shadow_tokens_last_hour(n))
                          for name, m in self.models.items()}
        self._agreement = RollingAgreement(settings.agreement)
        self._drift_worker = DriftWorker() if settings.drift.isolation == "process" else None
        self._drift = DriftMonitor(settings.drift, label_of=self._label_extractor, on_result=self._export_drift,
                                   to_observation=observation_of,
                                   compare=self._drift_worker.compare if self._drift_worker is not None else None,
                                   warm=self._drift_worker.warm if self._drift_worker is not None else None)
        self._queue = ShadowQueue(settings.queue_size, settings.workers, self._shadow)
        self._retention_task: asyncio.Task[None] | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Migrates the store, reloads recent agreement, starts workers, replays shadows left at shutdown."""
        await asyncio.to_thread(self.store.migrate)
        self.store.start()
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
        if self._drift_worker is not None:
            await asyncio.to_thread(self._drift_worker.close)
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
    def served(self, record: ServedExchange, escalated: bool = False, key_name: str | None = None,
               confidence: float | None = None) -> bool:
        """Every served request, once: counted per route (requests, tokens: reports, spend and offer metrics
        are read from those totals), stored when sampled, added to the drift window, and queued for a shadow
        call when the sampler says so. True when a shadow call was queued. Features, drift statistics and
        store writes happen off the event loop. `offer` and `take` in two steps, for a caller that builds
        the record only when something wants it."""
        wanted = self.offer(record.model, record.route, record.prompt_tokens or 0, record.completion_tokens or 0,
                            record.request_id, record.slice, escalated, key_name, confidence, record.status)
        return self.take(record, wanted) if wanted else False

    def offer(self, model: str, route: str, prompt_tokens: int, completion_tokens: int, request_id: str,
              slice_name: str, escalated: bool = False, key_name: str | None = None, confidence: float | None = None,
              status: int = 200) -> int:
        """A served request, counted and sampled from what it is counted by: which of the store, the drift
        window and the shadow queue want its exchange (WANT_* bits; 0 for most requests, whose exchange
        then need not be built). Pass the exchange of a non-zero answer to `take` (positional: every request)."""
        try:
            store = self.store
            store.served.add(model, route, prompt_tokens, completion_tokens)
            wanted = WANT_STORE if store.samples_served(route, status) else 0
            if self._drift.wants(model):
                wanted |= WANT_DRIFT
            if model in self.spend.per_request_savings:
                self.spend.observe_saving(model, route, prompt_tokens, completion_tokens)
            sampler = self._samplers.get(model)
            if sampler is not None:
                decision = sampler.decide_for(route, request_id, slice_name, escalated, key_name, confidence)
                if decision is Decision.SAMPLE:
                    wanted |= WANT_SHADOW
                elif decision is Decision.SPEND_CAP:
                    self.metrics.shadow_dropped.labels(model, "spend_cap").inc()
            return wanted
        except Exception:  # noqa: BLE001 - the hot path must never fail because of the evaluator
            log.exception("evaluator hand-off failed for request %s", request_id)
            return 0

    def take(self, record: ServedExchange, wanted: int) -> bool:
        """The exchange of a request `offer` answered `wanted` (non-zero) for. True when a shadow call was
        queued."""
        try:
            if wanted & WANT_STORE:
                self.store.put_sampled(record)
            if wanted & WANT_DRIFT:
                self._drift.keep(record.model, record)
            return bool(wanted & WANT_SHADOW) and self._enqueue_shadow(record)
        except Exception:  # noqa: BLE001 - the hot path must never fail because of the evaluator
            log.exception("evaluator hand-off failed for request %s", getattr(record, "request_id", "?"))
            return False

    def _enqueue_shadow(self, record: ServedExchange) -> bool:
        model = record.model
        self.metrics.shadow_sampled.labels(model).inc()
        if not self._started:
            self.metrics.shadow_dropped.labels(model, "shutdown").inc()
            return False
        if not self._queue.try_put(record.record()):
            self.metrics.shadow_dropped.labels(model, "queue_full").inc()
            return False
        self.metrics.shadow_queue_depth.set(self._queue.depth)
        return True

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
        candidate = self._shadow_version(model) if self._shadow_version is not None else None
        if candidate is not None and candidate != student.version:
            await self._shadow_candidate(candidate, served, teacher)

    async def _shadow_candidate(self, version: str, served: ExchangeRecord, teacher: ExchangeRecord) -> None:
        """The shadow-stage version answers the same request; scored against the teacher, never served.

        Stored as (served=the teacher's answer, shadow=the candidate's): both exchanges are then some
        pair's shadow, so neither counts as served traffic in reports.
        """
        model = served.model
        try:
            answer = await self._call_other(served, target_version=version)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the candidate failing is counted, not fatal
            log.info("shadow-stage call to %s for %s failed: %s", version, served.request_id, exc)
            self.metrics.shadow_completed.labels(model, "error").inc()
            return
        self.metrics.shadow_completed.labels(model, "ok").inc()
        candidate = dataclasses.replace(answer, route=CANDIDATE_ROUTE, version=version)
        try:
            score = await self.scorers[model].score(candidate, teacher)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("scoring candidate %s on %s failed", version, served.request_id)
            return
        pair = ShadowPair(served=teacher, shadow=candidate, scores={score.name: score.value}, agreed=score.passed)
        self.store.put_pair(pair)
        self._count_pair(pair)

    def _count_pair(self, pair: ShadowPair, export_counter: bool = True) -> None:
        model, version, slice_ = pair.served.model, pair.student.version, pair.served.slice
        if export_counter:
            self.metrics.pairs.labels(model, version, slice_, "agree" if pair.agreed else "disagree").inc()
        for key in self._agreement.add(model, version, slice_, pair.agreed, model_wide=not pair.is_candidate):
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
                              comment: str | None, key_name: str | None, model: str | None = None) -> bool:
        """Stores feedback for a served request; False when the request id is unknown and no model is named.

        Served exchanges are stored as a sample (StoreSettings.served_sample_rate), so a request id with no
        stored exchange is still accepted when it is well-formed and ``model`` names a configured model.
        """
        exchange = await asyncio.to_thread(self.store.exchange_by_request_id, request_id)
        if exchange is None:  # it may still be waiting in the writer's queue
            await asyncio.to_thread(self.store.flush, 10.0)
            exchange = await asyncio.to_thread(self.store.exchange_by_request_id, request_id)
        if exchange is not None:
            model = exchange.model
        elif model is None or model not in self.models or not well_formed_request_id(request_id):
            return False
        await asyncio.to_thread(self.store.add_feedback, Feedback(request_id, model, label, rating, comment,
                                                                  key_name, time.time()))
        self.metrics.feedback.labels(model).inc()
        return True
