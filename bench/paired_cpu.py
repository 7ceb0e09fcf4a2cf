"""Gateway CPU per request ÷ the bare floor's, with both servers loaded at the same moment on the same core.

bench/gateway_overhead.py runs its targets one after another; on this shared 2-vCPU VM the machine's speed
moves between those runs (up to 2.5x from one day to the next, +/-0.15 on a ratio within a day). Here the
floor and the gateway (and, with --with-plain, the gateway with `evaluator.enabled: false`) each get their
own wrk at the same time, all servers pinned to the proxy core, so whatever speed the machine has in that
second, it has for all of them: the ratio of their CPU per request repeats to about +/-0.02.

What that costs: the servers take turns on one core and share its caches, a harder condition than running
alone that could weigh more on the process with the larger working set (the gateway). Measured alone, one
after another in alternating order (2026-11-30, bench/HISTORY.md), the medians were the same with ten times the
spread. Read the ratio next to gateway_overhead.py's, not instead of it.

Which server starts first moves its figure: a gateway started after another measured 2-3 % more CPU than
the same code started first (bench/paired_ab.py), and with the floor always started first the gateway's
json ratio at 16 connections came out 1.34 against 1.26-1.29 in the other two orders (2026-12-01). So the
servers are started in every rotation of their order (each one first once), `--rounds` rounds each, and
the medians are over all of them.

    python bench/paired_cpu.py                       # json + stream at C=1/16/64, 2 rotations x 3 rounds x 5 s
    python bench/paired_cpu.py --with-plain --connections 16 --modes json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from bench.load import RunResult, chat_body, run_wrk  # noqa: E402
from bench.proctree import wait_quiet  # noqa: E402
from bench.report import Report, fmt  # noqa: E402
from bench.targets import BENCH_KEY, Target, prepare_load_run, start_floor, start_gateway, start_upstream, stop_all  # noqa: E402

PLAIN = {"evaluator": {"enabled": False}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per start order (every rotation of the servers)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per simultaneous wrk run")
    p.add_argument("--connections", default="1,16,64", help="wrk connections per server")
    p.add_argument("--modes", default="json,stream")
    p.add_argument("--with-plain", action="store_true", help="also the gateway with evaluator.enabled: false")
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--name", default="paired_cpu", help="results file stem under bench/results/")
    return p.parse_args(argv)


def simultaneous(targets: dict[str, Target], body: str, connections: int, duration_s: float,
                 load_cpu: int) -> dict[str, RunResult]:
    """One wrk per server, started together; each result charges its own server's process tree."""
    results: dict[str, RunResult] = {}
    errors: list[BaseException] = []

    def load(name: str) -> None:
        try:
            results[name] = run_wrk(targets[name].url, body, connections=connections, duration_s=duration_s,
                                    server_pid=targets[name].pid, load_cpu=load_cpu, key=BENCH_KEY)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(name,)) for name in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def warm_up(targets: dict[str, Target], load_cpu: int) -> None:
    """Warms pools and lazy imports (json and stream) before anything counts, then waits until every server is
    idle again (what the warm-up started, such as the drift worker's imports, is not measured)."""
    for stream in (False, True):
        simultaneous(targets, chat_body(stream=stream), 16, 1.0, load_cpu)
    for t in targets.values():
        wait_quiet(t.pid)


