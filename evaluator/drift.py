"""Drift detection: a reference window of requests/answers against the current window.

Inputs: per-feature PSI and KS (prompt length and token statistics) plus a domain-classifier
two-sample test on hashed n-grams (cross-validated AUC; the PSI of its out-of-fold scores catches
vocabulary and phrasing shifts that leave lengths alone). Outputs: label mix, refusal rate, answer
length and confidence (mean token logprob). PSI values are bias-corrected (their expectation under
no drift, (bins-1)(1/n_ref + 1/n_cur), is subtracted) so 0 means none at any window size; p-values
are Bonferroni-adjusted minima over the KS / contingency tests of each side. Computing runs in a worker thread.
"""
from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, MutableSequence, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from evaluator.features import answer_length, input_matrix, is_refusal
from evaluator.settings import DriftSettings

log = logging.getLogger(__name__)

LabelOf = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class Observation:
    prompt: str
    answer: str | None = None
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class DriftSnapshot:
    n: int  # observations in the current window
    reference_n: int = 0
    input_score: float | None = None
    output_score: float | None = None
    input_p: float | None = None
    output_p: float | None = None
    auc: float | None = None
    drifted: bool = False
    details: dict[str, float] = field(default_factory=dict)
    computed_at: float | None = None


def _proportions(counts: np.ndarray) -> np.ndarray:
    smoothed = counts + 0.5  # empty bins would make the log blow up
    return smoothed / smoothed.sum()


def _psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    k = int(((ref_counts + cur_counts) > 0).sum())
    if k < 2:
        return 0.0
    r, c = _proportions(ref_counts), _proportions(cur_counts)
    raw = float(np.sum((c - r) * np.log(c / r)))
    expected_noise = (k - 1) * (1 / ref_counts.sum() + 1 / cur_counts.sum())
    return max(0.0, raw - expected_noise)


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 8) -> float:
    """Bias-corrected population stability index over the reference's quantile bins."""
    ref, cur = np.asarray(reference, float), np.asarray(current, float)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    k = len(edges) + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=k)
    return _psi_from_counts(ref_counts, cur_counts)


def categorical_psi(reference: Sequence[str], current: Sequence[str]) -> float:
    cats = sorted(set(reference) | set(current))
    ref, cur = Counter(reference), Counter(current)
    return _psi_from_counts(np.array([ref[c] for c in cats], float), np.array([cur[c] for c in cats], float))


def preload_comparison_libraries() -> None:
    """Imports what a comparison uses from scipy and scikit-learn (~1.5 s of CPU on a 2-vCPU VM), for a
    drift worker process to do once at its start instead of inside its first comparison."""
    import scipy.sparse  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.feature_extraction.text  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401


def ks_p(reference: Sequence[float], current: Sequence[float]) -> float:
    # scipy and sklearn are imported where comparisons run (the drift worker process, or the drift thread
    # with isolation: thread), never at import: the gateway process would otherwise carry ~95 MB of them.
    from scipy.stats import ks_2samp

    ref, cur = np.asarray(reference, float), np.asarray(current, float)
    if np.ptp(np.concatenate([ref, cur])) == 0:
        return 1.0
    return float(ks_2samp(ref, cur).pvalue)


def categorical_p(reference: Sequence[str], current: Sequence[str]) -> float:
    from scipy.stats import chi2_contingency, fisher_exact

    cats = sorted(set(reference) | set(current))
    if len(cats) < 2:
        return 1.0
    ref, cur = Counter(reference), Counter(current)
    table = np.array([[ref[c] for c in cats], [cur[c] for c in cats]])
    if len(cats) == 2:
        return float(fisher_exact(table).pvalue)
    return float(chi2_contingency(table).pvalue)


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _bonferroni(p_values: list[float]) -> float | None:
    return min(1.0, min(p_values) * len(p_values)) if p_values else None


def rank_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC of scores, positives above negatives, from ranks (Mann-Whitney U; ties count half): what
    sklearn's roc_auc_score returns, without its input checks."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([negatives, positives]))
    n1, n2 = len(negatives), len(positives)
    return float((ranks[n1:].sum() - n2 * (n2 + 1) / 2) / (n1 * n2))


