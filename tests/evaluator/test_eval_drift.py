"""Drift detection: false-alarm rate on no-drift streams, and detection of injected shifts within the window."""
from __future__ import annotations

import random
import threading

import pytest

from hypothesis import given, settings as hyp_settings, strategies as st

from evaluator.drift import (
    Comparer,
    DriftDetector,
    DriftMonitor,
    Observation,
    categorical_psi,
    psi,
    rank_auc,
)
from evaluator.settings import DriftSettings

NOUNS = ["card", "invoice", "payment", "refund", "account", "password", "login", "subscription", "plan", "charge",
         "receipt", "order"]
VERBS = ["failed", "was declined", "is wrong", "does not work", "disappeared", "was charged twice", "expired", "is locked"]
WHEN = ["again", "today", "yesterday", "this morning", "since last week", "after the update", ""]
TEMPLATES = ["my {n} {v} {a}, please help", "hi, the {n} {v} {a}. what should I do?", "{n} {v} {a} order {num}",
             "Hello team, my {n} {v} {a}. Thanks"]
NEW_TOPIC = ["kubernetes cluster", "gpu driver", "docker image", "terraform state", "helm chart", "ssl certificate"]
NEW_PHRASING = ["URGENT!!! {n} {v} {a} - fix ASAP!!!",
                "Could you kindly explain why my {n} {v} {a} given that I have tried everything in your documentation?"]
LABELS = ["billing", "account", "technical"]


def stream(rng: random.Random, n: int, nouns: list[str] = NOUNS, templates: list[str] = TEMPLATES,
           label_weights: tuple[float, ...] = (0.5, 0.3, 0.2)) -> list[Observation]:
    out = []
    for _ in range(n):
        prompt = rng.choice(templates).format(n=rng.choice(nouns), v=rng.choice(VERBS), a=rng.choice(WHEN),
                                              num=rng.randint(100, 99999))
        label = rng.choices(LABELS, weights=label_weights)[0]
        out.append(Observation(prompt, f"intent: {label}", -rng.random()))
    return out


def label_of(answer: str) -> str:
    return answer.split(": ")[-1]


def test_psi_is_zero_for_identical_and_large_for_disjoint() -> None:
    values = [float(i % 37) for i in range(400)]
    assert psi(values, values) == 0.0
    assert psi(values, [v + 100 for v in values]) > 2.0
    assert categorical_psi(["a"] * 50 + ["b"] * 50, ["a"] * 50 + ["b"] * 50) == 0.0
    assert categorical_psi(["a"] * 90 + ["b"] * 10, ["a"] * 10 + ["b"] * 90) > 1.0


@hyp_settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1), min_size=1, max_size=30),
       st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1), min_size=1, max_size=30))
def test_rank_auc_is_rocs_area_ties_included(negatives: list[float], positives: list[float]) -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y = [0] * len(negatives) + [1] * len(positives)
    expected = roc_auc_score(y, negatives + positives)
    assert rank_auc(np.array(negatives), np.array(positives)) == pytest.approx(expected, abs=1e-12)


def test_a_comparer_reuses_a_reference_only_while_it_is_the_same() -> None:
    """The reference's inputs are kept between comparisons: a different reference of the same size, or the
    first one again after others, must give what a fresh detector gives."""
    s = DriftSettings()
    rng = random.Random(7)
    usual, shifted = stream(rng, s.reference_size), stream(rng, s.reference_size, nouns=NEW_TOPIC)
    current = stream(rng, s.window_size)
    compare = Comparer()
    aucs = []
    for reference in (usual, shifted, usual, shifted):
        kept = compare(s, label_of, reference, current)
        fresh = DriftDetector(s, label_of).compare(reference, current)
        assert (kept.input_score, kept.output_score, kept.auc, kept.drifted, kept.details) == \
            (fresh.input_score, fresh.output_score, fresh.auc, fresh.drifted, fresh.details)
        aucs.append(kept.auc)
    assert aucs[1] > 0.9 > 0.6 > aucs[0]  # the two references really differ: a stale one would show


def test_false_alarm_rate_below_one_percent() -> None:
    detector = DriftDetector(DriftSettings(), label_of=label_of)
    s = DriftSettings()
    trials, alarms = 200, 0
    for trial in range(trials):
        rng = random.Random(trial)
        alarms += detector.compare(stream(rng, s.reference_size), stream(rng, s.window_size)).drifted
    assert alarms / trials < 0.01


@pytest.mark.parametrize(("shift", "kwargs", "side"), [
    ("new topic vocabulary", {"nouns": NEW_TOPIC}, "input"),
    ("new phrasing", {"templates": NEW_PHRASING}, "input"),
    ("label mix change", {"label_weights": (0.05, 0.15, 0.8)}, "output"),
])
def test_injected_shift_flagged_within_window(shift: str, kwargs: dict, side: str) -> None:
    settings = DriftSettings()
    results = []
    monitor = DriftMonitor(settings, label_of=lambda model: label_of, on_result=lambda m, s: results.append(s))
    rng = random.Random(7)
    try:
        for obs in stream(rng, settings.reference_size + settings.window_size):  # reference, then a calm window
            monitor.observe("m", obs)
        monitor.wait_idle(60)
        assert results and not results[-1].drifted, f"false alarm before the {shift}"
        for obs in stream(rng, settings.window_size, **kwargs):
            monitor.observe("m", obs)
        monitor.wait_idle(60)
    finally:
        monitor.close()
    snap = monitor.snapshot("m")
    assert snap.drifted, shift
    score = snap.input_score if side == "input" else snap.output_score
    assert score is not None and score > settings.psi_threshold
    assert snap.n == settings.window_size and snap.reference_n == settings.reference_size


