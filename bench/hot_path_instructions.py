"""Instructions per request of distillgate's own hot-path code, counted by valgrind: deterministic, unlike
CPU time on a shared 2-vCPU machine, where two runs of bench/gateway_overhead.py differ by ±10 %.

The gateway's ASGI handler is driven in-process against an in-memory upstream: no sockets, no uvicorn, no
aiohttp, so what every Python proxy pays is left out and what is counted is what distillgate adds. The
baseline in the same run is a bare pass-through handler over the same upstream (read the body, forward
it, send the answer: bench/floor_proxy.py without aiohttp). Each case runs under
`valgrind --tool=callgrind` and only a window of N requests is counted (bench.callgrind_window), after a
warm-up of at least N requests and WARM_S seconds (the drift window keeps every request for its first
second, until its stride follows the request rate), with one loop iteration per request as a server gives
it (the gateway's after-response batch is a call_soon). An earlier version counted N and 3N requests from
the start without yielding, so the batch ran whenever something happened to yield and a case's count
moved by ~16,000 instructions a request between runs.

Background work is rate-based (drift windows keep at most max_observed_per_s, the store at most
served_max_per_s served rows a second); under valgrind requests run ~50x slower, so those caps are scaled
down to keep the same share of requests as bench/gateway_overhead.py's ~8,000 req/s, and periodic work
(registry polls, store flushes) is moved out of the window. The caps are per second all the same, so run
it on a quiet machine: a slower run keeps a larger share of requests and counts more per request.

    python bench/hot_path_instructions.py [--requests 1000]      # needs valgrind (Debian package) and gcc
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.callgrind_window import HEADER, build_helper, read_window  # noqa: E402

CASES = ("passthrough", "gateway-no-evaluator", "gateway")
WARM_S = 2.0  # past the drift stride's first second, in valgrind's time
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


async def _drive(case: str, stream: bool, n: int, helper: str) -> None:
    body = BODY + (b',"stream":true,"stream_options":{"include_usage":true}}' if stream else b"}")
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [
        (b"host", b"127.0.0.1:8000"), (b"authorization", b"Bearer " + KEY.encode()),
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict:
        return message

    async def send(event: dict) -> None:
        return None

    lib = ctypes.CDLL(helper)

    async def counted(handler) -> None:  # noqa: ANN001 - a raw ASGI handler
        # One loop iteration per request, as a server gives it: the in-memory upstream never suspends, so
        # without the sleep(0) the loop would not run the gateway's after-response batch (a call_soon) until
        # some later request happened to yield, and whether that fell inside the window or not moved the count
        # by ~16,000 instructions a request.
        started, warm = time.monotonic(), 0
        while warm < n or time.monotonic() - started < WARM_S:
            await handler(scope, receive, send)
            await asyncio.sleep(0)
            warm += 1
        lib.window_start()
        for _ in range(n):
            await handler(scope, receive, send)
            await asyncio.sleep(0)
        lib.window_stop()

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

        await counted(handler)
        return
    with tempfile.TemporaryDirectory() as tmp:
        app = _gateway_app(case == "gateway", Path(tmp))
        async with app.router.lifespan_context(app):
            await counted(app.hot_routes["/v1/chat/completions"])


def _instructions(case: str, mode: str, n: int, valgrind: str, helper: Path, work: Path) -> float:
    """Instructions per request of `case` in its counted window."""
    out = work / f"{case}-{mode}"
    out.mkdir()
    argv = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.%p", sys.executable,
            __file__, "--worker", case, mode, str(n), str(helper)]
    subprocess.run(argv, capture_output=True, text=True, check=True)
    return read_window(out)["Ir"] / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="N: requests counted per case, after a warm-up")
    p.add_argument("--worker", nargs=4, metavar=("CASE", "MODE", "N", "HELPER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        case, mode, n, helper = args.worker
        import uvloop

        uvloop.run(_drive(case, mode == "stream", int(n), helper))
        return 0
    valgrind, gcc = shutil.which("valgrind"), shutil.which("gcc")
    if valgrind is None or gcc is None or not HEADER.exists():
        print("needs valgrind (with its callgrind.h) and gcc: apt-get install valgrind gcc", file=sys.stderr)
        return 2
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="bench-hot-"))
    helper = build_helper(work)
    table = Table(title=f"instructions per request, in-process (valgrind, {args.requests} requests after a warm-up)")
    for column in ("case", "mode", "instructions/request", "÷ passthrough", "added over passthrough"):
        table.add_column(column, justify="left" if column in ("case", "mode") else "right")
    n = args.requests
    for mode in ("json", "stream"):
        base = None
        for case in CASES:
            console.print(f"[dim]{case} {mode}…[/dim]")
            per_request = _instructions(case, mode, n, valgrind, helper, work)
            base = per_request if base is None else base
            table.add_row(case, mode, f"{per_request:,.0f}", f"{per_request / base:.2f}", f"{per_request - base:,.0f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
