"""Reading OpenAI responses (JSON or SSE) into the evaluator's ExchangeRecord and cascade signals."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from evaluator.records import ExchangeRecord


@dataclass(slots=True)
class ParsedAnswer:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    token_logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[dict[str, float], ...] | None = None


def _chat_logprobs(lp: Any, tokens: list[float], tops: list[dict[str, float]]) -> None:
    if not isinstance(lp, dict):
        return
    for item in lp.get("content") or ():
        if not isinstance(item, dict) or not isinstance(item.get("logprob"), (int, float)):
            continue
        tokens.append(float(item["logprob"]))
        tops.append({t["token"]: float(t["logprob"]) for t in item.get("top_logprobs") or () if isinstance(t, dict) and "token" in t})


def _completion_logprobs(lp: Any, tokens: list[float], tops: list[dict[str, float]]) -> None:
    if not isinstance(lp, dict):
        return
    tokens.extend(float(x) for x in lp.get("token_logprobs") or () if isinstance(x, (int, float)))
    tops.extend({k: float(v) for k, v in d.items()} for d in lp.get("top_logprobs") or () if isinstance(d, dict))


def usage_tokens(usage: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of an OpenAI `usage` member; a count that is not an integer is None."""
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None), (completion if isinstance(completion, int) else None)


def _usage(answer: ParsedAnswer, usage: Any) -> None:
    """The counts `usage` has, set on `answer` (a later event without them keeps what an earlier one said)."""
    prompt, completion = usage_tokens(usage)
    if prompt is not None:
        answer.prompt_tokens = prompt
    if completion is not None:
        answer.completion_tokens = completion


def parse_response(doc: dict[str, Any]) -> ParsedAnswer:
    """The first choice of a non-streaming chat or completions response."""
    answer = ParsedAnswer()
    _usage(answer, doc.get("usage"))
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return answer
    choice = choices[0]
    answer.finish_reason = choice.get("finish_reason")
    tokens: list[float] = []
    tops: list[dict[str, float]] = []
    message = choice.get("message")
    if isinstance(message, dict):
        answer.text = message.get("content") or ""
        _chat_logprobs(choice.get("logprobs"), tokens, tops)
    else:
        answer.text = choice.get("text") or ""
        _completion_logprobs(choice.get("logprobs"), tokens, tops)
    if tokens:
        answer.token_logprobs = tuple(tokens)
        answer.top_logprobs = tuple(tops) if any(tops) else None
    return answer


def parse_sse(chunks: Iterable[bytes]) -> ParsedAnswer:
    """Assemble the first choice's text, finish reason, usage and logprobs from a relayed SSE stream."""
    answer = ParsedAnswer()
    parts: list[str] = []
    tokens: list[float] = []
    tops: list[dict[str, float]] = []
    # One orjson call for the whole stream (the events joined into a JSON array) instead of one per event;
    # a stream with a malformed event falls back to parsing event by event and skipping the bad ones.
    data = [line[5:].strip() for line in b"".join(chunks).split(b"\n") if line.startswith(b"data:")]
    data = [d for d in data if d and d != b"[DONE]"]
    try:
        docs = orjson.loads(b"[" + b",".join(data) + b"]")
    except orjson.JSONDecodeError:
        docs = []
        for d in data:
            try:
                docs.append(orjson.loads(d))
            except orjson.JSONDecodeError:
                continue
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        _usage(answer, doc.get("usage"))
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str):
                    parts.append(delta["content"])
                _chat_logprobs(choice.get("logprobs"), tokens, tops)
            else:
                if isinstance(choice.get("text"), str):
                    parts.append(choice["text"])
                _completion_logprobs(choice.get("logprobs"), tokens, tops)
            if choice.get("finish_reason"):
                answer.finish_reason = choice["finish_reason"]
    answer.text = "".join(parts)
    if tokens:
        answer.token_logprobs = tuple(tokens)
        answer.top_logprobs = tuple(tops) if any(tops) else None
    return answer


