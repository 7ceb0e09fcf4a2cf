"""Scorers compare the student's answer with the teacher's: one small class per kind, one factory.

Every scorer returns a value in [0, 1]; the pair agrees when the value reaches the configured
threshold. Scoring is async because the judge calls the teacher; the others are plain functions.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from evaluator.records import ExchangeRecord
from evaluator.settings import ScorerSettings
from evaluator.textnorm import normalize, words

INVALID_LABEL = "invalid"

JudgeCall = Callable[[str], Awaitable[str]]
"""Sends a prompt to the teacher and returns its answer text (injected; the evaluator wires it to call_other)."""

DEFAULT_RUBRIC = (
    "You are grading a candidate answer against a reference answer to the same request.\n"
    "Score 10 if the candidate means the same as the reference and is as correct and complete, 0 if it "
    "contradicts or misses it entirely, and in between for partial agreement.\n"
    "Reply with only: SCORE: <integer 0-10>"
)


class ScorerUnavailable(RuntimeError):
    """The configured scorer cannot run here (e.g. no embedding model configured)."""


class JudgeError(RuntimeError):
    """The judge's reply held no score."""


@dataclass(frozen=True, slots=True)
class Score:
    name: str
    value: float
    passed: bool


class Scorer:
    """Base: compares response texts with ``similarity``; subclasses needing more override ``score``."""

    name = "base"

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self.threshold = settings.threshold

    def similarity(self, student: str, teacher: str) -> float:
        raise NotImplementedError

    async def score(self, student: ExchangeRecord, teacher: ExchangeRecord) -> Score:
        value = self.similarity(student.response_text, teacher.response_text)
        return self.result(value)

    def result(self, value: float) -> Score:
        value = min(1.0, max(0.0, float(value)))
        return Score(self.name, value, value >= self.threshold)


class ExactScorer(Scorer):
    name = "exact"

    def similarity(self, student: str, teacher: str) -> float:
        return 1.0 if student == teacher else 0.0


class NormalizedScorer(Scorer):
    name = "normalized"

    def similarity(self, student: str, teacher: str) -> float:
        return 1.0 if normalize(student) == normalize(teacher) else 0.0


class LabelScorer(Scorer):
    """Extracts a label (regex group, JSON field, or the whole answer) and compares; unknown = 'invalid'."""

    name = "label"

    def __init__(self, settings: ScorerSettings) -> None:
        super().__init__(settings)
        self._pattern = re.compile(settings.label_pattern, re.IGNORECASE | re.DOTALL) if settings.label_pattern else None
        self._field = settings.json_fields[0] if settings.json_fields else None
        self._known = {normalize(label): label for label in settings.labels}

    def extract(self, text: str) -> str:
        raw: str | None = text
        if self._field is not None:
            doc = parse_json_object(text)
            value = doc.get(self._field) if doc is not None else None
            raw = str(value) if value is not None else None
        elif self._pattern is not None:
            match = self._pattern.search(text)
            raw = (match.group(1) if match.groups() else match.group(0)) if match else None
        if raw is None:
            return INVALID_LABEL
        label = normalize(raw)
        if self._known:
            return self._known.get(label, INVALID_LABEL)
        return label or INVALID_LABEL

    def similarity(self, student: str, teacher: str) -> float:
        a, b = self.extract(student), self.extract(teacher)
        # Two unparseable answers are not agreement: an invalid student answer is always a failure.
        return 1.0 if a == b and a != INVALID_LABEL else 0.0


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in an answer, tolerating code fences and prose around it."""
    candidates = [text.strip()]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


class JsonScorer(Scorer):
    """Both answers must be JSON objects; the value is the share of compared fields that are equal."""

    name = "json"

    def similarity(self, student: str, teacher: str) -> float:
        a, b = parse_json_object(student), parse_json_object(teacher)
        if a is None or b is None:
            return 0.0
        fields = self.settings.json_fields or sorted(set(a) | set(b))
        if not fields:
            return 1.0
        return sum(1 for f in fields if f in a and f in b and a[f] == b[f]) / len(fields)


class RougeLScorer(Scorer):
    name = "rouge_l"

    def __init__(self, settings: ScorerSettings) -> None:
        # Scorer libraries load only when their kind is configured (rouge_score pulls nltk: ~40 MB).
        from rouge_score import rouge_scorer

        super().__init__(settings)
        self._rouge = rouge_scorer.RougeScorer(["rougeL"])

    def similarity(self, student: str, teacher: str) -> float:
        if normalize(student) == normalize(teacher):
            return 1.0  # also covers two answers with no scorable tokens
        return self._rouge.score(teacher, student)["rougeL"].fmeasure


class ChrfScorer(Scorer):
    name = "chrf"

    def __init__(self, settings: ScorerSettings) -> None:
        import sacrebleu  # loaded only when a model scores with chrF

        super().__init__(settings)
        self._sentence_chrf = sacrebleu.sentence_chrf

    def similarity(self, student: str, teacher: str) -> float:
        if student == teacher:
            return 1.0
        return self._sentence_chrf(student, [teacher]).score / 100.0


class TokenF1Scorer(Scorer):
    name = "token_f1"

    def similarity(self, student: str, teacher: str) -> float:
        a, b = words(student), words(teacher)
        if not a and not b:
            return 1.0
        common = sum((Counter(a) & Counter(b)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(a), common / len(b)
        return 2 * precision * recall / (precision + recall)


class EmbeddingScorer(Scorer):
    """Cosine similarity of mean-pooled hidden states from a local transformers model (clipped at 0)."""

    name = "embedding"

    def __init__(self, settings: ScorerSettings) -> None:
        super().__init__(settings)
        if not settings.embedding_model:
            raise ScorerUnavailable("scorer kind 'embedding' needs scorer.embedding_model (a local model directory)")
        try:
            import torch  # noqa: F401 - optional dependency (the 'train' extra)
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ScorerUnavailable(f"scorer kind 'embedding' needs torch and transformers: {exc}") from None
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(settings.embedding_model)
            self._model = AutoModel.from_pretrained(settings.embedding_model).eval()
        except (OSError, ValueError) as exc:
            raise ScorerUnavailable(f"cannot load embedding model {settings.embedding_model!r}: {exc}") from None

    def _embed(self, texts: list[str]) -> Any:
        import torch

        with torch.inference_mode():
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)

    def similarity(self, student: str, teacher: str) -> float:
        if student == teacher:
            return 1.0
        emb = self._embed([student, teacher])
        return max(0.0, float((emb[0] * emb[1]).sum()))

    async def score(self, student: ExchangeRecord, teacher: ExchangeRecord) -> Score:
        # The forward pass is CPU-heavy: keep it off the event loop.
        value = await asyncio.to_thread(self.similarity, student.response_text, teacher.response_text)
        return self.result(value)


class SlidingWindowLimiter:
    """At most `per_minute` acquisitions in any 60 s; `acquire` waits for a free slot."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._sleep = sleep
        self._times: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                while self._times and now - self._times[0] >= 60.0:
                    self._times.popleft()
                if len(self._times) < self._per_minute:
                    self._times.append(now)
                    return
                await self._sleep(60.0 - (now - self._times[0]))