@dataclass(frozen=True, slots=True)
class ClassifierResult:
    auc: float
    p_value: float
    score_psi: float


REFERENCES_KEPT = 8  # per detector: one reference per logical model is the usual case


class DriftDetector:
    """Compares two windows. Between comparisons it keeps only its (stateless) hashing vectorizer and, for
    the last few references, their prompts' features and hashed n-grams: a reference stays the same for
    many comparisons while the current window is new each time, so those are computed once."""

    def __init__(self, settings: DriftSettings, label_of: LabelOf | None = None, seed: int = 0) -> None:
        self.settings = settings
        self.label_of = label_of
        self.seed = seed
        self._vectorizer: Any = None  # built by the first classifier test, where comparisons run
        self._references: OrderedDict[tuple[str, ...], tuple[np.ndarray, Any]] = OrderedDict()

    def _reference_inputs(self, prompts: list[str]) -> tuple[np.ndarray, Any]:
        """(features, hashed n-grams) of a reference's prompts, computed once per distinct reference."""
        key = tuple(prompts)
        found = self._references.get(key)
        if found is None:
            found = self._references[key] = (input_matrix(prompts), self._vectorize(prompts))
            while len(self._references) > REFERENCES_KEPT:
                self._references.popitem(last=False)
        else:
            self._references.move_to_end(key)
        return found

    def _vectorize(self, texts: list[str]) -> Any:
        if self._vectorizer is None:
            from sklearn.feature_extraction.text import HashingVectorizer

            self._vectorizer = HashingVectorizer(n_features=self.settings.hashed_features, ngram_range=(1, 2),
                                                 alternate_sign=False, norm="l2")
        return self._vectorizer.transform(texts)

    def classifier_test(self, ref_hashed: Any, cur_hashed: Any, ref_num: np.ndarray,
                        cur_num: np.ndarray) -> ClassifierResult:
        """Can a classifier tell the windows apart? AUC 0.5 = no; out-of-fold scores avoid overfit optimism.
        `*_hashed`: the prompts' hashed n-grams (`_vectorize`), `*_num`: their features (input_matrix)."""
        from scipy.sparse import csr_matrix, hstack, vstack
        from sklearn import config_context
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        num = np.vstack([ref_num, cur_num])
        num = (num - num.mean(0)) / (num.std(0) + 1e-9)
        n1, n2 = ref_hashed.shape[0], cur_hashed.shape[0]
        x = hstack([vstack([ref_hashed, cur_hashed]), csr_matrix(num)]).tocsr()
        y = np.r_[np.zeros(n1), np.ones(n2)]
        folds = StratifiedKFold(self.settings.cv_folds, shuffle=True, random_state=self.seed)
        proba = np.empty(len(y))
        # The folds by hand, without parameter checks (the inputs are built right here): on windows this small,
        # cross_val_predict's dispatch and sklearn's per-call validation cost about as much as the fits.
        with config_context(skip_parameter_validation=True, assume_finite=True):
            for train, test in folds.split(x, y):
                proba[test] = LogisticRegression(solver="liblinear").fit(x[train], y[train]).predict_proba(x[test])[:, 1]
        auc = rank_auc(proba[:n1], proba[n1:])
        se = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))  # Mann-Whitney AUC under the null
        p_value = NormalDist().cdf(-(auc - 0.5) / se)  # upper tail
        return ClassifierResult(auc, p_value, psi(proba[: n1], proba[n1:], self.settings.psi_bins))

    def compare(self, reference: Sequence[Observation], current: Sequence[Observation]) -> DriftSnapshot:
        s = self.settings
        ref_prompts, cur_prompts = [o.prompt for o in reference], [o.prompt for o in current]
        (ref_num, ref_hashed), cur_num = self._reference_inputs(ref_prompts), input_matrix(cur_prompts)
        details: dict[str, float] = {}
        input_psis, input_ps = [], []
        for j in range(ref_num.shape[1]):
            input_psis.append(psi(ref_num[:, j], cur_num[:, j], s.psi_bins))
            input_ps.append(ks_p(ref_num[:, j], cur_num[:, j]))
        clf = self.classifier_test(ref_hashed, self._vectorize(cur_prompts), ref_num, cur_num)
        details["classifier_score_psi"] = clf.score_psi
        # The classifier's own p-value (normal approximation to a cross-validated AUC) is anti-conservative
        # at these sizes; it is reported, while the alarm uses the AUC threshold and the score PSI.
        details["classifier_p"] = clf.p_value
        input_psis.append(clf.score_psi)
        input_score, input_p = max(input_psis), _bonferroni(input_ps)

        output_psis, output_ps = self._output_tests(reference, current, details)
        output_score = max(output_psis) if output_psis else None
        output_p = _bonferroni(output_ps)
        drifted = (
            input_score > s.psi_threshold or (output_score or 0.0) > s.psi_threshold or clf.auc > s.classifier_auc_threshold
            or (input_p is not None and input_p < s.ks_alpha) or (output_p is not None and output_p < s.ks_alpha)
        )
        return DriftSnapshot(n=len(current), reference_n=len(reference), input_score=float(input_score),
                             output_score=_float(output_score), input_p=_float(input_p), output_p=_float(output_p),
                             auc=clf.auc, drifted=bool(drifted), details={k: float(v) for k, v in details.items()},
                             computed_at=time.time())

    def _output_tests(self, reference: Sequence[Observation], current: Sequence[Observation],
                      details: dict[str, float]) -> tuple[list[float], list[float]]:
        ref_ans = [o.answer for o in reference if o.answer is not None]
        cur_ans = [o.answer for o in current if o.answer is not None]
        psis: list[float] = []
        ps: list[float] = []
        if len(ref_ans) < 2 or len(cur_ans) < 2:
            return psis, ps
        if self.label_of is not None:
            ref_labels, cur_labels = [self.label_of(a) for a in ref_ans], [self.label_of(a) for a in cur_ans]
            details["label_psi"] = categorical_psi(ref_labels, cur_labels)
            psis.append(details["label_psi"])
            ps.append(categorical_p(ref_labels, cur_labels))
        ref_ref, cur_ref = [str(is_refusal(a)) for a in ref_ans], [str(is_refusal(a)) for a in cur_ans]
        details["refusal_rate"] = cur_ref.count("True") / len(cur_ref)
        psis.append(categorical_psi(ref_ref, cur_ref))
        ps.append(categorical_p(ref_ref, cur_ref))
        ref_len, cur_len = [answer_length(a) for a in ref_ans], [answer_length(a) for a in cur_ans]
        psis.append(psi(ref_len, cur_len, self.settings.psi_bins))
        ps.append(ks_p(ref_len, cur_len))
        ref_conf = [o.confidence for o in reference if o.confidence is not None]
        cur_conf = [o.confidence for o in current if o.confidence is not None]
        if len(ref_conf) >= self.settings.min_samples and len(cur_conf) >= self.settings.min_samples:
            details["confidence_shift"] = float(np.mean(cur_conf) - np.mean(ref_conf))
            psis.append(psi(ref_conf, cur_conf, self.settings.psi_bins))
            ps.append(ks_p(ref_conf, cur_conf))
        return psis, ps


