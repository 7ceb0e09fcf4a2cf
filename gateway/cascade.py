"""Cascade: answer with the student, escalate to the teacher when the student looks unsure.

The student is asked for token logprobs (non-streaming requests only); the answer escalates when the
mean or the minimum token logprob is under its threshold, or when the JSON validator rejects the text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import CascadeSettings
from gateway.exchange import ParsedAnswer, mean_logprob


@dataclass(frozen=True, slots=True)
class CascadeVerdict:
    escalate: bool
    confidence: float | None  # mean token logprob of the student's answer
    reason: str  # "ok" | "low_mean_logprob" | "low_token_logprob" | "invalid_json" | "no_logprobs"


class CascadePolicy:
    def __init__(self, settings: CascadeSettings) -> None:
        self.settings = settings

    def applies(self, stream: bool) -> bool:
        return self.settings.enabled and not stream

    def student_payload(self, payload: dict[str, Any], endpoint: str) -> dict[str, Any]:
        """The request for the student, with logprobs turned on (the client's own values kept if larger)."""
        out = dict(payload)
        k = self.settings.top_logprobs
        if endpoint == "chat":
            out["logprobs"] = True
            client = payload.get("top_logprobs")
            if _is_int(client):
                out["top_logprobs"] = max(k, client)
            elif client is None and k:
                out["top_logprobs"] = k
            # else: a malformed top_logprobs is forwarded as sent, so the upstream's 400 answers it
        else:
            client = payload.get("logprobs")
            out["logprobs"] = max(k, client if _is_int(client) else 0)
        return out

    def check(self, answer: ParsedAnswer) -> CascadeVerdict:
        s = self.settings
        confidence = mean_logprob(answer)
        if s.validator == "json":
            try:
                orjson.loads(answer.text)
            except orjson.JSONDecodeError:
                return CascadeVerdict(True, confidence, "invalid_json")
        if s.min_mean_logprob is not None or s.min_token_logprob is not None:
            if confidence is None:
                return CascadeVerdict(True, None, "no_logprobs")
            if s.min_mean_logprob is not None and confidence < s.min_mean_logprob:
                return CascadeVerdict(True, confidence, "low_mean_logprob")
            if s.min_token_logprob is not None and min(answer.token_logprobs or (0.0,)) < s.min_token_logprob:
                return CascadeVerdict(True, confidence, "low_token_logprob")
        return CascadeVerdict(False, confidence, "ok")

    @staticmethod
    def strip_logprobs(doc: dict[str, Any], client_payload: dict[str, Any]) -> bool:
        """Remove logprobs the client did not ask for; True when the document changed."""
        if client_payload.get("logprobs"):
            return False
        changed = False
        for choice in doc.get("choices") or ():
            if isinstance(choice, dict) and choice.get("logprobs") is not None:
                choice["logprobs"] = None
                changed = True
        return changed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
