"""Scorers: bounds, identity, symmetry (where it holds) as properties, and exact values on known cases."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluator.records import ExchangeRecord
from evaluator.scorers import INVALID_LABEL, JudgeError, JudgeScorer, ScorerUnavailable, build_scorer
from evaluator.settings import ScorerSettings

TEXT = st.text(max_size=60)
SIMPLE = ["exact", "normalized", "json", "rouge_l", "chrf", "token_f1"]
SYMMETRIC = ["exact", "normalized", "json", "rouge_l", "token_f1"]  # chrF weighs recall more: not symmetric


@pytest.mark.parametrize("kind", SIMPLE + ["label"])
@settings(max_examples=60, deadline=None)
@given(a=TEXT, b=TEXT)
def test_value_in_unit_interval_and_pass_matches_threshold(kind: str, a: str, b: str) -> None:
    scorer = build_scorer(ScorerSettings(kind=kind, threshold=0.6))
    value = scorer.similarity(a, b)
    assert 0.0 <= value <= 1.0
    assert scorer.result(value).passed == (value >= 0.6)


@pytest.mark.parametrize("kind", ["exact", "normalized", "rouge_l", "chrf", "token_f1"])
@settings(max_examples=60, deadline=None)
@given(a=TEXT)
def test_identical_answers_score_one(kind: str, a: str) -> None:
    assert build_scorer(ScorerSettings(kind=kind)).similarity(a, a) == 1.0


@pytest.mark.parametrize("kind", SYMMETRIC)
@settings(max_examples=60, deadline=None)
@given(a=TEXT, b=TEXT)
def test_symmetric_scorers(kind: str, a: str, b: str) -> None:
    scorer = build_scorer(ScorerSettings(kind=kind))
    assert scorer.similarity(a, b) == pytest.approx(scorer.similarity(b, a))


@settings(max_examples=60, deadline=None)
@given(doc=st.dictionaries(st.text(min_size=1, max_size=5), st.integers() | st.text(max_size=5), max_size=5))
def test_json_identical_objects_score_one(doc: dict) -> None:
    import json

    assert build_scorer(ScorerSettings(kind="json")).similarity(json.dumps(doc), json.dumps(doc)) == 1.0


def test_known_values() -> None:
    norm = build_scorer(ScorerSettings(kind="normalized"))
    assert norm.similarity("  Billing, please! ", "billing please") == 1.0
    assert norm.similarity("billing", "refund") == 0.0
    assert build_scorer(ScorerSettings(kind="exact")).similarity("Billing", "billing") == 0.0
    assert build_scorer(ScorerSettings(kind="token_f1")).similarity("a b c d", "a b") == pytest.approx(2 / 3)
    assert build_scorer(ScorerSettings(kind="rouge_l")).similarity("a b x d", "a b c d") == pytest.approx(0.75)
    js = build_scorer(ScorerSettings(kind="json", json_fields=["intent", "priority"]))
    assert js.similarity('```json\n{"intent": "billing", "priority": 2}\n```', '{"intent": "billing", "priority": 3}') == 0.5
    assert js.similarity("not json", '{"intent": "billing"}') == 0.0
    assert build_scorer(ScorerSettings(kind="json")).similarity('{"a": 1, "b": 2}', '{"a": 1}') == 0.5


def test_label_extraction() -> None:
    regex = build_scorer(ScorerSettings(kind="label", label_pattern=r"intent:\s*(\w+)", labels=["billing", "refund"]))
    assert regex.extract("Intent: Billing.") == "billing"
    assert regex.extract("intent: weather") == INVALID_LABEL
    assert regex.extract("no label here") == INVALID_LABEL
    assert regex.similarity("intent: billing", "INTENT: billing") == 1.0
    assert regex.similarity("intent: weather", "intent: weather") == 0.0  # invalid never agrees
    field = build_scorer(ScorerSettings(kind="label", json_fields=["intent"], labels=["billing"]))
    assert field.extract('{"intent": "Billing"}') == "billing"
    assert field.extract("{broken") == INVALID_LABEL


def record(text: str, route: str = "student") -> ExchangeRecord:
    return ExchangeRecord("r", "m", route, "v", "chat", {"messages": [{"role": "user", "content": "where is my refund?"}]}, text)


def test_judge_uses_rubric_caches_and_parses() -> None:
    prompts: list[str] = []

    async def teacher(prompt: str) -> str:
        prompts.append(prompt)
        return "SCORE: 7"

    judge = build_scorer(ScorerSettings(kind="judge", threshold=0.6, judge_rubric="Grade it."), judge=teacher)

    async def run() -> None:
        first = await judge.score(record("refund is on its way"), record("your refund was sent", "teacher"))
        again = await judge.score(record("refund is on its way"), record("your refund was sent", "teacher"))
        same = await judge.score(record("x"), record("x", "teacher"))
        assert (first.value, first.passed) == (0.7, True) and again == first and same.value == 1.0

    asyncio.run(run())
    assert len(prompts) == 1  # cached, and identical answers need no judge
    assert prompts[0].startswith("Grade it.") and "where is my refund?" in prompts[0]
    assert "your refund was sent" in prompts[0] and "refund is on its way" in prompts[0]
    with pytest.raises(JudgeError):
        JudgeScorer.parse("I think it is fine")
    assert JudgeScorer.parse("score=10") == 1.0


def test_judge_rate_limit_waits_for_a_slot() -> None:
    clock = [0.0]
    calls: list[float] = []

    async def teacher(prompt: str) -> str:
        calls.append(clock[0])
        return "SCORE: 5"

    judge = build_scorer(ScorerSettings(kind="judge", judge_max_per_minute=2, judge_cache_size=0), judge=teacher)
    # A controllable clock for the limiter's window (the wait itself polls quickly instead of sleeping a minute).
    judge._limiter._clock = lambda: clock[0]
    judge._limiter._sleep = lambda _s: asyncio.sleep(0.01)

    async def run() -> None:
        await judge.score(record("a"), record("b", "teacher"))
        await judge.score(record("c"), record("d", "teacher"))
        third = asyncio.create_task(judge.score(record("e"), record("f", "teacher")))
        await asyncio.sleep(0.05)
        assert len(calls) == 2 and not third.done()  # the third waits: two per minute
        clock[0] = 61.0
        await asyncio.wait_for(third, 5)

    asyncio.run(run())
    assert len(calls) == 3


def test_unavailable_scorers_fail_clearly() -> None:
    with pytest.raises(ScorerUnavailable, match="embedding_model"):
        build_scorer(ScorerSettings(kind="embedding"))
    with pytest.raises(ScorerUnavailable, match="judge"):
        build_scorer(ScorerSettings(kind="judge"))