_SCORE = re.compile(r"SCORE\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


class JudgeScorer(Scorer):
    """LLM-as-judge: the teacher grades the student's answer against its own, with a rubric (0-10)."""

    name = "judge"

    def __init__(self, settings: ScorerSettings, judge: JudgeCall | None) -> None:
        super().__init__(settings)
        if judge is None:
            raise ScorerUnavailable("scorer kind 'judge' needs a judge callable (the teacher)")
        self._judge = judge
        self._rubric = settings.judge_rubric or DEFAULT_RUBRIC
        self._limiter = SlidingWindowLimiter(settings.judge_max_per_minute)
        self._cache: OrderedDict[str, float] = OrderedDict()
        self._cache_size = settings.judge_cache_size
        self.calls = 0

    def prompt(self, request: str, student: str, teacher: str) -> str:
        return (f"{self._rubric}\n\n[REQUEST]\n{request}\n\n[REFERENCE ANSWER]\n{teacher}\n\n"
                f"[CANDIDATE ANSWER]\n{student}\n")

    @staticmethod
    def parse(reply: str) -> float:
        match = _SCORE.search(reply) or re.search(r"\b(\d+(?:\.\d+)?)\b", reply)
        if not match:
            raise JudgeError(f"judge reply has no score: {reply[:80]!r}")
        value = float(match.group(1))
        if math.isnan(value) or value > 10:
            raise JudgeError(f"judge score out of range: {value}")
        return value / 10.0

    async def score(self, student: ExchangeRecord, teacher: ExchangeRecord) -> Score:
        if student.response_text == teacher.response_text:
            return self.result(1.0)  # no need to pay the teacher to confirm identity
        prompt = self.prompt(request_text(student.request), student.response_text, teacher.response_text)
        key = hashlib.sha256(prompt.encode()).hexdigest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self.result(self._cache[key])
        await self._limiter.acquire()
        self.calls += 1
        value = self.parse(await self._judge(prompt))
        if self._cache_size:
            self._cache[key] = value
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return self.result(value)


def request_text(request: dict[str, Any]) -> str:
    """The user-visible text of a chat or completions request body."""
    if "messages" in request and isinstance(request["messages"], list):
        parts = []
        for message in request["messages"]:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # content parts: keep the text ones
                parts += [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(parts)
    prompt = request.get("prompt")
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


_SIMPLE: dict[str, type[Scorer]] = {
    "exact": ExactScorer, "normalized": NormalizedScorer, "label": LabelScorer, "json": JsonScorer,
    "rouge_l": RougeLScorer, "chrf": ChrfScorer, "token_f1": TokenF1Scorer, "embedding": EmbeddingScorer,
}


def build_scorer(settings: ScorerSettings, judge: JudgeCall | None = None) -> Scorer:
    """The scorer a model's config names; raises ScorerUnavailable when it cannot run here."""
    if settings.kind == "judge":
        return JudgeScorer(settings, judge)
    return _SIMPLE[settings.kind](settings)
