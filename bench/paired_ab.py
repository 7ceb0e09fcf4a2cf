"""A/B of the gateway's CPU per request: this source tree against another commit, loaded together on one core.

bench/paired_cpu.py's method (every server pinned to the proxy core, each loaded by its own wrk at the same
moment) with two gateways: this tree's and `--base`'s (checked out into a temporary git worktree), next to
the floor. The server started second measured ~2-3 % more CPU a request than the same code started first
(an A/A run, 2026-11-30), so each comparison runs in both start orders and the table gives this tree ÷ base
in each and their geometric mean, which divides that effect out.

    python bench/paired_ab.py --base 745c9d9                     # json + stream at C=16/64, 5 rounds per order
    python bench/paired_ab.py --base HEAD~1 --modes stream --connections 16 --rounds 8
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402

from bench.load import chat_body  # noqa: E402
from bench.paired_cpu import simultaneous, warm_up  # noqa: E402
from bench.report import Report, fmt  # noqa: E402
from bench.targets import REPO, Target, prepare_load_run, start_floor, start_gateway, start_upstream, stop_all  # noqa: E402

ORDERS = (("head", "base"), ("base", "head"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare with (any git revision)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per start order")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per simultaneous wrk run")
    p.add_argument("--connections", default="16,64")
    p.add_argument("--modes", default="json,stream")
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--name", default="paired_ab", help="results file stem under bench/results/")
    return p.parse_args(argv)


def one_order(order: tuple[str, str], trees: dict[str, Path], cells: list[tuple[str, int]], args: argparse.Namespace,
              progress: Progress, task: int) -> dict[tuple[str, int], list[dict[str, float]]]:
    """CPU ms per request of floor, head and base, per cell and round, with the gateways started in `order`."""
    work = prepare_load_run(args.load_cpu, "bench-ab-")
    running: list[Target] = []
    out: dict[tuple[str, int], list[dict[str, float]]] = {cell: [] for cell in cells}
    try:
        upstream = start_upstream(work, args.load_cpu)
        teacher = start_upstream(work, args.load_cpu, name="teacher")
        running += [upstream, teacher]
        targets = {"floor": start_floor(work, args.proxy_cpu, upstream.base_url)}
        running.append(targets["floor"])
        for side in order:
            targets[side] = start_gateway(work, args.proxy_cpu, upstream.base_url, teacher.base_url, shadow_rate=0.0,
                                          name=side, source=trees[side])
            running.append(targets[side])
        warm_up(targets, args.load_cpu)
        for rnd in range(args.rounds):
            for mode, conns in cells:
                progress.update(task, description=f"{order[0]} first: round {rnd + 1}/{args.rounds} {mode} C={conns}")
                results = simultaneous(targets, chat_body(stream=mode == "stream"), conns, args.duration, args.load_cpu)
                bad = {n: r.errors for n, r in results.items() if r.errors}
                if bad:
                    raise RuntimeError(f"errors under load: {bad} (logs in {work})")
                out[(mode, conns)].append({n: r.cpu_ms_per_req for n, r in results.items()})
                progress.advance(task)
    finally:
        stop_all(running)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    base_rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.base], check=True,
                              capture_output=True, text=True).stdout.strip()
    head_rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], check=True,
                              capture_output=True, text=True).stdout.strip()
    cells = [(mode, int(c)) for mode in args.modes.split(",") if mode for c in args.connections.split(",") if c]
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-ab-base-") as tmp:
        base_tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base_tree), base_rev], check=True)
        try:
            trees = {"head": REPO, "base": base_tree}
            runs: dict[tuple[str, str], dict] = {}
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("benchmark", total=len(ORDERS) * len(cells) * args.rounds)
                for order in ORDERS:
                    runs[order] = one_order(order, trees, cells, args, progress, task)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False)

    report = Report(f"CPU per request, this tree ({head_rev}) ÷ {base_rev}, loaded together on one core "
                    f"({args.rounds} x {args.duration:g} s per start order)",
                    ["scenario", "head ÷ floor", "base ÷ floor", "head ÷ base, head first", "head ÷ base, base first",
                     "head ÷ base (geometric mean)"],
                    raw={"args": vars(args), "base": base_rev, "head": head_rev, "load1": load1,
                         "runs": {f"{'-'.join(o)} {m} C={c}": rs for o, per in runs.items() for (m, c), rs in per.items()}})
    for cell in cells:
        def median_ratio(order: tuple[str, str], a: str, b: str) -> float:
            return statistics.median(r[a] / r[b] for r in runs[order][cell] if r[a] and r[b])

        first, second = (median_ratio(order, "head", "base") for order in ORDERS)
        vs_floor = {side: statistics.median(median_ratio(order, side, "floor") for order in ORDERS)
                    for side in ("head", "base")}
        report.rows.append([f"{cell[0]} C={cell[1]}", fmt(vs_floor["head"], 3), fmt(vs_floor["base"], 3),
                            fmt(first, 3), fmt(second, 3), fmt(math.sqrt(first * second), 3)])
    report.notes.append(f"python bench/paired_ab.py --base {args.base} --rounds {args.rounds} --duration {args.duration:g} "
                        f"--connections {args.connections} --modes {args.modes}; load average at start {load1:.2f}")
    report.notes.append("÷ floor columns: the mean of the two orders' medians; below 1 in the last column: this tree "
                        "uses less CPU a request than the base")
    report.publish(console, args.name, logs=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
