"""What the gateway costs per request, next to a direct call, the bare Python floor, nginx and LiteLLM.

Starts a fake OpenAI upstream, then puts wrk load (one core) on each proxy (pinned to the other core) at
several connection counts, non-streaming and streaming, plus a 50 ms-upstream case for p99 and an aiohttp
probe for streaming time-to-first-token. Prints a table and the ratios the issue targets; writes
bench/results/<name>.json and .md. Numbers are only comparable within one run.

    python bench/gateway_overhead.py                 # full: 2 rounds x 10 s per cell + 60 s soak
    python bench/gateway_overhead.py --quick         # 1 round x 3 s, no soak (development)
    python bench/gateway_overhead.py --duration 5 --connections 1,16 --targets direct,floor,gateway
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from bench.gateway_metrics import scrape, shadow_note  # noqa: E402
from bench.load import RunResult, TtftResult, chat_body, measure_ttft, run_wrk  # noqa: E402
from bench.proctree import sample, wait_quiet  # noqa: E402
from bench.report import RESULTS, Ratio, Report, fmt, median_or_none, safe_div  # noqa: E402
from bench.targets import (  # noqa: E402
    BENCH_KEY, Target, TargetUnavailable, prepare_load_run, stop_all, start_floor, start_gateway, start_litellm,
    start_nginx, start_upstream,
)

DEFAULT_TARGETS = ("direct", "floor", "nginx", "litellm", "gateway")
# gateway-nodrift: the same gateway with drift recomputation pushed out of the run, to show what it costs.
ALL_TARGETS = (*DEFAULT_TARGETS, "gateway-nodrift")
NO_DRIFT = {"evaluator": {"drift": {"every_n": 10**9}}}
console = Console(width=None if sys.stdout.isatty() else 150)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 10, --quick 3)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (targets interleaved); medians are reported")
    p.add_argument("--connections", default="1,16,64", help="comma-separated wrk connection counts")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"any of {','.join(ALL_TARGETS)}")
    p.add_argument("--upstream-delay-ms", type=int, default=50, help="upstream delay for the p99 case (0 = skip)")
    p.add_argument("--p99-connections", type=int, default=16)
    p.add_argument("--ttft-requests", type=int, default=300)
    p.add_argument("--ttft-gap-ms", type=int, default=2, help="gap between upstream SSE chunks in the TTFT probe")
    p.add_argument("--soak-duration", type=float, default=60.0, help="seconds of C=16 load watching RSS (0 = skip)")
    p.add_argument("--soak-targets", default="floor,gateway,gateway-nodrift")
    p.add_argument("--soak-mode", choices=("json", "stream"), default="json",
                   help="request kind the soak sends")
    p.add_argument("--gateway-shadow-rate", type=float, default=0.0,
                   help="shadow sampling in the gateway under test (the evaluator hand-off still runs on every request)")
    p.add_argument("--proxy-cpu", type=int, default=0, help="core the proxy under test is pinned to")
    p.add_argument("--load-cpu", type=int, default=1, help="core for wrk, the fake upstream and this script")
    p.add_argument("--name", default="gateway_overhead", help="results file stem under bench/results/")
    p.add_argument("--quick", action="store_true", help="development run: 1 round x 3 s, 100 TTFT probes, no soak")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.ttft_requests, args.soak_duration = 1, 100, 0.0
    args.duration = args.duration or (3 if args.quick else 10)
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.targets = [t for t in args.targets.split(",") if t]
    args.soak_targets = [t for t in args.soak_targets.split(",") if t]
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; choose from {ALL_TARGETS}")
    return args


def scenarios(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """(label, connections, request body) per measured cell."""
    cells = [(f"json C={c}", c, chat_body(stream=False)) for c in args.connections]
    cells += [(f"stream C={c}", c, chat_body(stream=True)) for c in args.connections]
    if args.upstream_delay_ms:
        cells.append((f"json {args.upstream_delay_ms}ms C={args.p99_connections}", args.p99_connections,
                      chat_body(stream=False, delay_ms=args.upstream_delay_ms)))
    return cells


def start_targets(args: argparse.Namespace, work: Path, upstream: Target, teacher: Target,
                  running: list[Target]) -> tuple[dict[str, Target], list[str]]:
    """Starts what `args.targets` names; each started server joins `running` at once, so a later failure
    still stops it."""
    starters: dict[str, Callable[[], Target]] = {
        "floor": lambda: start_floor(work, args.proxy_cpu, upstream.base_url),
        "nginx": lambda: start_nginx(work, args.proxy_cpu, upstream.base_url),
        "litellm": lambda: start_litellm(work, args.proxy_cpu, upstream.base_url),
        "gateway": lambda: start_gateway(work, args.proxy_cpu, upstream.base_url, teacher.base_url,
                                         shadow_rate=args.gateway_shadow_rate),
        "gateway-nodrift": lambda: start_gateway(work, args.proxy_cpu, upstream.base_url, teacher.base_url,
                                                 shadow_rate=args.gateway_shadow_rate, name="gateway-nodrift",
                                                 overrides=NO_DRIFT),
    }
    started: dict[str, Target] = {}
    skipped: list[str] = []
    startup: list[str] = []
    for name in args.targets:
        if name == "direct":
            started["direct"] = upstream
            continue
        with console.status(f"starting {name} …"):
            try:
                t0 = time.monotonic()
                started[name] = starters[name]()
                running.append(started[name])
                startup.append(f"{name} {time.monotonic() - t0:.1f}s/{sample(started[name].pid).rss_mb:.0f} MB")
            except TargetUnavailable as exc:
                skipped.append(f"{name} skipped: {exc}")
                console.print(f"[yellow]{name} skipped:[/] {exc}")
    skipped.insert(0, "ready after / RSS at start-up: " + ", ".join(startup))
    return started, skipped


def growth(samples: list[float]) -> tuple[float | None, float | None]:
    """RSS at the first and last sample of a run (one sample a second)."""
    if len(samples) < 2:
        return None, None
    return samples[0], samples[-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = prepare_load_run(args.load_cpu, "bench-gw-")
    cells = scenarios(args)
    running: list[Target] = []
    results: dict[str, dict[str, list[RunResult]]] = {}
    ttft: dict[str, TtftResult] = {}
    soak: dict[str, RunResult] = {}
    load1 = os.getloadavg()[0]
    try:
        upstream = start_upstream(work, args.load_cpu)
        teacher = start_upstream(work, args.load_cpu, name="teacher")
        running += [upstream, teacher]
        targets, skipped = start_targets(args, work, upstream, teacher, running)
        order = [n for n in args.targets if n in targets]
        results = {n: {label: [] for label, _, _ in cells} for n in order}
        total = len(order) * (len(cells) * args.rounds + 1 + (1 if args.soak_duration else 0)) + len(order)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("benchmark", total=total)
            for name in order:  # warm pools and lazy imports before anything counts
                progress.update(task, description=f"warm-up {name}")
                for body in (chat_body(stream=False), chat_body(stream=True)):
                    run_wrk(targets[name].url, body, connections=16, duration_s=1, server_pid=None,
                            load_cpu=args.load_cpu, key=BENCH_KEY)
                wait_quiet(targets[name].pid)
                progress.advance(task)
            for rnd in range(args.rounds):
                for label, conns, body in cells:
                    shift = rnd % len(order)  # interleaved and rotated, so drift on a shared machine hits all alike
                    for name in order[shift:] + order[:shift]:
                        progress.update(task, description=f"round {rnd + 1}/{args.rounds} {label} {name}")
                        results[name][label].append(run_wrk(
                            targets[name].url, body, connections=conns, duration_s=args.duration,
                            server_pid=targets[name].pid, load_cpu=args.load_cpu, key=BENCH_KEY))
                        progress.advance(task)
            # TTFT in rounds (each after every server is quiet), probes interleaved target by target: see
            # bench.load._ttft for why a block per target cannot resolve a ratio of two sub-millisecond differences.
            ttft_body = chat_body(stream=True, gap_ms=args.ttft_gap_ms)
            per_round = max(1, args.ttft_requests // args.rounds)
            ttft_rounds: dict[str, list[TtftResult]] = {n: [] for n in order}
            for rnd in range(args.rounds):
                progress.update(task, description=f"TTFT round {rnd + 1}/{args.rounds}")
                for name in order:
                    wait_quiet(targets[name].pid)
                measured = measure_ttft({n: targets[n].url for n in order}, ttft_body, key=BENCH_KEY, requests=per_round)
                for name, result in measured.items():
                    ttft_rounds[name].append(result)
                progress.advance(task, len(order) / args.rounds)
            ttft = {name: TtftResult.median_of(rounds) for name, rounds in ttft_rounds.items()}
            if args.soak_duration:
                for name in order:
                    if name in args.soak_targets:
                        progress.update(task, description=f"soak {name} {args.soak_duration:.0f}s")
                        soak[name] = run_wrk(targets[name].url, chat_body(stream=args.soak_mode == "stream"),
                                             connections=16, duration_s=args.soak_duration, server_pid=targets[name].pid,
                                             load_cpu=args.load_cpu, key=BENCH_KEY)
                    progress.advance(task)
        counters = scrape(targets["gateway"].base_url) if "gateway" in targets else {}
    finally:
        stop_all(running)
    report = build_report(args, cells, results, ttft, soak, counters, skipped, load1)
    report.publish(console, args.name, logs=work)
    if soak:
        plot = plot_soak_rss({n: s.rss_samples_mb for n, s in soak.items()}, args.name, args.soak_mode)
        console.print(f"wrote {plot}")
    return 0


def plot_soak_rss(samples_mb: dict[str, list[float]], stem: str, mode: str) -> Path:
    """results/<stem>-soak-rss.png: each soaked target's process-tree RSS, one sample a second."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, mb in samples_mb.items():
        ax.plot(range(1, len(mb) + 1), mb, label=f"{name} ({mb[0]:.1f} → {mb[-1]:.1f} MB)" if mb else name)
    ax.set_xlabel(f"seconds of {mode} load (16 connections)")
    ax.set_ylabel("RSS of the process tree (MB)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.set_title("RSS during the soak")
    fig.tight_layout()
    path = RESULTS / f"{stem}-soak-rss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _median(runs: list[RunResult], attr: str) -> float | None:
    return median_or_none([getattr(r, attr) for r in runs])


def gateway_ratios(r: list[Ratio], gw: str, args, get, added, ttft, results) -> None:  # noqa: ANN001
    for c in args.connections:
        for mode in ("json", "stream"):
            label = f"{mode} C={c}"
            r.append(Ratio(f"{gw} CPU/req ÷ floor ({label})", safe_div(get(gw, label, "cpu_ms_per_req"),
                           get("floor", label, "cpu_ms_per_req")), "<= 1.3", 1.3))
    for c in args.connections:
        label = f"json C={c}"
        r.append(Ratio(f"LiteLLM CPU/req ÷ {gw}'s ({label})", safe_div(get("litellm", label, "cpu_ms_per_req"),
                       get(gw, label, "cpu_ms_per_req")), ">= 60", 60.0, at_least=True))
        r.append(Ratio(f"{gw} req/s ÷ LiteLLM ({label})", safe_div(get(gw, label, "rps"),
                       get("litellm", label, "rps")), "informational", None))
    if 1 in args.connections:
        r.append(Ratio(f"{gw} added p50 at C=1 ÷ floor's (json)", safe_div(added(gw, "json C=1", "p50_ms"),
                       added("floor", "json C=1", "p50_ms")), "<= 1.3", 1.3, "added = target p50 − direct p50"))
    if args.upstream_delay_ms:
        label = f"json {args.upstream_delay_ms}ms C={args.p99_connections}"
        r.append(Ratio(f"{gw} p99 ÷ floor's ({label})", safe_div(get(gw, label, "p99_ms"), get("floor", label, "p99_ms")),
                       "<= 1.5", 1.5))
        r.append(Ratio(f"{gw} added p99 ÷ floor's added p99 ({label})", safe_div(added(gw, label, "p99_ms"),
                       added("floor", label, "p99_ms")), "stricter view", 1.5, "added = target p99 − direct p99"))
    if {gw, "floor", "direct"} <= ttft.keys():
        d = ttft["direct"].p50_ms
        r.append(Ratio(f"{gw} streaming TTFT added ÷ floor's (C=1)", safe_div(ttft[gw].p50_ms - d, ttft["floor"].p50_ms - d),
                       "<= 1.5", 1.5, "p50 of first SSE chunk, aiohttp client"))
    own = max((x.root_rss_end_mb or 0) for runs in results[gw].values() for x in runs)
    tree = max((x.rss_end_mb or 0) for runs in results[gw].values() for x in runs)
    r.append(Ratio(f"{gw} serving process RSS MB (max at run ends)", own, "< 150", 149.999,
                   f"with its drift-comparison child processes: {tree:.0f} MB (the RSS column)"))


def build_report(args, cells, results, ttft, soak, counters, skipped, load1) -> Report:  # noqa: ANN001
    cols = ["target", "scenario", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "CPU ms/req",
            "RSS MB", "settle s", "errors"]
    report = Report(f"gateway overhead ({args.rounds}x{args.duration:.0f}s per cell, medians)", cols)
    med: dict[tuple[str, str], dict[str, float | None]] = {}
    for name, by_cell in results.items():
        for label, runs in by_cell.items():
            med[name, label] = {a: _median(runs, a) for a in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "rss_end_mb", "settle_s")}
            med[name, label]["errors"] = sum(r.errors for r in runs)
    for label, _, _ in cells:
        base = med.get(("direct", label))
        for name in results:
            m = med[name, label]
            added50 = m["p50_ms"] - base["p50_ms"] if base and name != "direct" else None
            added99 = m["p99_ms"] - base["p99_ms"] if base and name != "direct" else None
            report.rows.append([name, label, fmt(m["rps"], 0), fmt(m["p50_ms"]), fmt(m["p99_ms"]), fmt(added50),
                                fmt(added99), fmt(m["cpu_ms_per_req"], 3), fmt(m["rss_end_mb"], 0), fmt(m["settle_s"], 1),
                                str(m["errors"])])
    for name, t in ttft.items():
        added = t.p50_ms - ttft["direct"].p50_ms if "direct" in ttft and name != "direct" else None
        report.rows.append([name, f"TTFT C=1 (gap {args.ttft_gap_ms}ms)", "–", fmt(t.p50_ms), fmt(t.p99_ms),
                            fmt(added), "–", "–", "–", "–", str(t.errors)])

    def get(name: str, label: str, attr: str) -> float | None:
        return med.get((name, label), {}).get(attr)

    def added(name: str, label: str, attr: str) -> float | None:
        a, d = get(name, label, attr), get("direct", label, attr)
        return a - d if a is not None and d is not None else None

    r = report.ratios
    for gw in [n for n in ("gateway", "gateway-nodrift") if n in results]:
        gateway_ratios(r, gw, args, get, added, ttft, results)
    for name, run in soak.items():
        start, end = growth(run.rss_samples_mb)
        if start is not None:
            r.append(Ratio(f"{name} RSS growth over {args.soak_duration:.0f}s {args.soak_mode} soak (MB)", end - start,
                           "flat: < 5 MB or 5 %", max(5.0, 0.05 * start),
                           f"{start:.0f} → {end:.0f} MB, {run.requests:,} requests, "
                           f"CPU {fmt(run.cpu_ms_per_req, 3)} ms/req, p99 {run.p99_ms:.1f} ms"))
    report.notes.append(f"proxy pinned to core {args.proxy_cpu}; wrk, fake upstream and TTFT client on core "
                        f"{args.load_cpu}; load average at start {load1:.2f} (other work on this machine adds noise)")
    report.notes.append("CPU ms/req counts the server's CPU from the start of a run until it is idle again "
                        "(settle s = how long background work such as store writes continued after the load stopped)")
    report.notes.append(f"gateway: auth on (1 key), routing, metrics, shadow offer with sampling rate "
                        f"{args.gateway_shadow_rate}; counters after the run: {counters or 'n/a'}")
    if "gateway" in results and shadow_note(counters):
        report.notes.append(shadow_note(counters))
    report.notes.extend(skipped)
    report.raw = {
        "args": {k: v for k, v in vars(args).items()},
        "runs": {n: {l: [x.to_dict() for x in runs] for l, runs in by.items()} for n, by in results.items()},
        "ttft": {n: vars(t) for n, t in ttft.items()},
        "soak": {n: s.to_dict() for n, s in soak.items()},
        "gateway_counters": counters,
    }
    return report


if __name__ == "__main__":
    t0 = time.monotonic()
    code = main()
    console.print(f"done in {time.monotonic() - t0:.0f}s")
    sys.exit(code)