Compare = Callable[[DriftSettings, "LabelOf | None", Sequence[Observation], Sequence[Observation]], DriftSnapshot]


class Comparer:
    """A Compare for comparisons that repeat (the drift thread's, the drift worker's): one detector kept
    while the settings stay the same, so each reference's inputs are computed once (DriftDetector). Used
    from one thread at a time."""

    def __init__(self) -> None:
        self._detector: DriftDetector | None = None

    def __call__(self, settings: DriftSettings, label_of: LabelOf | None, reference: Sequence[Observation],
                 current: Sequence[Observation]) -> DriftSnapshot:
        detector = self._detector
        if detector is None or detector.settings != settings:
            detector = self._detector = DriftDetector(settings)
        detector.label_of = label_of
        return detector.compare(reference, current)


class _ModelWindows:
    def __init__(self, settings: DriftSettings) -> None:
        # Items are Observations or raw items that `to_observation` turns into one off the event loop.
        self.reference: list[Any] = []
        self.reference_fixed = False  # True once set_reference loaded a distillation reference
        self.current: deque[Any] = deque(maxlen=settings.window_size)
        self.since_last = 0
        self.computing = False
        self.last_started = -math.inf  # monotonic time the latest comparison began
        self.snapshot = DriftSnapshot(n=0)
        # Guards the windows between the observing (event loop) thread and the computing thread.
        self.lock = threading.Lock()
        # Thinning (max_observed_per_s), touched only by the observing thread: every `stride`-th item is kept;
        # `offered` counts items since `rate_since`, when the stride was last set from the rate.
        self.stride = 1
        self.offered = 0
        self.rate_since = time.monotonic()


