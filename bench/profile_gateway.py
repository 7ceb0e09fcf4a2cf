"""Where the gateway's CPU goes under load: py-spy samples every thread while wrk drives it.

Prints the share of samples per function (inclusive, for distillgate's own code, and self time overall)
and writes the raw collapsed stacks to bench/results/profile-<mode>.txt (feed them to flamegraph.pl or
speedscope). py-spy is a profiling tool, not a project dependency: `pip install py-spy` (any location;
pass --py-spy PATH if it is not on PATH).

    python bench/profile_gateway.py --mode json --duration 15 [--override evaluator.drift.every_n=1000000000]
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.load import chat_body, run_wrk  # noqa: E402
from bench.proctree import thread_cpu, wait_quiet  # noqa: E402
from bench.report import RESULTS  # noqa: E402
from bench.targets import (  # noqa: E402
    BENCH_KEY, Target, prepare_load_run, stop_all, start_gateway, start_upstream,
)

OWN_CODE = ("gateway/", "evaluator/", "redistill/")
_FRAME = re.compile(r"(.*) \((.*?):\d+\)$")


def parse_override(text: str) -> dict:
    """`a.b.c=value` (value parsed as YAML) -> {"a": {"b": {"c": value}}}."""
    path, _, raw = text.partition("=")
    out: dict = yaml.safe_load(raw)
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def frame_name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    where = m.group(2).split("site-packages/")[-1]
    return f"{m.group(1)} ({where.split(str(Path(__file__).resolve().parent.parent) + '/')[-1]})"


def aggregate(raw: Path) -> tuple[int, collections.Counter, collections.Counter]:
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [frame_name(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    return total, inclusive, own


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("json", "stream"), default="json")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--shadow-rate", type=float, default=0.0)
    p.add_argument("--override", action="append", default=[], help="config override a.b.c=value (repeatable)")
    p.add_argument("--py-spy", default=shutil.which("py-spy"))
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    args = p.parse_args()
    if not args.py_spy:
        raise SystemExit("py-spy not found: `pip install py-spy` (or pass --py-spy PATH)")
    console = Console(width=None if sys.stdout.isatty() else 150)
    work = prepare_load_run(args.load_cpu, "bench-prof-")
    overrides: dict = {}
    for text in args.override:
        overrides = {**overrides, **parse_override(text)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"profile-{args.mode}.txt"
    body = chat_body(stream=args.mode == "stream")
    running: list[Target] = []
    try:
        upstream = start_upstream(work, args.load_cpu)
        teacher = start_upstream(work, args.load_cpu, name="teacher")
        running += [upstream, teacher]
        gw = start_gateway(work, args.proxy_cpu, upstream.base_url, teacher.base_url, shadow_rate=args.shadow_rate,
                           overrides=overrides)
        running.append(gw)
        run_wrk(gw.url, body, connections=args.connections, duration_s=2, server_pid=None, load_cpu=args.load_cpu,
                key=BENCH_KEY)
        wait_quiet(gw.pid)  # what the warm-up started (the drift worker's imports) is not profiled
        spy = subprocess.Popen(["taskset", "-c", str(args.load_cpu), args.py_spy, "record", "-p", str(gw.pid),
                                "-d", str(args.duration), "-r", "200", "-f", "raw", "-o", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        threads_before = thread_cpu(gw.pid)
        result = run_wrk(gw.url, body, connections=args.connections, duration_s=args.duration + 1,
                         server_pid=gw.pid, load_cpu=args.load_cpu, key=BENCH_KEY)
        threads_after = thread_cpu(gw.pid)
        spy.wait(timeout=60)
    finally:
        stop_all(running)
    total, inclusive, own = aggregate(raw)
    console.print(f"{args.mode} C={args.connections}: {result.rps:,.0f} req/s, CPU {result.cpu_ms_per_req:.3f} ms/req, "
                  f"{total} samples (all threads) -> {raw}")
    t1 = Table(title="distillgate code, inclusive share of samples")
    t1.add_column("%", justify="right")
    t1.add_column("function (file)")
    for name, n in inclusive.most_common():
        if any(s in name for s in OWN_CODE) and n / total >= 0.005:
            t1.add_row(f"{100 * n / total:.1f}", name)
    t2 = Table(title="self time, top 25")
    t2.add_column("%", justify="right")
    t2.add_column("function (file)")
    for name, n in own.most_common(25):
        t2.add_row(f"{100 * n / total:.1f}", name)
    t3 = Table(title="CPU by thread over the load (µs a request)")
    t3.add_column("thread")
    t3.add_column("µs/request", justify="right")
    for label, after in sorted(threads_after.items(), key=lambda kv: -kv[1]):
        used = after - threads_before.get(label, 0.0)
        if used > 0 and result.requests:
            t3.add_row(label, f"{1e6 * used / result.requests:.1f}")
    console.print(t1)
    console.print(t2)
    console.print(t3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
