"""Instructions per request of distillgate's own hot-path code, counted by valgrind: deterministic, unlike
CPU time on a shared 2-vCPU machine, where two runs of bench/gateway_overhead.py differ by ±10 %.

The gateway's ASGI handler is driven in-process against an in-memory upstream: no sockets, no uvicorn, no
aiohttp, so what every Python proxy pays is left out and what is counted is what distillgate adds. The
baseline in the same run is a bare pass-through handler over the same upstream (read the body, forward
it, send the answer: bench/floor_proxy.py without aiohttp). Each case runs twice under
`valgrind --tool=callgrind` (N and 3N requests) and the difference / 2N is per request, so start-up and
imports cancel out.

Background work is rate-based (drift windows keep at most max_observed_per_s, the store at most
served_max_per_s served rows a second); under valgrind requests run ~50x slower, so those caps are scaled
down to keep the same share of requests as bench/gateway_overhead.py's ~8,000 req/s, and periodic work
(registry polls, store flushes) is moved out of the window. The caps are per second all the same, so run
it on a quiet machine: a slower run keeps a larger share of requests and counts more per request.

    python bench/hot_path_instructions.py [--requests 1000]      # needs valgrind (Debian package)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

CASES = ("passthrough", "gateway-no-evaluator", "gateway")
KEY = "sk-bench-instructions"
BODY = (b'{"model":"bench","messages":[{"role":"user","content":"My card was charged twice for the same order, '
        b'please help."}],"max_tokens":16')


def _sse_body() -> bytes:
    from bench import fake_upstream

    # The fake upstream's events without their chunked-transfer framing, as one read.
    framed = fake_upstream._sse_events(8)[:-1]
    return b"".join(part.split(b"\r\n", 1)[1][:-2] for part in framed)


class MemoryStream:
    content_type = b"text/event-stream"

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def chunks(self) -> MemoryStream:
        return self

    def __aiter__(self) -> MemoryStream:
        return self

    async def __anext__(self) -> bytes:
        body, self._body = self._body, None
        if body is None:
            raise StopAsyncIteration
        return body

    def close(self) -> None:
        return None


class MemoryUpstream:
    name = "memory"

    def __init__(self) -> None:
        from bench import fake_upstream
        from gateway.upstreams import UpstreamReply

        self._reply = UpstreamReply(fake_upstream._COMPLETION, b"application/json")
        self._sse = _sse_body()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def post(self, endpoint, body, payload, headers):  # noqa: ANN001, ANN201 - gateway.upstreams.Upstream
        return self._reply

    async def open_stream(self, endpoint, body, payload, headers):  # noqa: ANN001, ANN201
        return MemoryStream(self._sse)

    async def probe(self) -> bool:
        return True


def _gateway_app(evaluator: bool, store_dir: Path):  # noqa: ANN202 - GatewayApp
    from bench.targets import _merge, gateway_config
    from gateway.app import create_app
    from gateway.config import DistillgateConfig

    os.environ["DISTILLGATE_BENCH_KEY"] = KEY
    raw = _merge(gateway_config(1, "http://127.0.0.1:9", "http://127.0.0.1:9", store_dir, shadow_rate=0.0), {
        "server": {"registry_poll_s": 3600.0},
        "evaluator": {"drift": {"max_observed_per_s": 2.0},
                      "store": {"served_max_per_s": 1.0, "flush_interval_s": 30.0}},
    })
    app = create_app(DistillgateConfig.model_validate(raw), evaluator=None if evaluator else False,
                     redistill=False, tune_gc=True)
    app.state.proxy.upstreams = {name: MemoryUpstream() for name in app.state.proxy.upstreams}
    app.state.upstreams.clear()  # nothing to start or close
    return app


async def _drive(case: str, stream: bool, n: int) -> None:
    body = BODY + (b',"stream":true,"stream_options":{"include_usage":true}}' if stream else b"}")
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [
        (b"host", b"127.0.0.1:8000"), (b"authorization", b"Bearer " + KEY.encode()),
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict:
        return message

    async def send(event: dict) -> None:
        return None

    if case == "passthrough":
        upstream = MemoryUpstream()

        async def handler(scope: dict, receive, send) -> None:  # noqa: ANN001 - raw ASGI
            raw = (await receive())["body"]
            if stream:
                source = await upstream.open_stream("chat", raw, None, {})
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", source.content_type)]})
                async for piece in source.chunks():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                reply = await upstream.post("chat", raw, None, {})
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", reply.content_type)]})
                await send({"type": "http.response.body", "body": reply.body})

        for _ in range(n):
            await handler(scope, receive, send)
        return
    with tempfile.TemporaryDirectory() as tmp:
        app = _gateway_app(case == "gateway", Path(tmp))
        handler = app.hot_routes["/v1/chat/completions"]
        async with app.router.lifespan_context(app):
            for _ in range(n):
                await handler(scope, receive, send)


def _instructions(case: str, mode: str, n: int, valgrind: str) -> int:
    argv = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
            "--worker", case, mode, str(n)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="N: runs of N and 3N requests per case")
    p.add_argument("--worker", nargs=3, metavar=("CASE", "MODE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        case, mode, n = args.worker
        import uvloop

        uvloop.run(_drive(case, mode == "stream", int(n)))
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2
    console = Console()
    table = Table(title=f"instructions per request, in-process (valgrind, {args.requests} and {3 * args.requests} requests)")
    for column in ("case", "mode", "instructions/request", "÷ passthrough", "added over passthrough"):
        table.add_column(column, justify="left" if column in ("case", "mode") else "right")
    n = args.requests
    for mode in ("json", "stream"):
        base = None
        for case in CASES:
            console.print(f"[dim]{case} {mode}…[/dim]")
            per_request = (_instructions(case, mode, 3 * n, valgrind) - _instructions(case, mode, n, valgrind)) / (2 * n)
            base = per_request if base is None else base
            table.add_row(case, mode, f"{per_request:,.0f}", f"{per_request / base:.2f}", f"{per_request - base:,.0f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
