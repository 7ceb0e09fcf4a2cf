"""Records that cross package boundaries (gateway -> evaluator -> redistill)."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

ROUTES = ("student", "teacher", "fallback", "cascade", "candidate")
# Routes whose answer the teacher generated: fallback (the student failed) and cascade (escalated).
TEACHER_ROUTES = frozenset({"teacher", "fallback", "cascade"})
# Served routes whose exchanges are always stored: escalations and fallbacks are rare and what reports
# and re-distillation look at first.
ALWAYS_STORED_ROUTES = frozenset({"fallback", "cascade"})
# A version in the promotion "shadow" stage answering a sampled request that no user sees (never served).
CANDIDATE_ROUTE = "candidate"
# A request id the gateway serves under: 1-64 visible ASCII characters (the store's request_id column is
# String(64); logs and headers stay clean). The gateway replaces any other client id with its own.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,64}")


def well_formed_request_id(request_id: str) -> bool:
    return _REQUEST_ID.fullmatch(request_id) is not None


@dataclass(slots=True)
class ExchangeRecord:
    """One request answered by one model, as the gateway saw it. Never mutated once built (it is shared by
    the drift window, the store queue and the shadow queue); not `frozen=True` only because a frozen
    dataclass's __init__ costs ~3x more and one record is built per served request."""

    request_id: str
    model: str  # logical model name from config
    route: str  # which upstream answered: student | teacher | fallback | cascade | candidate (shadow stage)
    version: str  # student model version id ("base" before any re-distillation), or the teacher's model name
    endpoint: str  # "chat" | "completions"
    request: dict[str, Any]  # the request body as the client sent it (parsed JSON)
    response_text: str
    finish_reason: str | None = None
    status: int = 200
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    ttft_s: float | None = None
    # Per generated token: its logprob, and the top-k alternatives {token: logprob}, when returned.
    token_logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[dict[str, float], ...] | None = None
    slice: str = "default"
    created_at: float = field(default_factory=time.time)

    def record(self) -> ExchangeRecord:
        """Itself: an ExchangeRecord is the complete form of a ServedExchange."""
        return self


class ServedExchange(Protocol):
    """What the gateway hands the evaluator for each served request: the fields every request needs
    (counting, spend, sampling decisions) up front, and the complete ExchangeRecord on demand. The gateway
    passes a lazy implementation because most served requests are only counted: their response text and
    logprobs are assembled only when one is stored, shadowed or enters a drift comparison."""

    request_id: str
    model: str
    route: str
    status: int
    slice: str
    prompt_tokens: int | None
    completion_tokens: int | None

    def record(self) -> ExchangeRecord: ...


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """The served answer and the other model's answer to the same request, with scores."""

    served: ExchangeRecord
    shadow: ExchangeRecord
    scores: dict[str, float]  # scorer name -> value in [0, 1]
    agreed: bool  # the model's primary scorer passed its threshold

    @property
    def student(self) -> ExchangeRecord:
        return self.shadow if self.served.route in TEACHER_ROUTES else self.served

    @property
    def teacher(self) -> ExchangeRecord:
        return self.served if self.served.route in TEACHER_ROUTES else self.shadow

    @property
    def is_candidate(self) -> bool:
        """A shadow-stage version against the teacher: zero user exposure, kept out of model-wide numbers."""
        return self.student.route == CANDIDATE_ROUTE


@dataclass(frozen=True, slots=True)
class Feedback:
    """A user's verdict on one served request (ground-truth label and/or rating)."""

    request_id: str
    model: str | None
    label: str | None
    rating: float | None
    comment: str | None
    key_name: str | None
    created_at: float