class DriftMonitor:
    """Per-model windows fed by `observe` (O(1): an append, no feature work); comparisons run in one
    background thread after every_n new requests, at most once per min_interval_s per model.

    `to_observation` turns an observed item into an Observation in the drift thread, so callers on the
    event loop hand over what they already have (e.g. an ExchangeRecord) and pay nothing for features.
    """

    def __init__(self, settings: DriftSettings, label_of: Callable[[str], LabelOf | None] = lambda model: None,
                 on_result: Callable[[str, DriftSnapshot], None] | None = None,
                 to_observation: Callable[[Any], Observation] | None = None,
                 compare: Compare | None = None, warm: Callable[[], None] | None = None) -> None:
        """`compare`: runs one comparison (default: a Comparer in the drift thread; the Evaluator passes
        evaluator.drift_worker's child process). `warm`: called once, in the drift thread, when the first
        item of any model arrives (the Evaluator starts the drift worker then: its ~1.5 s of imports run
        while the reference window fills, not within the first comparison, minutes into live traffic)."""
        self.settings = settings
        self._compare = compare or Comparer()
        self._warm = warm
        self._label_of = label_of
        self._on_result = on_result
        self._to_observation = to_observation
        self._models: dict[str, _ModelWindows] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distillgate-drift")
        # Set to cut min_interval_s waits short: wait_idle (results now) and close (no more results).
        self._hurry = threading.Event()
        self._closing = False

    def _windows(self, model: str) -> _ModelWindows:
        windows = self._models.get(model)
        if windows is None:
            windows = self._models[model] = _ModelWindows(self.settings)
            warm, self._warm = self._warm, None
            if warm is not None:
                try:
                    self._executor.submit(warm)
                except RuntimeError:  # closed: the evaluator is shutting down
                    pass
        return windows

    def set_reference(self, model: str, prompts: Sequence[str], outputs: Sequence[str] | None = None) -> None:
        """Uses the distillation dataset as the reference instead of the first observed requests."""
        if len(prompts) < self.settings.min_samples:
            raise ValueError(f"a drift reference needs at least {self.settings.min_samples} prompts, got {len(prompts)}")
        if outputs is not None and len(outputs) != len(prompts):
            raise ValueError("prompts and outputs must have the same length")
        answers = list(outputs) if outputs is not None else [None] * len(prompts)
        w = self._windows(model)
        with w.lock:
            w.reference = [Observation(p, a) for p, a in zip(prompts, answers)]
            w.reference_fixed = True

    def observe(self, model: str, item: Any) -> None:
        """An Observation, or anything `to_observation` accepts. O(1); above max_observed_per_s only every
        k-th call keeps its item."""
        if self.wants(model):
            self.keep(model, item)

    def wants(self, model: str) -> bool:
        """Whether `model`'s next item is kept (observe's thinning), asked before the caller builds it: True
        only for the items `keep` must then be given. Counts the item as offered. O(1)."""
        w = self._models.get(model) or self._windows(model)
        w.offered += 1
        if w.offered % w.stride:
            return False
        cap = self.settings.max_observed_per_s
        if cap is not None:
            now = time.monotonic()
            elapsed = now - w.rate_since
            if elapsed >= 1.0:
                w.stride = max(1, math.ceil(w.offered / elapsed / cap))
                w.offered, w.rate_since = 0, now
        return True

    def keep(self, model: str, item: Any) -> None:
        """An item `wants` said yes to: into the reference window while it fills, else the current one."""
        w = self._models[model]
        with w.lock:
            if not w.reference_fixed and len(w.reference) < self.settings.reference_size:
                w.reference.append(item)
                return
            w.current.append(item)
            w.since_last += 1
            if w.since_last >= self.settings.every_n and not w.computing:
                self._maybe_submit(model, w)

    def _maybe_submit(self, model: str, w: _ModelWindows) -> None:
        """Called with w.lock held. One comparison at a time per model; a skipped turn runs when it ends."""
        if w.since_last >= self.settings.every_n and len(w.current) >= self.settings.window_size and not w.computing:
            try:
                self._executor.submit(self._compute, model)
            except RuntimeError:  # closed: the evaluator is shutting down
                return
            w.computing = True

    def _observations(self, items: Sequence[Any]) -> list[Observation]:
        convert = self._to_observation
        if convert is None:
            return list(items)
        return [item if isinstance(item, Observation) else convert(item) for item in items]

    def _compute(self, model: str) -> None:
        w = self._models[model]
        try:
            # Throttle by time: at high request rates every_n alone would mean many comparisons a second.
            wait = w.last_started + self.settings.min_interval_s - time.monotonic()
            if wait > 0:
                self._hurry.wait(wait)
            if self._closing:
                return
            with w.lock:  # copy now, not at submission, so the comparison sees the newest window
                observed, current = list(w.reference), list(w.current)
                w.since_last = 0
                w.last_started = time.monotonic()
            limit = self.settings.max_reference_sample
            if len(observed) > limit:  # a large distillation reference: a fixed, seeded sample of it
                reference = self._observations(random.Random(0).sample(observed, limit))
            else:
                reference = self._observations(observed)
                self._keep_converted(w, w.reference, observed, reference)
            converted = self._observations(current)
            self._keep_converted(w, w.current, current, converted)
            current = converted
            label_of = self._label_of(model)
            if label_of is not None:
                # Labels are read here, and the comparison gets a plain lookup: a scorer need not be picklable
                # (nor its modules loaded) where the comparison runs.
                answers = {o.answer for o in (*reference, *current) if o.answer is not None}
                label_of = {answer: label_of(answer) for answer in answers}.get
            snapshot = self._compare(self.settings, label_of, reference, current)
            w.snapshot = snapshot
            if self._on_result is not None:
                self._on_result(model, snapshot)
        except Exception:  # noqa: BLE001 - a failed comparison must not stop later ones
            log.exception("drift computation for %s failed", model)
        finally:
            with w.lock:
                w.computing = False
                # Requests that arrived meanwhile were not compared yet: do it (after the interval) rather
                # than at the next request.
                if not self._closing:
                    self._maybe_submit(model, w)

    @staticmethod
    def _keep_converted(w: _ModelWindows, window: MutableSequence[Any], observed: list[Any],
                        converted: list[Observation]) -> None:
        """Items of `window` (the reference or the current window) that were converted stay converted: a later
        comparison skips their conversion, and the served exchanges behind them are released (an exchange
        keeps the record it built, parsed request included, which a window would otherwise hold until the
        item leaves it). Matched by identity: `observed` holds every item, so no id is reused meanwhile; the
        window may have moved on since it was copied (items appended, the oldest dropped)."""
        by_id = {id(item): obs for item, obs in zip(observed, converted) if item is not obs}
        if not by_id:
            return
        with w.lock:
            for i, item in enumerate(list(window)):
                obs = by_id.get(id(item))
                if obs is not None:
                    window[i] = obs

    def snapshot(self, model: str) -> DriftSnapshot:
        w = self._models.get(model)
        if w is None:
            return DriftSnapshot(n=0)
        if w.snapshot.computed_at is None:
            return DriftSnapshot(n=len(w.current), reference_n=len(w.reference))
        return w.snapshot

    def wait_idle(self, timeout: float | None = None) -> None:
        """Runs any due comparison now (min_interval_s waived) and blocks until none is running or due
        (tests, reports)."""
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        self._hurry.set()
        try:
            while time.monotonic() < deadline:
                self._executor.submit(lambda: None).result(max(0.0, deadline - time.monotonic()))
                if not any(w.computing for w in self._models.values()):
                    return
        finally:
            self._hurry.clear()
        raise TimeoutError("drift computations still running")

    def close(self) -> None:
        self._closing = True
        self._hurry.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
