"""Instructions per request of the whole proxy process, gateway against the bare floor, counted by valgrind:
the issue's "CPU per request ÷ the floor's" without the noise of CPU time on a shared 2-vCPU VM.

Each target is the real server (uvicorn, uvloop, httptools, the aiohttp upstream client) under
`valgrind --tool=callgrind`, fed over 127.0.0.1 by a client in another process (not counted) against
bench/fake_upstream.py (not counted). Valgrind only starts counting after WARM requests and stops after
N more: the server is wrapped in a tiny ASGI layer that calls callgrind's client requests (zero stats,
start, dump) from a helper compiled here with gcc and valgrind's callgrind.h. So start-up and imports
are left out and what is counted is exactly N requests: the floor (bench/floor_proxy.py) and the
gateway as `distillgate serve` runs it (gateway.cli.run_server; auth, routing, metrics, evaluator).

User-space instructions only: kernel time (syscalls, about the same for both: strace counts one write,
two reads and three epoll waits a request for each) and how fast the CPU runs them (cache misses)
are not in it. Background work is rate-based (drift windows keep at most max_observed_per_s, the store
at most served_max_per_s rows a second) and valgrind serves ~100 requests a second, so those caps are
scaled down to keep the share of requests bench/gateway_overhead.py's gateway sees at --reference-rps,
and the re-distillation watcher's and promotion controller's 5 s ticks are stretched by the same factor. With --cache-ll-kib K callgrind
also simulates the caches (last level K KiB) and the table adds first- and last-level misses per request.

    python bench/proxy_instructions.py [--requests 1000] [--connections 1]   # needs valgrind and gcc
    python bench/proxy_instructions.py --connections 16 --modes json --cache-ll-kib 1024
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.callgrind_window import HEADER, build_helper, read_window, window_dumps  # noqa: E402
from bench.load import chat_body  # noqa: E402
from bench.report import Report, fmt, safe_div  # noqa: E402
from bench.targets import BENCH_KEY, _merge, gateway_config, start_upstream, stop_all  # noqa: E402
from gateway.demo.processes import ManagedProcess, free_port, wait_http  # noqa: E402

TARGETS = ("floor", "gateway")
MODES = ("json", "stream")

class CountingWindow:
    """ASGI wrapper: instruments requests warm+1 .. warm+n of the chat path, nothing else."""

    def __init__(self, app, helper: ctypes.CDLL, warm: int, n: int) -> None:  # noqa: ANN001 - any ASGI app
        self.app, self.helper, self.warm, self.n = app, helper, warm, n
        self.seen = 0
        self.started = 0.0

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - raw ASGI
        if scope["type"] == "http" and scope["path"] == "/v1/chat/completions":
            self.seen += 1
            if self.seen == self.warm + 1:
                self.helper.window_start()
                self.started = time.monotonic()
            elif self.seen == self.warm + self.n + 1:
                self.helper.window_stop()
                rate = self.n / (time.monotonic() - self.started)
                print(f"WINDOW {rate:.1f} req/s", flush=True)
        await self.app(scope, receive, send)


def _serve(target: str, port: int, upstream: str, store: str, helper: str, warm: int, n: int, caps: dict) -> None:
    """The worker, under valgrind: one server, counted in a window."""
    lib = ctypes.CDLL(helper)
    if target == "floor":
        import uvicorn

        os.environ["FLOOR_UPSTREAM"] = upstream
        from bench.floor_proxy import app

        # The flags bench/targets.py's start_floor gives the uvicorn command line.
        uvicorn.run(CountingWindow(app, lib, warm, n), host="127.0.0.1", port=port, workers=1, loop="uvloop",
                    http="httptools", access_log=False, proxy_headers=False, log_level="warning")
        return
    from gateway.app import create_app
    from gateway.cli import run_server
    from gateway.config import DistillgateConfig

    os.environ["DISTILLGATE_BENCH_KEY"] = BENCH_KEY
    raw = _merge(gateway_config(port, upstream, upstream, Path(store), shadow_rate=0.0), {
        "server": {"registry_poll_s": 3600.0},
        "evaluator": {"drift": {"max_observed_per_s": caps["drift"]},
                      "store": {"served_max_per_s": caps["store"], "flush_interval_s": caps["flush_s"]}},
        "redistill": {"trigger": {"watcher": {"interval_s": caps["watcher_s"]}},
                      "promote": {"interval_s": caps["watcher_s"]}},
    })
    config = DistillgateConfig.model_validate(raw)
    app = create_app(config, evaluator=None if target == "gateway" else False, tune_gc=True)
    run_server(CountingWindow(app, lib, warm, n), config, host="127.0.0.1", port=port, log_level="warning")


def _drive(port: int, total: int, stream: bool, connections: int) -> None:
    """`total` requests from `connections` keep-alive connections; every answer must be a 200."""
    import http.client

    body = chat_body(stream=stream).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
    left = [total]
    lock = threading.Lock()
    failures: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if left[0] <= 0 or failures:
                    return
                left[0] -= 1
            conn.request("POST", "/v1/chat/completions", body, headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                failures.append(f"{resp.status}: {data[:200]!r}")

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"a request failed: {failures[0]}")


def measure(target: str, mode: str, *, upstream: str, work: Path, helper: Path, warm: int, n: int,
            connections: int, caps: dict, valgrind: str, cache_ll: int | None) -> tuple[float, float, dict | None]:
    """(instructions per request, valgrind's request rate, cache misses per request when `cache_ll` (bytes)
    asks for callgrind's cache simulation: {"l1": first-level, "ll": last-level}) for one target and mode."""
    port = free_port()
    out = work / f"{target}-{mode}"
    out.mkdir()
    cache = ["--cache-sim=yes", f"--LL={cache_ll},16,64"] if cache_ll else []
    argv = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.%p", *cache,
            sys.executable, __file__, "--serve", target, str(port), upstream, str(out / "store"), str(helper),
            str(warm), str(n), json.dumps(caps)]
    (out / "store").mkdir()
    server = ManagedProcess(f"{target}-{mode}", argv, out / "server.log", cwd=REPO, port=port, grace_s=30).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz" if target != "floor" else f"http://127.0.0.1:{port}/v1/models",
                  600, process=server, interval_s=1.0)
        # warm + n requests, then one per connection more so that request warm+n+1 (the window's end) arrives.
        _drive(port, warm + n + connections, mode == "stream", connections)
        deadline = time.monotonic() + 60
        while not window_dumps(out) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        server.stop()
    if not window_dumps(out):
        raise RuntimeError(f"no window dump for {target} {mode}; see {out / 'server.log'}")
    counts = read_window(out)
    rate = re.search(r"WINDOW ([\d.]+) req/s", (out / "server.log").read_text())
    misses = {"l1": sum(counts[e] for e in ("I1mr", "D1mr", "D1mw")) / n,
              "ll": sum(counts[e] for e in ("ILmr", "DLmr", "DLmw")) / n} if cache_ll else None
    return counts["Ir"] / n, float(rate.group(1)) if rate else float("nan"), misses


