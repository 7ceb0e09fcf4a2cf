"""The demo's TEACHER STAND-IN: a real OpenAI-compatible HTTP server (aiohttp) that answers the demo
task correctly from the task's cue words. It is not a language model; it exists so the demo and the
tests have a teacher that is always right, fast and free.

Its top-k logprobs are expressed in the STUDENT's tokenizer (``--tokenizer``), token strings exactly as
vLLM renders them (``decode([id])``), so top-k distillation works on its answers: the right label's
tokens get most of the probability and the other labels' first tokens share the rest.

Run: ``python -m gateway.demo.teacher --port P [--model-name demo-teacher] [--tokenizer DIR]``.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from tokenizers import Tokenizer

from gateway.demo.classify import CueClassifier
from gateway.demo.task import LABELS

log = logging.getLogger("distillgate.demo.teacher")
OWNER = "distillgate-demo-teacher"
DEFAULT_NAME = "demo-teacher"


@dataclass(frozen=True, slots=True)
class TokenChoice:
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class Answer:
    label: str
    tokens: tuple[str, ...]  # the answer in student tokens (or the whole label without a tokenizer)
    chosen: tuple[TokenChoice, ...]
    alternatives: tuple[tuple[TokenChoice, ...], ...]  # per position, best first, chosen included

    @property
    def text(self) -> str:
        return "".join(self.tokens)


class TeacherModel:
    """Classifies a ticket and spells the answer, with top-k alternatives, in the student's tokens."""

    def __init__(self, tokenizer: Tokenizer | None = None, classifier: CueClassifier | None = None) -> None:
        self.tokenizer = tokenizer
        self.classifier = classifier or CueClassifier()
        self._filler: list[str] = []
        if tokenizer is not None:
            # Padding for top-k beyond the labels: ordinary vocabulary pieces with negligible mass.
            vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            self._filler = [tokenizer.decode([i]) for _, i in vocab if not _.startswith("<")][:64]

    def _spell(self, text: str) -> list[str]:
        if self.tokenizer is None:
            return [text]
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.tokenizer.decode([i]) for i in ids]

    def answer(self, prompt_text: str, max_tokens: int | None, top_k: int) -> tuple[Answer, str]:
        """The answer (cut at max_tokens) and its finish reason ("stop" or "length")."""
        scores = self.classifier.scores(prompt_text)
        label = self.classifier.classify(prompt_text)
        best = scores.get(label, 0)
        runner_up = max((v for k, v in scores.items() if k != label), default=0)
        # A clear win gets ~0.95, a narrow one less: the KD targets carry the teacher's certainty.
        p_right = 0.8 + 0.15 * min(1.0, (best - runner_up) / 2) if best else 0.5
        others = [lab for lab in LABELS if lab != label]
        weights = [1.0 + scores.get(lab, 0) for lab in others]
        total_w = sum(weights)

        tokens = self._spell(label)
        firsts = {lab: self._spell(lab)[0] for lab in others}
        chosen: list[TokenChoice] = []
        alts: list[tuple[TokenChoice, ...]] = []
        for pos, tok in enumerate(tokens):
            if pos == 0:
                mass = {tok: p_right}
                for lab, w in zip(others, weights):
                    first = firsts[lab]
                    if first != tok:
                        mass[first] = mass.get(first, 0.0) + (1 - p_right) * w / total_w
            else:
                mass = {tok: 0.99}
            rest = 1.0 - sum(mass.values())
            for filler in self._filler:
                if len(mass) >= max(top_k, 1):
                    break
                if filler not in mass:
                    mass[filler] = max(rest, 1e-6) * 1e-3
            ranked = sorted(mass.items(), key=lambda kv: -kv[1])
            choices = tuple(TokenChoice(t, math.log(p)) for t, p in ranked)
            chosen.append(TokenChoice(tok, math.log(mass[tok])))
            alts.append(choices[: max(top_k, 1)])
        finish = "stop"
        if max_tokens is not None and max_tokens < len(tokens):
            tokens, chosen, alts, finish = tokens[:max_tokens], chosen[:max_tokens], alts[:max_tokens], "length"
        return Answer(label, tuple(tokens), tuple(chosen), tuple(alts)), finish

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return max(1, len(text.split()))
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)


# --- HTTP ---------------------------------------------------------------------------------------------


class RequestError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status, dumps=lambda o: orjson.dumps(o).decode())


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _token_entry(choice: TokenChoice) -> dict[str, Any]:
    return {"token": choice.token, "logprob": choice.logprob, "bytes": list(choice.token.encode())}


def _chat_logprobs(answer: Answer, positions: Sequence[int], top_k: int) -> dict[str, Any]:
    return {
        "content": [
            {**_token_entry(answer.chosen[i]), "top_logprobs": [_token_entry(c) for c in answer.alternatives[i][:top_k]]}
            for i in positions
        ]
    }


def _message_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    parts: list[str] = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise RequestError(400, "each message needs a 'role' and 'content'", param="messages")
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    if not parts:
        raise RequestError(400, "no user message to answer", param="messages")
    return parts[-1]


