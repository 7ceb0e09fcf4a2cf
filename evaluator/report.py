"""Report data from the store: agreement over time and per slice, drift recomputed from stored
exchanges, top disagreements, route rates, cost saved, and accuracy against feedback labels.

`build_report` returns plain JSON-able data; `evaluator.report_html` renders it.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from evaluator.agreement import wilson_interval
from evaluator.drift import DriftDetector, Observation
from evaluator.features import mean_logprob
from evaluator.records import TEACHER_ROUTES, ExchangeRecord, Feedback, ShadowPair
from evaluator.scorers import LabelScorer, Scorer, build_scorer, request_text
from evaluator.settings import EvaluatorSettings, ModelEvalSettings, ScorerSettings
from evaluator.spend import student_cost, teacher_cost, tokens
from evaluator.store import PairStore
from evaluator.textnorm import normalize

TIME_BUCKETS = 24
TOP_DISAGREEMENTS = 10
EXAMPLE_CHARS = 400


def _interval(agreed: int, n: int, confidence: float) -> dict[str, Any]:
    if n == 0:
        return {"n": 0, "agreed": 0, "ratio": None, "lower": None, "upper": None}
    lower, upper = wilson_interval(agreed, n, confidence)
    return {"n": n, "agreed": agreed, "ratio": agreed / n, "lower": lower, "upper": upper}


def agreement_over_time(pairs: Sequence[ShadowPair], since: float, until: float, confidence: float,
                        buckets: int = TIME_BUCKETS) -> list[dict[str, Any]]:
    width = max((until - since) / buckets, 1e-9)
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for pair in pairs:
        index = min(buckets - 1, max(0, int((pair.served.created_at - since) / width)))
        counts[index][0] += pair.agreed
        counts[index][1] += 1
    return [{"start": since + i * width, "end": since + (i + 1) * width, **_interval(a, n, confidence)}
            for i, (a, n) in sorted(counts.items())]


def per_slice(pairs: Iterable[ShadowPair], confidence: float) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for pair in pairs:
        for key in ((pair.student.version, pair.served.slice), (pair.student.version, "all")):
            counts[key][0] += pair.agreed
            counts[key][1] += 1
    return [{"version": v, "slice": s, **_interval(a, n, confidence)} for (v, s), (a, n) in sorted(counts.items())]


def drift_over_time(exchanges: Sequence[ExchangeRecord], detector: DriftDetector) -> list[dict[str, Any]]:
    """The first reference_size requests are the reference; windows of window_size slide by half a window."""
    s = detector.settings
    obs = [Observation(request_text(e.request), e.response_text if e.route not in TEACHER_ROUTES else None,
                       mean_logprob(e) if e.route not in TEACHER_ROUTES else None) for e in exchanges]
    reference, rest, times = obs[: s.reference_size], obs[s.reference_size:], [e.created_at for e in exchanges]
    if len(reference) < s.reference_size or len(rest) < s.window_size:
        return []
    points = []
    step = max(1, s.window_size // 2)
    for end in range(s.window_size, len(rest) + 1, step):
        snap = detector.compare(reference, rest[end - s.window_size:end])
        points.append({"time": times[s.reference_size + end - 1], "n": snap.n, "input_score": snap.input_score,
                       "output_score": snap.output_score, "input_p": snap.input_p, "output_p": snap.output_p,
                       "auc": snap.auc, "drifted": snap.drifted})
    return points


def top_disagreements(pairs: Sequence[ShadowPair], limit: int = TOP_DISAGREEMENTS) -> list[dict[str, Any]]:
    """The lowest-scoring disagreements (texts were redacted when stored)."""
    worst = sorted((p for p in pairs if not p.agreed), key=lambda p: next(iter(p.scores.values()), 0.0))[:limit]
    return [{"request_id": p.served.request_id, "version": p.student.version, "slice": p.served.slice,
             "score": next(iter(p.scores.values()), 0.0), "prompt": request_text(p.served.request)[:EXAMPLE_CHARS],
             "student": p.student.response_text[:EXAMPLE_CHARS], "teacher": p.teacher.response_text[:EXAMPLE_CHARS]}
            for p in worst]


def route_rates(exchanges: Sequence[ExchangeRecord], counted: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
    """Per-route rates: from the store's per-route counts of every request when there are any (stored
    exchanges are only a sample of served traffic), else from the stored exchanges (older stores)."""
    counts = Counter({route: c["requests"] for route, c in counted.items()}) if counted else Counter(e.route for e in exchanges)
    total = sum(counts.values())
    return {"total": total, "counts": dict(sorted(counts.items())),
            "escalation_rate": counts["cascade"] / total if total else None,
            "fallback_rate": counts["fallback"] / total if total else None}


def cost(exchanges: Sequence[ExchangeRecord], pairs: Sequence[ShadowPair], settings: ModelEvalSettings,
         counted: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, float]:
    """Dollars; served traffic from the per-route counts when there are any (prices are per token, so
    token sums per route are exact), else from the stored exchanges."""
    prices = settings.prices
    served_tokens = ([(route, (c["prompt_tokens"], c["completion_tokens"])) for route, c in counted.items()] if counted
                     else [(e.route, tokens(e)) for e in exchanges])
    baseline = sum(teacher_cost(prices, *t) for _, t in served_tokens)
    served = sum((teacher_cost if route in TEACHER_ROUTES else student_cost)(prices, *t) for route, t in served_tokens)
    shadow = sum(teacher_cost(prices, *tokens(p.shadow)) for p in pairs if p.shadow.route in TEACHER_ROUTES)
    return {"baseline_dollars": baseline, "served_dollars": served, "shadow_dollars": shadow,
            "saved_dollars": baseline - served - shadow}


def accuracy(feedback: Sequence[Feedback], exchanges: Sequence[ExchangeRecord], pairs: Sequence[ShadowPair],
             scorer: Scorer) -> dict[str, Any] | None:
    """Student and teacher accuracy against feedback labels, each side counted where its answer is known."""
    labelled = {f.request_id: f.label for f in feedback if f.label}
    if not labelled:
        return None
    # Feedback labels are bare labels; answers go through the scorer's label extraction when it has one.
    extract = (lambda text: normalize(scorer.extract(text))) if isinstance(scorer, LabelScorer) else normalize
    answers: dict[str, dict[str, str]] = defaultdict(dict)
    for e in exchanges:
        if e.request_id in labelled:
            answers[e.request_id]["teacher" if e.route in TEACHER_ROUTES else "student"] = e.response_text
    for p in pairs:
        if p.served.request_id in labelled:
            answers[p.served.request_id].update(student=p.student.response_text, teacher=p.teacher.response_text)
    result: dict[str, Any] = {"labelled": len(labelled)}
    for side in ("student", "teacher"):
        judged = [(rid, a[side]) for rid, a in answers.items() if side in a]
        correct = sum(extract(text) == normalize(labelled[rid]) for rid, text in judged)
        result[side] = {"n": len(judged), "correct": correct, "accuracy": correct / len(judged) if judged else None}
    return result


def build_report(store: PairStore, models: Mapping[str, ModelEvalSettings], settings: EvaluatorSettings,
                 since: float, until: float | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
    until = until if until is not None else time.time()
    names = list(only) if only else sorted(models)
    confidence = settings.agreement.confidence
    out: dict[str, Any] = {"generated_at": time.time(), "since": since, "until": until, "models": {}}
    for name in names:
        model_settings = models[name]
        try:
            scorer = build_scorer(model_settings.scorer)
        except Exception:  # noqa: BLE001 - judge/embedding need live parts; reports only need label extraction
            scorer = build_scorer(ScorerSettings(kind="normalized"))
        pairs = store.pairs(name, since=since, until=until)
        # Shadow-stage candidates answered no user: per-version tables show them, model-wide numbers do not.
        served_pairs = [p for p in pairs if not p.is_candidate]
        exchanges = store.exchanges(name, since=since, until=until)
        counted = store.route_counts(name, since=since, until=until)
        label_of = scorer.extract if isinstance(scorer, LabelScorer) else None
        agreed = sum(p.agreed for p in served_pairs)
        out["models"][name] = {
            "scorer": model_settings.scorer.kind,
            "agreement": _interval(agreed, len(served_pairs), confidence),
            "agreement_over_time": agreement_over_time(served_pairs, since, until, confidence),
            "slices": per_slice(pairs, confidence),
            "drift_over_time": drift_over_time(exchanges, DriftDetector(settings.drift, label_of)),
            "drift_thresholds": {"psi": settings.drift.psi_threshold, "auc": settings.drift.classifier_auc_threshold},
            "disagreements": top_disagreements(pairs),
            "routes": route_rates(exchanges, counted),
            "cost": cost(exchanges, pairs, model_settings, counted),
            "accuracy": accuracy(store.feedback(name, since=since), exchanges, served_pairs, scorer),
        }
    return out