def test_distillation_reference_and_no_result_before_full_window() -> None:
    settings = DriftSettings(window_size=40, reference_size=40, every_n=10)
    monitor = DriftMonitor(settings, label_of=lambda model: label_of)
    rng = random.Random(3)
    ref = stream(rng, 60)
    with pytest.raises(ValueError):
        monitor.set_reference("m", [o.prompt for o in ref[:5]])
    monitor.set_reference("m", [o.prompt for o in ref], [o.answer or "" for o in ref])
    for obs in stream(rng, 39, nouns=NEW_TOPIC):
        monitor.observe("m", obs)
    monitor.wait_idle(60)
    early = monitor.snapshot("m")
    assert (early.n, early.reference_n, early.input_score) == (39, 60, None)
    monitor.observe("m", stream(rng, 1, nouns=NEW_TOPIC)[0])
    monitor.wait_idle(60)
    monitor.close()
    assert monitor.snapshot("m").drifted


def test_recomputation_is_throttled_by_time_and_features_are_computed_in_the_drift_thread() -> None:
    """every_n=1 would mean a comparison per request; min_interval_s caps it. Items are converted by
    to_observation in the drift thread, never by observe (the caller's thread), and a reference item once:
    later comparisons reuse its Observation."""
    import threading
    from collections import Counter

    settings = DriftSettings(window_size=20, reference_size=20, every_n=1, min_interval_s=3600.0)
    results, converted_in, conversions = [], set(), Counter()

    def to_observation(item: tuple[int, Observation]) -> Observation:
        converted_in.add(threading.current_thread().name)
        conversions[item[0]] += 1
        return item[1]

    monitor = DriftMonitor(settings, label_of=lambda model: label_of, on_result=lambda m, s: results.append(s),
                           to_observation=to_observation)
    rng = random.Random(5)
    items = list(enumerate(stream(rng, 200)))
    try:
        for item in items[:40]:  # reference, then a full window: the first comparison is due at once
            monitor.observe("m", item)
        monitor.wait_idle(60)
        assert len(results) == 1
        for item in items[40:]:  # 160 more requests, each "due" by every_n: all wait for the interval
            monitor.observe("m", item)
        assert len(results) == 1
        monitor.wait_idle(60)  # waives the interval: the newest window is compared now
    finally:
        monitor.close()
    assert len(results) == 2 and results[-1].n == 20
    assert converted_in and all(n.startswith("distillgate-drift") for n in converted_in)
    assert [conversions[i] for i in range(20)] == [1] * 20  # the reference, converted for the first comparison only
    assert all(conversions[i] == 1 for i in range(180, 200))  # the second comparison's window


def test_window_items_compared_again_are_not_converted_again() -> None:
    """A comparison leaves the current window holding the Observations it made (the served exchanges behind
    them released): items still in the window at the next comparison are not converted a second time."""
    from collections import Counter

    settings = DriftSettings(window_size=20, reference_size=20, every_n=5, min_interval_s=0.0)
    conversions: Counter[int] = Counter()

    def to_observation(item: tuple[int, Observation]) -> Observation:
        conversions[item[0]] += 1
        return item[1]

    monitor = DriftMonitor(settings, label_of=lambda model: label_of, to_observation=to_observation)
    items = list(enumerate(stream(random.Random(11), 45)))
    try:
        for item in items[:40]:
            monitor.observe("m", item)
        monitor.wait_idle(60)
        for item in items[40:]:  # the window is now items 25..44: 15 of them were compared before
            monitor.observe("m", item)
        monitor.wait_idle(60)
        assert monitor.snapshot("m").n == 20
    finally:
        monitor.close()
    assert sorted(conversions) == list(range(45))
    assert set(conversions.values()) == {1}


def test_a_large_reference_is_compared_through_a_bounded_sample() -> None:
    settings = DriftSettings(window_size=20, reference_size=20, every_n=5, max_reference_sample=50)
    monitor = DriftMonitor(settings, label_of=lambda model: label_of)
    rng = random.Random(9)
    ref = stream(rng, 500)
    monitor.set_reference("m", [o.prompt for o in ref], [o.answer or "" for o in ref])
    for obs in stream(rng, 20):
        monitor.observe("m", obs)
    monitor.wait_idle(60)
    monitor.close()
    assert monitor.snapshot("m").reference_n == 50