def answer_tokens(answer: ParsedAnswer | None, doc: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of a JSON answer: from `answer` when it was parsed already (its
    counts went through usage_tokens), else from the response document's usage."""
    if answer is not None:
        return answer.prompt_tokens, answer.completion_tokens
    return usage_tokens(doc.get("usage") if doc is not None else None)


def _last_usage(tail: bytes) -> tuple[int | None, int | None] | None:
    """The tokens of the last event in `tail` whose usage is an object; None when there is none."""
    at = tail.rfind(b'"usage"')
    while at >= 0:
        start = tail.rfind(b"data:", 0, at)
        if start < 0:
            return None  # the event began before this tail
        end = tail.find(b"\n", at)
        try:
            usage = orjson.loads(tail[start + 5:end if end >= 0 else len(tail)]).get("usage")
        except (orjson.JSONDecodeError, AttributeError):  # a malformed event, or JSON that is not an object
            usage = None
        if isinstance(usage, dict):
            return usage_tokens(usage)
        at = tail.rfind(b'"usage"', 0, start)  # `"usage"` inside a text, or `"usage": null`: look further back
    return None


def sse_usage(chunks: list[bytes]) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of a relayed stream, read from its last usage event: what every
    stream needs (metrics, token limits), at a fraction of parse_sse's cost (the text is assembled only if
    the evaluator asks). The last read nearly always holds the whole event; the last three are joined only
    when it does not."""
    if chunks:
        found = _last_usage(chunks[-1])
        if found is None and len(chunks) > 1:
            found = _last_usage(b"".join(chunks[-3:]))
        if found is not None:
            return found
    return None, None


def build_record(
    *,
    request_id: str,
    model: str,
    route: str,
    version: str,
    endpoint: str,
    request: dict[str, Any],
    answer: ParsedAnswer,
    status: int,
    latency_s: float,
    ttft_s: float | None,
    slice_name: str,
) -> ExchangeRecord:
    return ExchangeRecord(
        request_id=request_id,
        model=model,
        route=route,
        version=version,
        endpoint=endpoint,
        request=request,
        response_text=answer.text,
        finish_reason=answer.finish_reason,
        status=status,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        latency_s=latency_s,
        ttft_s=ttft_s,
        token_logprobs=answer.token_logprobs,
        top_logprobs=answer.top_logprobs,
        slice=slice_name,
    )


def mean_logprob(answer: ParsedAnswer) -> float | None:
    lp = answer.token_logprobs
    return sum(lp) / len(lp) if lp else None


class LazyExchange:
    """A served exchange for the evaluator (evaluator.records.ServedExchange): what every request is
    counted by is set now; the ExchangeRecord, with the answer's text and logprobs, is assembled only when
    `record()` is called, which most requests never are (they are counted, not stored, shadowed or compared
    for drift). The drift thread may call `record()` too; a race only builds the same record twice.

    The request and the upstream's answer are kept as the bytes that crossed the wire and parsed again in
    `record()`, not as the objects the proxy parsed them into: a drift window keeps one request in k for
    minutes, and a parsed chat request and completion are ~25 small objects scattered over the heap against
    two bytes objects here. Measured with bench/paired_cpu.py's method at 64 connections: 0.986x the CPU per
    request (two runs); more objects kept alive spread every request's live ones over more memory."""

    __slots__ = ("request_id", "model", "route", "version", "endpoint", "status", "slice", "prompt_tokens",
                 "completion_tokens", "latency_s", "ttft_s", "_request_body", "_answer", "_answer_body", "_chunks",
                 "_record")

    def __init__(self, request_id: str, model: str, route: str, version: str, endpoint: str,
                 request_body: bytes, slice_name: str, prompt_tokens: int | None, completion_tokens: int | None,
                 latency_s: float, ttft_s: float | None, answer: ParsedAnswer | None = None,
                 answer_body: bytes | None = None, chunks: list[bytes] | None = None) -> None:
        """`request_body`: the client's JSON object, as received. The answer comes as one of: `answer`
        (already parsed), `answer_body` (a JSON response's bytes) or `chunks` (a relayed SSE stream).
        Positional on purpose: built for every request, and a class called with keywords costs ~2x (CPython
        builds a kwargs dict for __init__; bench/HISTORY.md)."""
        self.request_id = request_id
        self.model = model
        self.route = route
        self.version = version
        self.endpoint = endpoint
        self.status = 200
        self.slice = slice_name
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.latency_s = latency_s
        self.ttft_s = ttft_s
        self._request_body = request_body
        self._answer = answer
        self._answer_body = answer_body
        self._chunks = chunks
        self._record: ExchangeRecord | None = None

    def record(self, request: dict[str, Any] | None = None, doc: dict[str, Any] | None = None) -> ExchangeRecord:
        """The complete record, built once. `request`, `doc`: the request and JSON answer already parsed from
        the kept bytes, from a caller that still holds them (the proxy, for exchanges every evaluator records),
        so they are not parsed a second time."""
        record = self._record
        if record is None:
            answer = self._answer
            if answer is None:
                if self._answer_body is not None:
                    answer = parse_response(doc if doc is not None else orjson.loads(self._answer_body))
                else:
                    answer = parse_sse(self._chunks) if self._chunks is not None else ParsedAnswer()
            record = self._record = build_record(
                request_id=self.request_id, model=self.model, route=self.route, version=self.version,
                endpoint=self.endpoint, request=request if request is not None else orjson.loads(self._request_body),
                answer=answer, status=self.status, latency_s=self.latency_s, ttft_s=self.ttft_s,
                slice_name=self.slice,
            )
        return record