def one_order(order: list[str], work: Path, args: argparse.Namespace, cells: list[tuple[str, int]],
              runs: dict[tuple[str, int], list[dict[str, RunResult]]], progress: Progress, task: int) -> None:
    """Starts the servers in `order` (after the upstreams), warms them up and appends `--rounds` rounds per cell."""
    running: list[Target] = []
    try:
        upstream = start_upstream(work, args.load_cpu)
        teacher = start_upstream(work, args.load_cpu, name="teacher")
        running += [upstream, teacher]
        targets: dict[str, Target] = {}
        for name in order:
            if name == "floor":
                targets[name] = start_floor(work, args.proxy_cpu, upstream.base_url)
            else:
                targets[name] = start_gateway(work, args.proxy_cpu, upstream.base_url, teacher.base_url, shadow_rate=0.0,
                                              name=name, overrides=PLAIN if name == "gateway-plain" else None)
            running.append(targets[name])
        progress.update(task, description=f"{order[0]} first: warming up")
        warm_up(targets, args.load_cpu)
        for rnd in range(args.rounds):
            for mode, conns in cells:
                progress.update(task, description=f"{order[0]} first: round {rnd + 1}/{args.rounds} {mode} C={conns}")
                runs[(mode, conns)].append(simultaneous(targets, chat_body(stream=mode == "stream"), conns,
                                                        args.duration, args.load_cpu))
                progress.advance(task)
    finally:
        stop_all(running)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    console = Console(width=None if sys.stdout.isatty() else 150)
    work = prepare_load_run(args.load_cpu, "bench-paired-")
    cells = [(mode, int(c)) for mode in args.modes.split(",") if mode for c in args.connections.split(",") if c]
    names = ["floor", "gateway", *(["gateway-plain"] if args.with_plain else [])]
    orders = [names[i:] + names[:i] for i in range(len(names))]
    runs: dict[tuple[str, int], list[dict[str, RunResult]]] = {cell: [] for cell in cells}
    load1 = os.getloadavg()[0]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(orders) * len(cells) * args.rounds)
        for i, order in enumerate(orders):
            (work / f"order-{i + 1}").mkdir()  # each order's servers get fresh stores and their own logs
            one_order(order, work / f"order-{i + 1}", args, cells, runs, progress, task)

    columns = ["scenario", *(f"{n} CPU ms/req" for n in names), "gateway ÷ floor (median, min–max)"]
    if args.with_plain:
        columns += ["plain ÷ floor", "gateway ÷ plain"]
    report = Report(f"CPU per request, servers loaded simultaneously on one core ({len(orders)} start orders x "
                    f"{args.rounds} rounds x {args.duration:g} s)",
                    columns, raw={"args": vars(args), "load1": load1, "runs": {
                        f"{m} C={c}": [{n: r.to_dict() for n, r in rnd.items()} for rnd in rs] for (m, c), rs in runs.items()}})
    for (mode, conns), rounds in runs.items():
        def ratios(a: str, b: str) -> list[float]:
            return [r[a].cpu_ms_per_req / r[b].cpu_ms_per_req for r in rounds
                    if r[a].cpu_ms_per_req and r[b].cpu_ms_per_req]

        gw = ratios("gateway", "floor")
        row = [f"{mode} C={conns}", *(fmt(statistics.median(r[n].cpu_ms_per_req for r in rounds), 3) for n in names),
               f"{fmt(statistics.median(gw), 3)} ({fmt(min(gw), 3)}–{fmt(max(gw), 3)})"]
        if args.with_plain:
            row += [fmt(statistics.median(ratios("gateway-plain", "floor")), 3),
                    fmt(statistics.median(ratios("gateway", "gateway-plain")), 3)]
        report.rows.append(row)
    report.notes.append(f"python bench/paired_cpu.py --rounds {args.rounds} --duration {args.duration:g} "
                        f"--connections {args.connections} --modes {args.modes}{' --with-plain' if args.with_plain else ''}; "
                        f"load average at start {load1:.2f}")
    report.notes.append(f"start orders: {' / '.join(', '.join(o) for o in orders)}; medians over every round of every order")
    report.notes.append("every server pinned to core 0 and loaded at the same moment by its own wrk (core 1): a "
                        "ratio within one round sees one machine speed; sharing the core and its caches weighs "
                        "more on the larger process (alone in alternating order the medians were the same, bench/HISTORY.md)")
    report.notes.append("gateway: auth, routing, metrics, evaluator (shadow offer at rate 0, drift, store); "
                        "gateway-plain: the same with evaluator.enabled: false")
    report.publish(console, args.name, logs=work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