def test_busy_traffic_is_thinned_to_max_observed_per_s_and_quiet_traffic_is_not() -> None:
    settings = DriftSettings(window_size=400, reference_size=20, every_n=10**6, max_observed_per_s=50.0)
    monitor = DriftMonitor(settings)
    try:
        w = monitor._windows("m")
        for i in range(40):  # well within the first second: every item is kept
            monitor.observe("m", Observation(f"q{i}", None))
        assert len(w.reference) == 20 and len(w.current) == 20 and w.stride == 1
        for i in range(950):  # a burst, still inside the same second: kept, the rate is only judged per second
            monitor.observe("m", Observation(f"b{i}", None))
        assert len(w.current) == 400 and w.stride == 1
        w.rate_since -= 1.0  # one second has passed with 991 calls (this next one included): 19.8 x the cap
        monitor.observe("m", Observation("turn", None))
        assert w.stride == 20
        before = list(w.current)
        for i in range(200):
            monitor.observe("m", Observation(f"t{i}", None))
        added = [o.prompt for o in w.current if o not in before]
        assert added == [f"t{i}" for i in range(19, 200, 20)]  # every 20th call: 10 of 200
    finally:
        monitor.close()


def test_comparisons_run_in_a_child_process_so_the_serving_process_never_loads_sklearn() -> None:
    """What DriftSettings.isolation="process" is for: a fresh interpreter (this test process has long
    imported sklearn) feeds a shifted window and gets a drifted snapshot back without importing it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = """
import json, random, sys
from evaluator.drift import DriftMonitor, Observation
from evaluator.drift_worker import DriftWorker
from evaluator.settings import DriftSettings
worker = DriftWorker()
settings = DriftSettings(window_size=60, reference_size=60, every_n=10, min_interval_s=0, min_samples=10)
monitor = DriftMonitor(settings, compare=worker.compare)
rng = random.Random(0)
for _ in range(60):
    monitor.observe("m", Observation(f"please refund my order {rng.randrange(1000)}, it arrived broken"))
for _ in range(60):
    monitor.observe("m", Observation(f"WHAT IS {rng.randrange(1000)} + {rng.randrange(1000)}??? ANSWER NOW"))
monitor.wait_idle(120)
snap = monitor.snapshot("m")
print(json.dumps({"computed": snap.computed_at is not None, "drifted": snap.drifted, "child": worker.pid,
                  "sklearn": "sklearn" in sys.modules, "scipy": "scipy" in sys.modules}))
monitor.close()
worker.close()
"""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["computed"] and out["drifted"]
    assert out["child"] is not None
    assert out["sklearn"] is False and out["scipy"] is False


def test_drift_worker_replaces_a_dead_child_and_passes_a_failed_comparison_back() -> None:
    import os
    import signal

    from evaluator.drift_worker import DriftWorker, DriftWorkerError

    settings = DriftSettings(window_size=20, reference_size=20, min_samples=10)
    obs = [Observation(f"prompt number {i}", "yes") for i in range(20)]
    worker = DriftWorker()
    try:
        first = worker.compare(settings, None, obs, obs)
        pid = worker.pid
        assert pid is not None and pid != os.getpid() and first.n == 20
        here = DriftDetector(settings).compare(obs, obs)  # the child computes what this process would
        assert (first.input_score, first.auc, first.drifted) == (here.input_score, here.auc, here.drifted)
        os.kill(pid, signal.SIGKILL)
        second = worker.compare(settings, None, obs, obs)  # a new child answers
        assert worker.pid not in (None, pid) and second.n == 20
        with pytest.raises(DriftWorkerError, match="ValueError"):
            worker.compare(settings, int, obs, obs)  # the label reader fails inside the child
        assert worker.compare(settings, None, obs, obs).n == 20  # and the child is still there
    finally:
        worker.close()
    assert worker.pid is None


def test_drift_worker_warm_starts_the_child_once_and_comparisons_use_it() -> None:
    from evaluator.drift_worker import DriftWorker

    settings = DriftSettings(window_size=20, reference_size=20, min_samples=10)
    obs = [Observation(f"prompt number {i}", "yes") for i in range(20)]
    worker = DriftWorker()
    try:
        assert worker.pid is None
        worker.warm()
        pid = worker.pid
        assert pid is not None
        worker.warm()  # already running: the same child
        assert worker.pid == pid
        assert worker.compare(settings, None, obs, obs).n == 20
        assert worker.pid == pid  # the comparison went to the warmed child
    finally:
        worker.close()
    worker.warm()  # closed: nothing is started again
    assert worker.pid is None


def test_drift_monitor_warms_once_in_its_thread_on_the_first_item() -> None:
    calls: list[str] = []
    done = threading.Event()

    def warm() -> None:
        calls.append(threading.current_thread().name)
        done.set()

    monitor = DriftMonitor(DriftSettings(window_size=20, reference_size=20, min_samples=10), warm=warm)
    try:
        assert calls == []  # nothing before traffic
        monitor.observe("a", Observation("first"))
        assert done.wait(10)
        for i in range(30):
            monitor.observe("a" if i % 2 else "b", Observation(f"more {i}"))
        monitor.wait_idle(10)
        assert len(calls) == 1
        assert calls[0] != threading.current_thread().name  # not on the caller's (the event loop's) thread
    finally:
        monitor.close()
