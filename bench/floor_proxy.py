"""The pass-through floor: the least a Python proxy can do per request (raw ASGI + one pooled aiohttp session).

No auth, routing, metrics or parsing: bytes in, bytes out. The gateway's overhead is judged against this.
Same GC tuning the gateway is expected to use (MACHINE-FACTS: gc.freeze + high gen-0 threshold), so the
ratio compares request work, not collector settings.

    FLOOR_UPSTREAM=http://127.0.0.1:9000 uvicorn bench.floor_proxy:app --loop uvloop --http httptools
"""
from __future__ import annotations

import gc
import os

import aiohttp

_FORWARDED = (b"content-type", b"authorization", b"accept")


class FloorProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - raw ASGI
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in _FORWARDED}
        assert self.session is not None
        async with self.session.request(scope["method"], self.upstream + scope["path"], data=body, headers=headers) as resp:
            out = [(b"content-type", resp.headers.get("content-type", "application/json").encode())]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            if resp.content_type == "text/event-stream":
                async for piece in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": await resp.read()})

    async def _lifespan(self, receive, send) -> None:  # noqa: ANN001
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
                gc.freeze()
                gc.set_threshold(50_000, 50, 1000)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = FloorProxy(os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:9000"))
