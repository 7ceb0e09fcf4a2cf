"""Clients for upstream model servers behind one small interface.

`OpenAIUpstream` speaks HTTP to any OpenAI-compatible server (vLLM, OpenAI, ...) with one pooled aiohttp
session; `LiteLLMUpstream` calls other providers through `litellm` and normalises their answers to
OpenAI JSON / SSE bytes. Both raise the typed errors of gateway.errors, never aiohttp's or litellm's.
"""
from __future__ import annotations

import asyncio
from asyncio import current_task
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from time import perf_counter
from typing import Any, Protocol

import aiohttp
import orjson
from yarl import URL

from gateway.config import UpstreamSettings
from gateway.delayed_calls import TaskDeadlines
from gateway.errors import UpstreamConnectError, UpstreamStatus, UpstreamTimeout


def _user_agent() -> str:
    try:
        return "distillgate/" + _version("distillgate")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "distillgate"


USER_AGENT = _user_agent()
ENDPOINT_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}


@dataclass(slots=True)
class UpstreamReply:
    """A complete non-streaming 200 answer."""

    body: bytes
    content_type: bytes


class UpstreamStream(Protocol):
    content_type: bytes

    def chunks(self) -> AsyncIterator[bytes]: ...
    def close(self) -> None: ...


class Upstream(Protocol):
    """`post` and `open_stream` get the request twice: `body`, the bytes an HTTP upstream sends as they are
    (request_body: the upstream's model name in it), and `payload`, the parsed request for upstreams that
    build their own call (litellm); its `model` is the client's logical name, not the upstream's."""

    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def post(self, endpoint: str, body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> UpstreamReply: ...
    async def open_stream(self, endpoint: str, body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> UpstreamStream: ...
    async def probe(self) -> bool: ...


def request_body(payload: dict[str, Any], model: str) -> bytes:
    """`payload` as the JSON bytes sent to an upstream that serves `model` (its `model` member replaced), in
    an allocation of their own size.

    The member is swapped in the caller's dict for the serialisation only, not in a copy: the proxy forwards
    the client's own payload, which stays what the evaluator records, and a copy per request would be one
    more object alive for the whole upstream call. orjson returns its output in the buffer it wrote it to:
    len() is the JSON's, but the allocation stays 4 KiB (from malloc, not Python's small-object pool). A
    forwarded body lives as long as its upstream call, so with many calls in flight those buffers spread the
    process's working set over more memory; the copy costs ~0.1 us and measured ~2 % less CPU a request at
    64 connections (bench/paired_cpu.py's method).
    """
    client_model = payload["model"]
    payload["model"] = model
    try:
        return bytes(memoryview(orjson.dumps(payload)))
    finally:
        payload["model"] = client_model


def _translate(exc: BaseException, name: str) -> Exception:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return UpstreamTimeout(f"upstream {name!r} timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"cannot connect to upstream {name!r}")
    return UpstreamConnectError(f"upstream {name!r} failed: {type(exc).__name__}")


class _AiohttpStream:
    """Its own async iterator over the response body's reads (one coroutine per read, no generator layers)."""

    __slots__ = ("_resp", "_content", "content_type", "_name")

    def __init__(self, resp: aiohttp.ClientResponse, name: str) -> None:
        self._resp = resp
        self._content = resp.content
        self._name = name
        self.content_type = resp.headers.get("content-type", "text/event-stream").encode()

    def chunks(self) -> AsyncIterator[bytes]:
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            data = await self._content.readany()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _translate(exc, self._name) from None
        if not data:
            raise StopAsyncIteration
        return data

    def close(self) -> None:
        # close(), not release(): an unfinished stream must drop the connection so the upstream stops. A stream
        # read to its end has already handed its connection back to the pool (aiohttp does on EOF).
        self._resp.close()


class OpenAIUpstream:
    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        self.name = name
        self.settings = settings
        self.base_url = (settings.base_url or "").rstrip("/")
        t = settings.timeouts
        # First byte: our own deadline (see _send), not aiohttp's sock_read, which arms and cancels a loop
        # timer on every read of every response; the session's timeouts are connect and total.
        self._timeout = aiohttp.ClientTimeout(total=t.total_s, sock_connect=t.connect_s)
        self._first_byte = TaskDeadlines(t.first_byte_s)
        self._probe_timeout = aiohttp.ClientTimeout(total=min(2.0, t.total_s), sock_connect=t.connect_s)
        key = settings.api_key()
        # Our own User-Agent: with one set, aiohttp adds no default one (skip_auto_headers would cost a header
        # copy and merge on every request).
        self._base_headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        if key:
            self._base_headers["authorization"] = f"Bearer {key}"
        # Built once: given a str, aiohttp builds a URL object from it on every request.
        self._urls = {endpoint: URL(self.base_url + path) for endpoint, path in ENDPOINT_PATHS.items()} if self.base_url else {}
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._first_byte.bind(asyncio.get_running_loop())  # the session's loop
        connector = aiohttp.TCPConnector(limit=self.settings.max_connections, keepalive_timeout=30.0, ttl_dns_cache=300)
        # No cookie jar: an upstream is an API, not a browser session, and this one session carries every
        # request. A load balancer's affinity cookie (ingress-nginx, AWS ALB) in front of several vLLM replicas
        # would otherwise pin all of the gateway's traffic to the replica that set it.
        self.session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._base_headers,
                                             cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _send(self, endpoint: str, body: bytes, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """The response once its headers are in, within first_byte_s: our own deadline, not aiohttp's sock_read
        (gateway.delayed_calls: one loop timer for all requests). A cancellation by anything else stays one."""
        deadlines = self._first_byte
        task = current_task(deadlines.loop)
        if task is None or deadlines.timer is None:
            key = deadlines.add(perf_counter())
        else:
            key = id(task)
            deadlines.pending[key] = (perf_counter(), task)
        try:
            return await self.session.post(self._urls[endpoint], data=body, headers=headers)
        except asyncio.CancelledError:
            if not deadlines.claim(key):  # un-cancelled when it was the deadline: the caller goes on (fallback)
                raise
            raise UpstreamTimeout(f"upstream {self.name!r} sent nothing within {deadlines.after_s:g} s") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _translate(exc, self.name) from None
        finally:
            deadlines.pending.pop(key, None)

    async def post(self, endpoint: str, body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> UpstreamReply:
        resp = await self._send(endpoint, body, headers)
        try:
            async with resp:
                data = await resp.read()
                ctype = resp.headers.get("content-type", "application/json").encode()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _translate(exc, self.name) from None
        if status != 200:
            raise UpstreamStatus(status, data, ctype)
        return UpstreamReply(data, ctype)

    async def open_stream(self, endpoint: str, body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> UpstreamStream:
        resp = await self._send(endpoint, body, headers)
        if resp.status != 200:
            try:
                data = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                data = b""
            finally:
                resp.release()
            raise UpstreamStatus(resp.status, data, resp.headers.get("content-type", "application/json").encode())
        return _AiohttpStream(resp, self.name)

    async def probe(self) -> bool:
        try:
            async with self.session.get(self.base_url + "/models", timeout=self._probe_timeout) as resp:
                await resp.read()
                return resp.status < 500
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False


class _LiteLLMStream:
    content_type = b"text/event-stream"

    def __init__(self, source: Any, name: str) -> None:
        self._source = source
        self._name = name
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._source:
                if self._closed:
                    return
                yield b"data: " + orjson.dumps(chunk.model_dump(exclude_none=True)) + b"\n\n"
        except Exception as exc:  # litellm raises its own zoo; the client gets a typed error
            raise _litellm_error(exc, self._name) from None
        yield b"data: [DONE]\n\n"

    def close(self) -> None:
        self._closed = True
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            asyncio.ensure_future(aclose())


def _litellm_error(exc: BaseException, name: str) -> Exception:
    status = getattr(exc, "status_code", None)
    text = str(exc)
    if "Timeout" in type(exc).__name__ or isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return UpstreamTimeout(f"upstream {name!r} timed out")
    if not isinstance(status, int) or "APIConnectionError" in type(exc).__name__:
        return UpstreamConnectError(f"upstream {name!r} failed: {type(exc).__name__}")
    body = orjson.dumps({"error": {"message": text, "type": "upstream_error", "param": None, "code": None}})
    return UpstreamStatus(status, body)


class LiteLLMUpstream:
    """Other providers through litellm; `model` in the payload is replaced by `litellm_model`."""

    _SKIP = frozenset({"model", "stream"})

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        self.name = name
        self.settings = settings
        self._litellm: Any = None

    async def start(self) -> None:
        import litellm  # slow to import: only when a litellm upstream is configured

        self._litellm = litellm

    async def close(self) -> None:
        return None

    def _kwargs(self, payload: dict[str, Any]) -> dict[str, Any]:
        kw = {k: v for k, v in payload.items() if k not in self._SKIP}
        kw["model"] = self.settings.litellm_model
        kw["timeout"] = self.settings.timeouts.total_s
        if self.settings.base_url:
            kw["api_base"] = self.settings.base_url
        key = self.settings.api_key()
        if key:
            kw["api_key"] = key
        return kw

    async def _call(self, endpoint: str, payload: dict[str, Any], stream: bool) -> Any:
        lit = self._litellm
        kw = self._kwargs(payload)
        fn = {"chat": lit.acompletion, "completions": lit.atext_completion, "embeddings": lit.aembedding}[endpoint]
        if stream:
            kw["stream"] = True
        try:
            return await fn(**kw)
        except Exception as exc:
            raise _litellm_error(exc, self.name) from None

    async def post(self, endpoint: str, body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> UpstreamReply:
        result = await self._call(endpoint, payload, stream=False)
        return UpstreamReply(orjson.dumps(result.model_dump(exclude_none=True)), b"application/json")

    async def open_stream(self, endpoint: str, body: bytes, payload: dict[str, Any], headers: Mapping[str, str]) -> UpstreamStream:
        return _LiteLLMStream(await self._call(endpoint, payload, stream=True), self.name)

    async def probe(self) -> bool:
        return self._litellm is not None


def build_upstream(name: str, settings: UpstreamSettings) -> Upstream:
    return OpenAIUpstream(name, settings) if settings.kind == "openai" else LiteLLMUpstream(name, settings)
