"""A REAL HTTP fake of an OpenAI-compatible upstream (aiohttp.web on 127.0.0.1, port 0, own thread).

    with FakeOpenAI(answer="positive") as up:        # up.url == "http://127.0.0.1:PORT/v1"
        ... point an upstream's base_url at up.url ...
        up.mode = "fail"                              # switch behaviour at any time
        assert up.requests[-1]["model"] == "student"  # every JSON body received, in order

Behaviour (attributes, change them while it runs):
  answer / answers   reply text; `answers` maps prompt -> text (dict) or is a callable(prompt) -> text,
                     falling back to `answer`. The prompt is the last user message (chat) or `prompt`.
  logprob            per-token logprob (float, or callable(prompt) -> float); top_logprobs alternatives
                     get logprob - 1, - 2, ...
  mode               "normal" | "fail" (500) | "drop" (close the connection, no response) |
                     "garbage" (200 with a non-JSON body) | "status" (`status` with OpenAI error JSON) |
                     "status_html" (`status` with an HTML page, as a proxy in front of a server may send)
  status             the status for mode "status" (e.g. 400, 404, 429)
  fail_next          the next N requests behave as `fail_mode` (default "fail"), then `mode` again
  delay_s            wait before answering (slow upstream; also before stream headers)
  stream_delay_s     wait between SSE chunks
  stream_cut_after   drop the connection after this many SSE chunks (a mid-stream failure)
  linger_after_done_s  keep the stream open this long after `data: [DONE]` before ending it
  created            fixed `created` timestamp (None: now), so two answers can be compared byte for byte
  null_usage         as OpenAI does under include_usage: every chunk but the usage one gets "usage": null
  set_cookie         a Set-Cookie value added to every response (as a load balancer's affinity cookie)
Streaming (`"stream": true`): one chunk per word, a final chunk with finish_reason, a usage chunk when
`stream_options.include_usage`, then `data: [DONE]`. When the client goes away mid-stream,
`stream_disconnects` is incremented and the `stream_closed` event is set; when it goes away during
`delay_s`, `abandoned` is incremented and `abandoned_event` set.
Tokens are whitespace-separated words: usage.completion_tokens == len(answer.split()).
Like vLLM, an integer `max_tokens` < 1, `n` outside 1..128 or a `top_logprobs` that is not an integer in
0..20 is answered 400 with OpenAI error JSON.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

Answers = Mapping[str, str] | Callable[[str], str] | None


def prompt_of(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                content = m.get("content")
                return content if isinstance(content, str) else str(content)
        return ""
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else str(prompt)


class FakeOpenAI:
    def __init__(
        self,
        *,
        answer: str = "hello from the fake",
        answers: Answers = None,
        logprob: float | Callable[[str], float] = -0.1,
        delay_s: float = 0.0,
        stream_delay_s: float = 0.0,
        mode: str = "normal",
        status: int = 400,
    ) -> None:
        self.answer = answer
        self.answers = answers
        self.logprob = logprob
        self.delay_s = delay_s
        self.stream_delay_s = stream_delay_s
        self.mode = mode
        self.status = status
        self.stream_cut_after: int | None = None
        self.created: int | None = None
        self.linger_after_done_s = 0.0
        self.null_usage = False
        self.set_cookie: str | None = None
        self.fail_next = 0
        self.fail_mode = "fail"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.stream_disconnects = 0
        self.peers: list[Any] = []  # the client (host, port) of each chat request: which connection carried it
        self.stream_closed = threading.Event()
        self.abandoned = 0  # requests whose client left during delay_s
        self.abandoned_event = threading.Event()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    async def _serve(self) -> None:
        app = web.Application()
        app.on_response_prepare.append(self._add_cookie)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _add_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.set_cookie is not None:
            response.headers["set-cookie"] = self.set_cookie

    # ---- behaviour ----------------------------------------------------------------------------

    def _answer_for(self, prompt: str) -> str:
        if callable(self.answers):
            return self.answers(prompt)
        if isinstance(self.answers, Mapping) and prompt in self.answers:
            return self.answers[prompt]
        return self.answer

    def _logprob_for(self, prompt: str) -> float:
        return self.logprob(prompt) if callable(self.logprob) else float(self.logprob)

    async def _delay(self, request: web.Request, seconds: float) -> None:
        """Waits `seconds` before answering, as a model server generates; a client that leaves meanwhile is
        counted in `abandoned` (and `abandoned_event` set), as vLLM aborts such a request."""
        until = time.monotonic() + seconds
        try:
            while (left := until - time.monotonic()) > 0:
                await asyncio.sleep(min(0.02, left))
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("client went away before the answer")
        except (ConnectionResetError, asyncio.CancelledError):
            self.abandoned += 1
            self.abandoned_event.set()
            raise

    async def _misbehave(self, request: web.Request) -> tuple[web.StreamResponse | None, dict[str, Any]]:
        body = await request.read()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = {"_raw": body.decode(errors="replace")}
        self.requests.append(parsed)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if self.delay_s:
            await self._delay(request, self.delay_s)
        mode = self.mode
        if self.fail_next > 0:
            self.fail_next -= 1
            mode = self.fail_mode
        if mode == "fail":
            return _error(500, "fake upstream failure", "server_error"), parsed
        if mode == "drop":
            request.transport.abort()
            raise ConnectionResetError("fake upstream dropped the connection")
        if mode == "garbage":
            return web.Response(body=b"<html>certainly not json", content_type="application/json"), parsed
        if mode == "status":
            return _error(self.status, f"fake upstream says {self.status}", "invalid_request_error"), parsed
        if mode == "status_html":
            return web.Response(status=self.status, body=b"<html>bad gateway</html>", content_type="text/html"), parsed
        for field, low, high in (("max_tokens", 1, None), ("n", 1, 128), ("top_logprobs", 0, 20)):
            value = parsed.get(field) if isinstance(parsed, dict) else None
            if field == "top_logprobs" and value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return _error(400, "top_logprobs must be an integer", "invalid_request_error"), parsed
            if isinstance(value, int) and not isinstance(value, bool) and (value < low or (high and value > high)):
                return _error(400, f"{field} must be at least {low}" + (f" and at most {high}" if high else ""),
                              "invalid_request_error"), parsed
        return None, parsed

    def _tokens(self, text: str) -> list[str]:
        words = text.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

    def _token_logprobs(self, tokens: list[str], lp: float, k: int) -> list[dict[str, Any]]:
        return [
            {"token": t, "logprob": lp, "bytes": list(t.encode()),
             "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}]
             + [{"token": f"alt{j}", "logprob": lp - j, "bytes": list(f"alt{j}".encode())} for j in range(1, k)]}
            for t in tokens
        ]

    def _reply(self, body: dict[str, Any], id_: str) -> tuple[str, list[str], float, dict[str, int], dict[str, Any]]:
        """(text, tokens, logprob, usage, common response fields) for a request body."""
        prompt = prompt_of(body)
        text = self._answer_for(prompt)
        tokens = self._tokens(text)
        n_prompt = len(prompt.split())
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(tokens), "total_tokens": n_prompt + len(tokens)}
        base = {"id": id_, "created": int(time.time()) if self.created is None else self.created, "model": body.get("model")}
        return text, tokens, self._logprob_for(prompt), usage, base

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.peers.append(request.transport.get_extra_info("peername") if request.transport is not None else None)
        bad, body = await self._misbehave(request)
        if bad is not None:
            return bad
        text, tokens, lp, usage, base = self._reply(body, "chatcmpl-fake")
        want_lp = bool(body.get("logprobs"))
        k = int(body.get("top_logprobs") or 0)
        if body.get("stream"):
            chunks = []
            for i, t in enumerate(tokens):
                delta = {"role": "assistant", "content": t} if i == 0 else {"content": t}
                chunks.append({**base, "object": "chat.completion.chunk", "choices": [{
                    "index": 0, "delta": delta, "finish_reason": None,
                    "logprobs": {"content": self._token_logprobs([t], lp, k)} if want_lp else None}]})
            chunks.append({**base, "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]})
            return await self._stream(request, body, chunks, usage, base, "chat.completion.chunk")
        doc = {**base, "object": "chat.completion", "usage": usage, "choices": [{
            "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text},
            "logprobs": {"content": self._token_logprobs(tokens, lp, k)} if want_lp else None}]}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        bad, body = await self._misbehave(request)
        if bad is not None:
            return bad
        text, tokens, lp, usage, base = self._reply(body, "cmpl-fake")
        n_lp = body.get("logprobs")
        want_lp = isinstance(n_lp, int) and not isinstance(n_lp, bool)

        def logprobs(toks: list[str]) -> dict[str, Any] | None:
            if not want_lp:
                return None
            return {"tokens": toks, "token_logprobs": [lp] * len(toks), "text_offset": [0] * len(toks),
                    "top_logprobs": [{t: lp, **{f"alt{j}": lp - j for j in range(1, n_lp)}} for t in toks]}

        if body.get("stream"):
            chunks = [{**base, "object": "text_completion", "choices": [
                {"index": 0, "text": t, "finish_reason": None, "logprobs": logprobs([t])}]} for t in tokens]
            chunks.append({**base, "object": "text_completion",
                           "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]})
            return await self._stream(request, body, chunks, usage, base, "text_completion")
        doc = {**base, "object": "text_completion", "usage": usage, "choices": [
            {"index": 0, "text": text, "finish_reason": "stop", "logprobs": logprobs(tokens)}]}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def _stream(self, request: web.Request, body: dict[str, Any], chunks: list[dict[str, Any]],
                      usage: dict[str, int], base: dict[str, Any], obj: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage"):
            if self.null_usage:
                chunks = [{**c, "usage": None} for c in chunks]
            chunks = chunks + [{**base, "object": obj, "choices": [], "usage": usage}]
        try:
            for i, chunk in enumerate(chunks):
                if self.stream_cut_after is not None and i == self.stream_cut_after:
                    request.transport.abort()
                    return resp
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if self.stream_delay_s:
                    await asyncio.sleep(self.stream_delay_s)
            await resp.write(b"data: [DONE]\n\n")
            linger_until = time.monotonic() + self.linger_after_done_s
            while time.monotonic() < linger_until:
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("client went away after [DONE]")
                await asyncio.sleep(0.02)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.stream_disconnects += 1
            self.stream_closed.set()
            raise
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        bad, body = await self._misbehave(request)
        if bad is not None:
            return bad
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(str(x))), 0.5, -0.5]} for i, x in enumerate(inputs)]
        doc = {"object": "list", "data": data, "model": body.get("model"), "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        if self.mode in ("fail", "drop"):
            return _error(500, "fake upstream failure", "server_error")
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


def _error(status: int, message: str, type_: str) -> web.Response:
    return web.Response(status=status, content_type="application/json", body=orjson.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": None}}))
