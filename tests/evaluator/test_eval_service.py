"""The Evaluator with a plain async call_other of our own (a test double for the gateway's callable)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from prometheus_client import CollectorRegistry

from evaluator.records import ExchangeRecord
from evaluator.service import Evaluator
from evaluator.served_tally import ServedTally
from evaluator.settings import (AgreementSettings, EvaluatorSettings, ModelEvalSettings, PriceSettings,
                                ScorerSettings, ShadowSettings, StoreSettings)
from evaluator.shadow import Decision, Sampler, hash_unit
from evaluator.spend import SpendTracker, saving, teacher_cost

LABEL_SCORER = ScorerSettings(kind="label", label_pattern=r"intent:\s*(\w+)", labels=["billing", "refund", "account"])


def served(i: int, text: str = "intent: billing", route: str = "student", **kw: object) -> ExchangeRecord:
    return ExchangeRecord(request_id=f"req-{i}", model="support", route=route, version="base", endpoint="chat",
                          request={"model": "support", "messages": [{"role": "user", "content": f"ticket {i}"}]},
                          response_text=text, prompt_tokens=20, completion_tokens=5, **kw)  # type: ignore[arg-type]


def teacher_answer(record: ExchangeRecord, text: str) -> ExchangeRecord:
    return ExchangeRecord(request_id=record.request_id, model=record.model, route="teacher", version="teacher-1",
                          endpoint="chat", request=record.request, response_text=text, prompt_tokens=20,
                          completion_tokens=10, slice=record.slice)


def settings_for(tmp_path: Path, **kw: object) -> EvaluatorSettings:
    url = f"sqlite:///{tmp_path / 'ev.db'}"
    return EvaluatorSettings(store=StoreSettings(url=url, flush_interval_s=0.02),
                             agreement=AgreementSettings(min_samples=10), **kw)  # type: ignore[arg-type]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- sampler ---------------------------------------------------------------------------------------------
def test_deterministic_sampling_by_request_id() -> None:
    settings = ShadowSettings(rate=0.3, deterministic=True)
    a, b = Sampler(settings, lambda: 0), Sampler(settings, lambda: 0)
    decisions = [a.decide(served(i)) for i in range(2000)]
    assert decisions == [b.decide(served(i)) for i in range(2000)]
    assert all((d is Decision.SAMPLE) == (hash_unit(f"req-{i}") < 0.3) for i, d in enumerate(decisions))
    assert 0.25 < decisions.count(Decision.SAMPLE) / 2000 < 0.35
    assert a.decide(served(1, route="teacher")) is Decision.SKIP  # direction: student answers are shadowed


def test_always_rules_override_rate() -> None:
    sampler = Sampler(ShadowSettings(rate=0.0, always_below_confidence=-1.0, always_for_keys=["vip"],
                                     always_for_slices=["tier"]), lambda: 0)
    assert sampler.decide(served(1)) is Decision.SKIP
    assert sampler.decide(served(1, route="teacher"), escalated=True) is Decision.SAMPLE
    assert sampler.decide(served(2), confidence=-2.5) is Decision.SAMPLE
    assert sampler.decide(served(2), confidence=-0.5) is Decision.SKIP
    assert sampler.decide(served(3), key_name="vip") is Decision.SAMPLE
    assert sampler.decide(served(4, slice="tier:gold")) is Decision.SAMPLE


def test_spend_cap_backs_off_then_recovers_after_an_hour() -> None:
    clock = [1000.0]
    models = {"support": ModelEvalSettings()}
    spend = SpendTracker(models, ServedTally(), clock=lambda: clock[0])
    sampler = Sampler(ShadowSettings(rate=1.0, teacher_tokens_per_hour=1000), lambda: spend.shadow_tokens_last_hour("support"))
    assert all(sampler.decide(served(i)) is Decision.SAMPLE for i in range(50))
    spend.observe_shadow(ExchangeRecord("s", "support", "teacher", "t", "chat", {}, "x", prompt_tokens=500,
                                        completion_tokens=250))
    # 750 of 1000 used: the effective rate is 2 * (1 - 0.75) = 0.5 of the configured one.
    decisions = [sampler.decide(served(i)) for i in range(2000)]
    assert 0.4 < decisions.count(Decision.SAMPLE) / 2000 < 0.6
    assert set(decisions) == {Decision.SAMPLE, Decision.SPEND_CAP}
    spend.observe_shadow(ExchangeRecord("s2", "support", "teacher", "t", "chat", {}, "x", prompt_tokens=300))
    assert {sampler.decide(served(i)) for i in range(200)} == {Decision.SPEND_CAP}
    assert sampler.decide(served(1), escalated=True) is Decision.SPEND_CAP  # the cap binds always-rules too
    clock[0] += 3601
    assert spend.shadow_tokens_last_hour("support") == 0
    assert sampler.decide(served(1)) is Decision.SAMPLE


def test_spend_is_priced_from_the_served_totals_and_savings_never_go_negative() -> None:
    """Totals priced at scrape equal per-request pricing; a model whose student is dearer on one kind of token
    is counted per request so a request that cost more than the teacher would is not a negative saving."""
    tally = ServedTally()
    odd = PriceSettings(teacher_prompt=1.0, teacher_completion=10.0, student_prompt=2.0, student_completion=1.0)
    models = {"cheap": ModelEvalSettings(), "odd": ModelEvalSettings(prices=odd)}
    spend = SpendTracker(models, tally)
    assert spend.per_request_savings == {"odd"}
    requests = [(100, 0), (0, 10), (50, 50)]
    for model in models:
        for i, (p, c) in enumerate(requests):
            tally.add(model, "student", p, c)
            if model in spend.per_request_savings:
                spend.observe_saving(model, "student", p, c)
    tally.add("cheap", "teacher", 10, 10)
    tally.add("unknown", "student", 5, 5)  # not a configured model: not exported
    totals = spend.totals()
    assert set(totals) == {"cheap", "odd"}
    cheap = models["cheap"].prices
    assert totals["cheap"].saved_dollars == pytest.approx(sum(saving(cheap, p, c) for p, c in requests))
    assert totals["cheap"].teacher_dollars == pytest.approx(teacher_cost(cheap, 10, 10))
    assert (totals["cheap"].offered, totals["cheap"].teacher_tokens) == (4, 20)
    # odd: -100 (not counted), +90, -50 + 450 = +400 (per million tokens)
    assert totals["odd"].saved_dollars == pytest.approx(490 / 1e6)
    assert totals["odd"].teacher_tokens == 0


# -- the service -----------------------------------------------------------------------------------------
def test_shadow_flow_scores_stores_and_exports(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    models = {"support": ModelEvalSettings(shadow=ShadowSettings(rate=1.0), scorer=LABEL_SCORER)}
    seen: list[str] = []

    async def call_other(record: ExchangeRecord) -> ExchangeRecord:
        seen.append(record.request_id)
        # The teacher agrees on even tickets, says "refund" on odd ones.
        i = int(record.request_id.split("-")[1])
        return teacher_answer(record, "intent: billing" if i % 2 == 0 else "intent: refund")

    async def run() -> Evaluator:
        settings = settings_for(tmp_path)
        settings.store.served_sample_rate = 0.0  # served exchanges are stored with their pairs only
        ev = Evaluator(settings, models, call_other, registry=registry)
        await ev.start()
        for i in range(40):
            record = served(i)
            assert ev.served(record) is True
        assert ev.served(served(99, route="teacher")) is False  # not shadowed in this direction
        await ev.stop()
        return ev

    ev = asyncio.run(run())
    assert sorted(seen) == sorted(f"req-{i}" for i in range(40))
    snap = ev.agreement("support")
    assert (snap.n, snap.agreed, snap.ratio) == (40, 20, 0.5)
    assert sample(registry, "distillgate_pairs_total", model="support", version="base", slice="default",
                  status="agree") == 20
    assert sample(registry, "distillgate_agreement_ratio", model="support", version="base", slice="all") == 0.5
    assert sample(registry, "distillgate_agreement_lower_bound_ratio", model="support", version="base",
                  slice="default") == snap.lower
    assert sample(registry, "distillgate_shadow_completed_total", model="support", status="ok") == 40
    # 40 shadow teacher answers of 30 tokens each + one teacher-served request of 25; 40 student-served
    # requests of 20 + 5 tokens saved money. All 41 were offered to the sampler.
    assert sample(registry, "distillgate_teacher_tokens_total", model="support") == 1225
    prices = models["support"].prices
    assert sample(registry, "distillgate_saved_dollars_total", model="support") == pytest.approx(40 * saving(prices, 20, 5))
    assert sample(registry, "distillgate_teacher_spend_dollars_total", model="support") == pytest.approx(
        40 * teacher_cost(prices, 20, 10) + teacher_cost(prices, 20, 5))
    assert sample(registry, "distillgate_shadow_offered_total", model="support") == 41
    from evaluator.store import PairStore

    store = PairStore(ev.settings.store.url, ev.settings.store)
    pairs = store.pairs("support")
    assert len(pairs) == 40 and sum(p.agreed for p in pairs) == 20
    assert store.count("exchanges") == 80  # 40 served (stored once) + 40 shadow answers
    counts = store.route_counts("support")  # every served request counted, stored or not
    assert {route: c["requests"] for route, c in counts.items()} == {"student": 40, "teacher": 1}
    assert counts["student"]["prompt_tokens"] == 800 and counts["teacher"]["completion_tokens"] == 5
    store.close()


def test_offer_counts_every_request_and_asks_for_the_exchange_only_when_something_keeps_it(tmp_path: Path) -> None:
    """The gateway's two steps: `offer` counts a request from its route and tokens and answers which parts want
    its exchange; only then is the exchange built and handed to `take`. Under thinning (drift above
    max_observed_per_s, sampled store and shadow rates) most requests are never built, and what each part
    received is exactly what its bit asked for."""
    from evaluator.service import WANT_DRIFT, WANT_SHADOW, WANT_STORE

    registry = CollectorRegistry()
    models = {"support": ModelEvalSettings(shadow=ShadowSettings(rate=0.01), scorer=LABEL_SCORER)}
    settings = settings_for(tmp_path)
    settings.store.served_sample_rate = 0.02
    settings.store.served_max_per_s = None
    settings.drift.reference_size = 10_000  # every kept item stays in the reference window, where it is counted
    settings.drift.max_observed_per_s = 50.0
    masks: list[int] = []

    async def call_other(record: ExchangeRecord) -> ExchangeRecord:
        return teacher_answer(record, "intent: billing")

    async def run() -> Evaluator:
        ev = Evaluator(settings, models, call_other, registry=registry)
        await ev.start()
        loop = asyncio.get_running_loop()
        t_end = loop.time() + 1.05  # ~1,000 requests a second for a second: the drift stride then keeps 1 in ~20
        i = 0
        while loop.time() < t_end or i < 6000:
            wanted = ev.offer("support", "student", 20, 5, f"req-{i}", "default")
            masks.append(wanted)
            if wanted:
                ev.take(served(i), wanted)
            i += 1
            if loop.time() < t_end:
                await asyncio.sleep(0.001)
            elif i % 500 == 0:
                await asyncio.sleep(0)  # let the shadow workers run
        await ev.stop()
        return ev

    ev = asyncio.run(run())
    n = len(masks)
    stored = sum(1 for m in masks if m & WANT_STORE)
    drifted = sum(1 for m in masks if m & WANT_DRIFT)
    shadowed = sum(1 for m in masks if m & WANT_SHADOW)
    stride = ev._drift._models["support"].stride  # the drift window keeps 1 request in `stride`
    assert stride >= 2
    # Once thinned, most requests are counted and never built (2 % store and 1 % shadow draws besides).
    assert masks[-4000:].count(0) > 4000 * (1 - 1 / stride) * 0.9
    assert 0 < stored < n * 0.05 and 0 < shadowed < n * 0.03 and 50 <= drifted < n * 0.5
    assert len(ev._drift._models["support"].reference) == drifted
    assert sample(registry, "distillgate_shadow_sampled_total", model="support") == shadowed
    assert sample(registry, "distillgate_shadow_offered_total", model="support") == n
    from evaluator.store import PairStore

    store = PairStore(ev.settings.store.url, ev.settings.store)
    counts = store.route_counts("support")
    assert counts["student"]["requests"] == n and counts["student"]["prompt_tokens"] == 20 * n
    assert counts["student"]["stored"] == stored
    both = sum(1 for m in masks if m & WANT_STORE and m & WANT_SHADOW)  # stored once, with its pair
    assert store.count("exchanges") == stored + 2 * shadowed - both  # sampled served rows; pairs: served + shadow
    store.close()


def test_queue_full_drops_are_counted_and_offer_never_blocks(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    models = {"support": ModelEvalSettings(shadow=ShadowSettings(rate=1.0), scorer=LABEL_SCORER)}
    release = asyncio.Event()

    async def call_other(record: ExchangeRecord) -> ExchangeRecord:
        await release.wait()
        return teacher_answer(record, "intent: billing")

    async def run() -> tuple[list[bool], Evaluator]:
        ev = Evaluator(settings_for(tmp_path, queue_size=3, workers=1), models, call_other, registry=registry)
        await ev.start()
        results = [ev.served(served(0))]
        await asyncio.sleep(0.05)  # let the single worker take the first record and block on the teacher
        results += [ev.served(served(i)) for i in range(1, 30)]  # all from one loop turn: nothing can drain
        release.set()
        await ev.stop()
        return results, ev

    results, ev = asyncio.run(run())
    accepted = results.count(True)
    assert accepted == 4  # one in the worker's hands + a full queue of three
    assert sample(registry, "distillgate_shadow_dropped_total", model="support", status="queue_full") == 30 - accepted
    assert sample(registry, "distillgate_shadow_sampled_total", model="support") == 30
    assert sample(registry, "distillgate_shadow_completed_total", model="support", status="ok") == accepted
    assert ev.agreement("support").n == accepted


def test_stop_persists_pending_and_start_replays_them(tmp_path: Path) -> None:
    models = {"support": ModelEvalSettings(shadow=ShadowSettings(rate=1.0), scorer=LABEL_SCORER)}
    settings = settings_for(tmp_path, drain_timeout_s=0.1, workers=2)

    async def stuck(record: ExchangeRecord) -> ExchangeRecord:
        await asyncio.Event().wait()  # a teacher that never answers
        raise AssertionError("unreachable")

    async def answers(record: ExchangeRecord) -> ExchangeRecord:
        return teacher_answer(record, "intent: billing")

    async def first_run() -> None:
        ev = Evaluator(settings, models, stuck, registry=CollectorRegistry())
        await ev.start()
        assert all(ev.served(served(i)) for i in range(5))
        await ev.stop()
        assert ev.served(served(9)) is False  # stopped: counted as shutdown, never raises

    async def second_run() -> Evaluator:
        ev = Evaluator(settings, models, answers, registry=CollectorRegistry())
        await ev.start()
        await ev.stop()
        return ev

    asyncio.run(first_run())
    from evaluator.store import PairStore

    store = PairStore(settings.store.url, settings.store)
    assert store.count("pending_shadows") == 5
    store.close()
    ev = asyncio.run(second_run())
    assert ev.agreement("support").n == 5
    store = PairStore(settings.store.url, settings.store)
    assert store.count("pending_shadows") == 0
    assert sorted(p.served.request_id for p in store.pairs("support")) == [f"req-{i}" for i in range(5)]
    store.close()


def test_failed_shadow_calls_and_feedback(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    models = {"support": ModelEvalSettings(shadow=ShadowSettings(rate=1.0), scorer=LABEL_SCORER)}

    async def failing(record: ExchangeRecord) -> ExchangeRecord:
        raise ConnectionError("teacher down")

    async def run() -> tuple[bool, bool, bool, bool]:
        # Served exchanges are stored as a sample: this one is not, its shadow failed, so no row holds it.
        settings = settings_for(tmp_path)
        settings.store.served_sample_rate = 0.0
        ev = Evaluator(settings, models, failing, registry=registry)
        await ev.start()
        record = served(1)
        ev.served(record)
        known = await ev.record_feedback("req-1", label="refund", rating=0.0, comment=None, key_name="ops",
                                         model="support")
        unknown = await ev.record_feedback("nope", label="x", rating=None, comment=None, key_name=None)
        wrong_model = await ev.record_feedback("req-2", label="x", rating=None, comment=None, key_name=None,
                                               model="other")
        malformed = await ev.record_feedback("req 3\n", label="x", rating=None, comment=None, key_name=None,
                                             model="support")
        await ev.stop()
        return known, unknown, wrong_model, malformed

    assert asyncio.run(run()) == (True, False, False, False)
    assert sample(registry, "distillgate_shadow_completed_total", model="support", status="error") == 1
    assert sample(registry, "distillgate_shadow_dropped_total", model="support", status="error") == 1
    assert sample(registry, "distillgate_feedback_total", model="support") == 1
    from evaluator.store import PairStore

    store = PairStore(f"sqlite:///{tmp_path / 'ev.db'}")
    assert store.count("exchanges") == 0
    [fb] = store.feedback(model="support")
    assert (fb.request_id, fb.label, fb.key_name) == ("req-1", "refund", "ops")
    assert store.route_counts("support") == {"student": {"requests": 1, "stored": 0, "prompt_tokens": 20,
                                                         "completion_tokens": 5}}
    store.close()


def test_judge_goes_to_the_teacher_through_call_other(tmp_path: Path) -> None:
    models = {"support": ModelEvalSettings(shadow=ShadowSettings(rate=1.0),
                                           scorer=ScorerSettings(kind="judge", threshold=0.8))}
    probes: list[ExchangeRecord] = []

    async def call_other(record: ExchangeRecord) -> ExchangeRecord:
        if record.request_id.startswith("judge-"):
            probes.append(record)
            return teacher_answer(record, "SCORE: 9")
        return teacher_answer(record, "a different answer")

    async def run() -> Evaluator:
        ev = Evaluator(settings_for(tmp_path), models, call_other, registry=CollectorRegistry())
        await ev.start()
        ev.served(served(1, text="my answer"))
        await ev.stop()
        return ev

    ev = asyncio.run(run())
    assert len(probes) == 1 and probes[0].route == "student"  # "served by the student" = ask the teacher
    assert "my answer" in probes[0].request["messages"][0]["content"]
    assert ev.agreement("support").agreed == 1


def test_evaluators_can_coexist_in_one_process(tmp_path: Path) -> None:
    models = {"support": ModelEvalSettings()}

    async def call_other(record: ExchangeRecord) -> ExchangeRecord:
        return record

    first, second = CollectorRegistry(), CollectorRegistry()
    a = Evaluator(settings_for(tmp_path), models, call_other, registry=first)
    Evaluator(settings_for(tmp_path), models, call_other, registry=second)
    a.served(served(1))
    assert sample(first, "distillgate_shadow_offered_total", model="support") == 1
    assert sample(second, "distillgate_shadow_offered_total", model="support") == 0
