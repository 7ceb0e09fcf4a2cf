"""A deliberately minimal OpenAI-compatible upstream for benchmarks: raw asyncio protocol, no framework.

It answers every POST at once with a fixed chat completion (or an SSE stream when the body asks for
`"stream": true`), so what a benchmark measures is the proxy in front of it, not this server.
Per-request behaviour rides in the prompt text, because every proxy under test forwards the messages
unchanged while few forward custom headers or query strings:
  [[delay=50]]  wait 50 ms before answering      [[gap=5]]  wait 5 ms between SSE chunks

    python bench/fake_upstream.py --port 9000 [--delay-ms 0] [--chunks 8]
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time

_DIRECTIVE = re.compile(rb"\[\[(delay|gap)=(\d+)\]\]")
_STREAM = re.compile(rb'"stream"\s*:\s*true')

_COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-upstream",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"billing"},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}'
)
_JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(_COMPLETION)
)
_SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
_MODELS = b'{"object":"list","data":[{"id":"bench-upstream","object":"model","owned_by":"bench"}]}'
_MODELS_RESP = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(_MODELS), _MODELS)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse_events(n_tokens: int) -> list[bytes]:
    base = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-upstream","choices":[%s]%s}'
    events = [base % (b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}', b"")]
    for i in range(n_tokens):
        events.append(base % (b'{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}' % i, b""))
    events.append(base % (b'{"index":0,"delta":{},"finish_reason":"stop"}', b""))
    events.append(base % (b"", b',"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}' % (n_tokens, 12 + n_tokens)))
    return [_chunk(b"data: " + e + b"\n\n") for e in events] + [_chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]


class _Upstream(asyncio.Protocol):
    """One keep-alive connection: parse request head + body (content-length or chunked), answer."""

    def __init__(self, default_delay_ms: int, sse: list[bytes]) -> None:
        self._buf = bytearray()
        self._delay_ms = default_delay_ms
        self._sse = sse
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._process()

    def _process(self) -> None:
        while self._transport is not None and not self._busy:
            parsed = self._take_request()
            if parsed is None:
                return
            method, head, body = parsed
            if method != b"POST":
                self._transport.write(_MODELS_RESP)
                continue
            found = dict(_DIRECTIVE.findall(body))
            delay = int(found.get(b"delay", self._delay_ms))
            gap = int(found.get(b"gap", 0))
            stream = _STREAM.search(body) is not None
            close = b"connection: close" in head.lower()
            if delay == 0 and (not stream or gap == 0):
                self._answer_now(stream)
                if close:
                    self._transport.close()
                continue
            self._busy = True
            asyncio.get_running_loop().create_task(self._answer_later(stream, delay, gap, close))

    def _answer_now(self, stream: bool) -> None:
        assert self._transport is not None
        if stream:
            self._transport.write(_SSE_HEAD + b"".join(self._sse))
        else:
            self._transport.write(_JSON_HEAD + _COMPLETION)

    async def _answer_later(self, stream: bool, delay_ms: int, gap_ms: int, close: bool) -> None:
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if self._transport is None:
            return
        if not stream:
            self._transport.write(_JSON_HEAD + _COMPLETION)
        else:
            self._transport.write(_SSE_HEAD + self._sse[0])
            for piece in self._sse[1:]:
                if gap_ms:
                    await asyncio.sleep(gap_ms / 1000)
                if self._transport is None:
                    return
                self._transport.write(piece)
        if close and self._transport is not None:
            self._transport.close()
        self._busy = False
        self._process()

    def _take_request(self) -> tuple[bytes, bytes, bytes] | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self._buf[:end])
        lower = head.lower()
        start = end + 4
        method = head.split(b" ", 1)[0]
        i = lower.find(b"content-length:")
        if i >= 0:
            line_end = lower.find(b"\r\n", i)
            length = int(lower[i + 15 : line_end if line_end > 0 else None])
            if len(self._buf) < start + length:
                return None
            body = bytes(self._buf[start : start + length])
            del self._buf[: start + length]
            return method, head, body
        if b"transfer-encoding: chunked" in lower:
            body = bytearray()
            pos = start
            while True:
                line_end = self._buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(bytes(self._buf[pos:line_end]).split(b";")[0], 16)
                if len(self._buf) < line_end + 2 + size + 2:
                    return None
                body += self._buf[line_end + 2 : line_end + 2 + size]
                pos = line_end + 2 + size + 2
                if size == 0:
                    break
            del self._buf[:pos]
            return method, head, bytes(body)
        del self._buf[:start]
        return method, head, b""


async def serve(host: str, port: int, delay_ms: int, chunks: int, ready_line: bool = True) -> None:
    sse = _sse_events(chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Upstream(delay_ms, sse), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_line:
        print(f"fake upstream ready on {host}:{server.sockets[0].getsockname()[1]} at {time.time():.0f}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=int, default=0, help="default delay before every answer")
    parser.add_argument("--chunks", type=int, default=8, help="content tokens per SSE stream")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio still works, just slower
        pass
    asyncio.run(serve(args.host, args.port, args.delay_ms, args.chunks))


if __name__ == "__main__":
    main()