class TeacherServer:
    """The aiohttp application around a TeacherModel."""

    def __init__(self, model: TeacherModel, served_name: str = DEFAULT_NAME, *, latency_s: float = 0.0) -> None:
        self.model = model
        self.served_name = served_name
        self.latency_s = latency_s
        self.requests = 0
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            return exc.response()
        except web.HTTPNotFound:
            return RequestError(404, f"no route {request.path}", code="not_found").response()
        except web.HTTPMethodNotAllowed:
            return RequestError(405, f"{request.method} not allowed on {request.path}").response()

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [
            {"id": self.served_name, "object": "model", "created": self.created, "owned_by": OWNER}
        ]})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object")
        if body.get("model") != self.served_name:
            raise RequestError(404, f"The model `{body.get('model')}` does not exist; this teacher stand-in serves "
                               f"`{self.served_name}`", param="model", code="model_not_found")
        self.requests += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return body

    @staticmethod
    def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
        value = body.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise RequestError(400, f"'{name}' must be an integer in [{lo}, {hi}]", param=name)
        return value

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt = _message_text(body.get("messages"))
        want_logprobs = bool(body.get("logprobs"))
        top_k = self._int(body, "top_logprobs", 0, 0, 20) or 0
        max_tokens = self._int(body, "max_completion_tokens", None, 1, 1 << 20) or self._int(body, "max_tokens", None, 1, 1 << 20)
        answer, finish = self.model.answer(prompt, max_tokens, top_k)
        prompt_tokens = self.model.count_tokens(" ".join(str(m.get("content", "")) for m in body["messages"]))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer.tokens),
                 "total_tokens": prompt_tokens + len(answer.tokens)}
        rid, created = f"chatcmpl-teacher-{uuid.uuid4().hex[:16]}", int(time.time())
        log.info("chat %s -> %s", rid, answer.label)
        if body.get("stream"):
            return await self._stream_chat(request, body, answer, finish, usage, rid, created, want_logprobs, top_k)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "logprobs": _chat_logprobs(answer, range(len(answer.tokens)), top_k) if want_logprobs else None,
            "finish_reason": finish,
        }
        return _json({"id": rid, "object": "chat.completion", "created": created, "model": self.served_name,
                      "choices": [choice], "usage": usage, "system_fingerprint": OWNER})

    async def _stream_chat(self, request: web.Request, body: dict[str, Any], answer: Answer, finish: str,
                           usage: dict[str, int], rid: str, created: int, want_logprobs: bool, top_k: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> None:
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.served_name,
                     "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await send({"role": "assistant", "content": ""})
        for i, tok in enumerate(answer.tokens):
            await send({"content": tok}, logprobs=_chat_logprobs(answer, [i], top_k) if want_logprobs else None)
        await send({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.served_name,
                    "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps(tail) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def completions(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(400, "'prompt' must be a string", param="prompt")
        if body.get("stream"):
            raise RequestError(400, "streaming is not supported on /v1/completions by the teacher stand-in", param="stream")
        top_k = self._int(body, "logprobs", None, 0, 20)
        answer, finish = self.model.answer(prompt, self._int(body, "max_tokens", 16, 1, 1 << 20), top_k or 0)
        logprobs = None
        if top_k is not None:
            offsets, pos = [], 0
            for t in answer.tokens:
                offsets.append(pos)
                pos += len(t)
            logprobs = {
                "tokens": list(answer.tokens),
                "token_logprobs": [c.logprob for c in answer.chosen],
                "top_logprobs": [{c.token: c.logprob for c in alts[:top_k]} for alts in answer.alternatives],
                "text_offset": offsets,
            }
        prompt_tokens = self.model.count_tokens(prompt)
        return _json({
            "id": f"cmpl-teacher-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()),
            "model": self.served_name,
            "choices": [{"index": 0, "text": answer.text, "logprobs": logprobs, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer.tokens),
                      "total_tokens": prompt_tokens + len(answer.tokens)},
        })


def load_tokenizer(model_or_tokenizer_dir: str | Path | None) -> Tokenizer | None:
    if model_or_tokenizer_dir is None:
        return None
    path = Path(model_or_tokenizer_dir)
    return Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="distillgate demo teacher stand-in (cue-word rules, not an LLM)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-name", default=DEFAULT_NAME)
    parser.add_argument("--tokenizer", help="the student's model or tokenizer dir: logprobs in its tokens")
    parser.add_argument("--latency-s", type=float, default=0.0, help="added delay per request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s demo-teacher %(levelname)s %(message)s")
    server = TeacherServer(TeacherModel(load_tokenizer(args.tokenizer)), args.model_name, latency_s=args.latency_s)
    log.info("distillgate DEMO TEACHER STAND-IN serving %r on http://%s:%d/v1 (tokenizer: %s)",
             args.model_name, args.host, args.port, args.tokenizer or "none")
    web.run_app(server.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