def _scaled_defaults(scale: float) -> dict[str, float]:
    """The rate caps and periods `distillgate serve` runs with by default, scaled to valgrind's request rate
    (read from the settings models, so the bench follows their defaults)."""
    from evaluator.settings import DriftSettings, StoreSettings
    from redistill.settings import PromoteSettings, WatcherSettings

    drift = DriftSettings().max_observed_per_s
    store = StoreSettings(url="sqlite://")
    return {"drift": (drift or 1e9) * scale, "store": (store.served_max_per_s or 1e9) * scale,
            "flush_s": store.flush_interval_s / scale,
            "watcher_s": min(WatcherSettings().interval_s, PromoteSettings().interval_s) / scale}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="N: requests counted per target and mode")
    p.add_argument("--warm", type=int, default=300, help="requests served before counting starts")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--targets", default=",".join(TARGETS), help="floor, gateway, gateway-no-evaluator")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--valgrind-rps", type=float, default=100.0, help="about how fast valgrind serves (for the caps)")
    p.add_argument("--reference-rps", type=float, default=8000.0,
                   help="the real gateway's rate whose evaluator share to keep (bench/gateway_overhead.py, C=16)")
    p.add_argument("--cache-ll-kib", type=int, default=0,
                   help="also simulate the caches with a last level of this many KiB and count its misses per "
                        "request (what makes CPU time differ from instructions); slower")
    p.add_argument("--name", default="proxy_instructions", help="results file stem under bench/results/")
    p.add_argument("--serve", nargs=8, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        target, port, upstream, store, helper, warm, n, caps = args.serve
        _serve(target, int(port), upstream, store, helper, int(warm), int(n), json.loads(caps))
        return 0

    from rich.console import Console

    valgrind, gcc = shutil.which("valgrind"), shutil.which("gcc")
    if valgrind is None or gcc is None or not HEADER.exists():
        print("needs valgrind (with its callgrind.h) and gcc: apt-get install valgrind gcc", file=sys.stderr)
        return 2
    scale = args.valgrind_rps / args.reference_rps
    caps = _scaled_defaults(scale)
    console = Console()
    targets = [t for t in args.targets.split(",") if t]
    modes = [m for m in args.modes.split(",") if m]
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="bench-instr-"))
    running = []
    try:
        helper = build_helper(work)
        upstream = start_upstream(work, 1)
        running.append(upstream)
        for mode in modes:
            for target in targets:
                console.print(f"[dim]{target} {mode} (valgrind: about a minute)…[/dim]")
                per_request, rate, misses = measure(target, mode, upstream=upstream.base_url, work=work,
                                                    helper=helper, warm=args.warm, n=args.requests,
                                                    connections=args.connections, caps=caps, valgrind=valgrind,
                                                    cache_ll=args.cache_ll_kib * 1024 or None)
                rows.append({"target": target, "mode": mode, "instructions": per_request, "valgrind_rps": rate,
                             "l1_misses": misses and misses["l1"], "ll_misses": misses and misses["ll"]})
    finally:
        stop_all(running)
    floor = {r["mode"]: r for r in rows if r["target"] == "floor"}
    columns = ["target", "scenario", "instructions/request", "÷ floor", "added over floor", "valgrind req/s"]
    if args.cache_ll_kib:
        columns += ["L1 misses/request", "÷ floor", f"LL misses/request ({args.cache_ll_kib} KiB)", "÷ floor"]
    report = Report(f"instructions per request, whole server process (valgrind; {args.requests} requests, "
                    f"C={args.connections})", columns, raw={"args": vars(args), "caps": caps, "rows": rows})
    for r in rows:
        base = floor.get(r["mode"], {})
        row = [r["target"], r["mode"], fmt(r["instructions"], 0), fmt(safe_div(r["instructions"], base.get("instructions")), 3),
               fmt(r["instructions"] - base["instructions"] if base else None, 0), fmt(r["valgrind_rps"], 0)]
        if args.cache_ll_kib:
            row += [fmt(r["l1_misses"], 0), fmt(safe_div(r["l1_misses"], base.get("l1_misses")), 3),
                    fmt(r["ll_misses"], 0), fmt(safe_div(r["ll_misses"], base.get("ll_misses")), 3)]
        report.rows.append(row)
    # The command as given, so a results file says what produced it (flags left at their defaults omitted).
    flags = "".join(f" --{name.replace('_', '-')} {value}" for name, value, default in (
        ("modes", args.modes, ",".join(MODES)), ("targets", args.targets, ",".join(TARGETS)),
        ("cache_ll_kib", args.cache_ll_kib, 0), ("name", args.name, "proxy_instructions")) if value != default)
    report.notes.append(f"python bench/proxy_instructions.py --requests {args.requests} --connections {args.connections}{flags}; "
                        f"evaluator caps scaled to {args.valgrind_rps:g} req/s under valgrind: {caps} (a slower run "
                        "keeps a larger share of requests in the drift window and the store, and counts more)")
    report.publish(console, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
