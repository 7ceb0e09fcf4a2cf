"""Does shadow evaluation slow down the user? The gateway at 0 %, 10 % and 100 % shadow sampling.

A fake student upstream (default 20 ms) serves users; a fake teacher (default 50 ms) answers the shadow
calls. Three gateways run side by side on the proxy core; wrk (closed loop) measures user-facing latency
on each in turn, rounds interleaved, waiting for the shadow queue to drain between runs. Prints p50/p99
per setting and the ratio 100 % ÷ 0 % (target: within 5 %). Writes bench/results/<name>.json and .md.

    python bench/shadow_overhead.py                  # 2 rounds x 10 s at C=4 and C=16
    python bench/shadow_overhead.py --quick          # 1 round x 3 s
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from bench.gateway_metrics import scrape, shadow_note, wait_shadow_idle  # noqa: E402
from bench.load import RunResult, chat_body, run_wrk  # noqa: E402
from bench.proctree import wait_quiet  # noqa: E402
from bench.report import Ratio, Report, fmt, median_or_none, safe_div  # noqa: E402
from bench.targets import (  # noqa: E402
    BENCH_KEY, Target, TargetUnavailable, prepare_load_run, stop_all, start_gateway, start_upstream,
)

console = Console(width=None if sys.stdout.isatty() else 150)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 10, --quick 3)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--connections", default="4,16")
    p.add_argument("--rates", default="0,0.1,1", help="shadow sampling rates; the first is the baseline")
    p.add_argument("--student-delay-ms", type=int, default=20)
    p.add_argument("--teacher-delay-ms", type=int, default=50)
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--name", default="shadow_overhead")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 1
    args.duration = args.duration or (3 if args.quick else 10)
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.rates = [float(r) for r in args.rates.split(",") if r]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = prepare_load_run(args.load_cpu, "bench-shadow-")
    running: list[Target] = []
    runs: dict[tuple[float, int], list[RunResult]] = {(r, c): [] for r in args.rates for c in args.connections}
    counters: dict[float, dict[str, float]] = {}
    undrained = 0
    load1 = os.getloadavg()[0]
    try:
        student = start_upstream(work, args.load_cpu, name="student", delay_ms=args.student_delay_ms)
        teacher = start_upstream(work, args.load_cpu, name="teacher", delay_ms=args.teacher_delay_ms)
        running += [student, teacher]
        gateways: dict[float, Target] = {}
        for rate in args.rates:
            with console.status(f"starting gateway at shadow rate {rate} …"):
                try:
                    gateways[rate] = start_gateway(work, args.proxy_cpu, student.base_url, teacher.base_url,
                                                   shadow_rate=rate, name=f"gateway-{rate:g}")
                except TargetUnavailable as exc:
                    console.print(f"[red]gateway unavailable:[/] {exc}")
                    return 2
            running.append(gateways[rate])
        body = chat_body(stream=False)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("shadow overhead", total=len(runs) * args.rounds + len(gateways))
            for rate, gw in gateways.items():
                progress.update(task, description=f"warm-up rate {rate:g}")
                run_wrk(gw.url, body, connections=4, duration_s=1, server_pid=None, load_cpu=args.load_cpu, key=BENCH_KEY)
                wait_shadow_idle(gw.base_url)
                wait_quiet(gw.pid)
                progress.advance(task)
            for rnd in range(args.rounds):
                for conns in args.connections:
                    order = list(gateways.items())
                    shift = rnd % len(order)  # rotate so no setting always runs first after a pause
                    for rate, gw in order[shift:] + order[:shift]:
                        progress.update(task, description=f"round {rnd + 1} C={conns} rate {rate:g}")
                        runs[rate, conns].append(run_wrk(gw.url, body, connections=conns, duration_s=args.duration,
                                                         server_pid=gw.pid, load_cpu=args.load_cpu, key=BENCH_KEY))
                        undrained += not wait_shadow_idle(gw.base_url)
                        progress.advance(task)
        counters = {rate: scrape(gw.base_url) for rate, gw in gateways.items()}
    finally:
        stop_all(running)
    report = build_report(args, runs, counters, undrained, load1)
    report.publish(console, args.name, logs=work)
    return 0


def build_report(args, runs, counters, undrained, load1) -> Report:  # noqa: ANN001
    cols = ["shadow rate", "C", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "RSS MB", "errors"]
    report = Report(f"shadow overhead (student {args.student_delay_ms} ms, teacher {args.teacher_delay_ms} ms, "
                    f"{args.rounds}x{args.duration}s per cell, medians)", cols)
    med: dict[tuple[float, int], dict[str, float | None]] = {}
    for (rate, conns), rs in runs.items():
        med[rate, conns] = {a: median_or_none([getattr(r, a) for r in rs])
                            for a in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "rss_end_mb")}
        report.rows.append([f"{rate:.0%}", str(conns), fmt(med[rate, conns]["rps"], 0), fmt(med[rate, conns]["p50_ms"]),
                            fmt(med[rate, conns]["p99_ms"]), fmt(med[rate, conns]["cpu_ms_per_req"], 3),
                            fmt(med[rate, conns]["rss_end_mb"], 0), str(sum(r.errors for r in rs))])
    base, top = args.rates[0], args.rates[-1]
    for conns in args.connections:
        for pct in ("p50_ms", "p99_ms"):
            report.ratios.append(Ratio(f"{pct[:3]} at {top:.0%} ÷ {base:.0%} (C={conns})",
                                       safe_div(med[top, conns][pct], med[base, conns][pct]), "<= 1.05", 1.05))
        report.ratios.append(Ratio(f"CPU/req at {top:.0%} ÷ {base:.0%} (C={conns})",
                                   safe_div(med[top, conns]["cpu_ms_per_req"], med[base, conns]["cpu_ms_per_req"]),
                                   "informational", None, "shadow work runs in the gateway process"))
    report.notes.append(f"gateways pinned to core {args.proxy_cpu}; wrk and both fake upstreams on core {args.load_cpu}; "
                        f"load average at start {load1:.2f} (other work on this machine adds noise)")
    for rate, c in counters.items():
        report.notes.append(f"rate {rate:g}: {c or 'no metrics'}")
    if undrained:
        report.notes.append(f"{undrained} run(s) left a shadow backlog that did not drain within 30 s")
    for rate, c in counters.items():
        if rate > 0 and shadow_note(c):
            report.notes.append(shadow_note(c))
            break
    report.raw = {"args": vars(args), "runs": {f"{r}@{c}": [x.to_dict() for x in rs] for (r, c), rs in runs.items()},
                  "counters": {str(k): v for k, v in counters.items()}}
    return report


if __name__ == "__main__":
    t0 = time.monotonic()
    code = main()
    console.print(f"done in {time.monotonic() - t0:.0f}s")
    sys.exit(code)
