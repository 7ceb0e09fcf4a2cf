"""What the evaluator costs the gateway process per request: process CPU time (every thread: event loop,
store writer, drift) while Evaluator.served is driven at a fixed rate, against the same paced
loop with the evaluator off, in the same run.

No network: call_other answers at once (a fast teacher), so the number is the evaluator's own work.
Pin the process to one core to mimic the gateway (`taskset -c 0`).

    python bench/evaluator_hot_path.py                      # 2000 req/s x 10 s, default settings
    python bench/evaluator_hot_path.py --rate 2000 --seconds 5 --override store.served_sample_rate=1.0
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from evaluator.records import ExchangeRecord  # noqa: E402
from evaluator.service import Evaluator  # noqa: E402
from evaluator.settings import EvaluatorSettings, ModelEvalSettings, ScorerSettings, ShadowSettings  # noqa: E402

LABELS = ["billing", "refund", "account", "shipping"]
WORDS = "my order arrived late and the invoice shows a double charge please help me with the refund".split()


def record(i: int) -> ExchangeRecord:
    prompt = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(8 + i % 7)) + f" #{i}"
    return ExchangeRecord(
        request_id=f"dg-bench-{i:x}", model="support", route="student", version="base", endpoint="chat",
        request={"model": "support", "messages": [{"role": "user", "content": prompt}], "temperature": 0},
        response_text=f"intent: {LABELS[i % 4]}", finish_reason="stop", prompt_tokens=24, completion_tokens=4,
        latency_s=0.02, token_logprobs=(-0.1, -0.3, -0.05, -0.2),
    )


def apply_override(doc: dict, dotted: str) -> None:
    path, _, raw = dotted.partition("=")
    *parents, leaf = path.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    try:
        value: object = float(raw) if "." in raw or "e" in raw else int(raw)
    except ValueError:
        value = raw
    doc[leaf] = value


async def drive(evaluator: Evaluator | None, rate: float, seconds: float) -> tuple[int, float, float]:
    """Paced loop: every tick, build the records due and hand them over. Returns (n, cpu_s, wall_s)."""
    interval = 0.005  # the loop wakes 200 times a second, as an event loop with traffic does
    n = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + seconds
    while (now := time.perf_counter()) < deadline:
        due = int(rate * (now - wall0))  # paced by the clock, so slow ticks do not lower the rate
        while n < due:
            rec = record(n)
            if evaluator is not None:
                evaluator.served(rec, key_name="bench")
            n += 1
        await asyncio.sleep(interval)
    return n, time.process_time() - cpu0, time.perf_counter() - wall0


async def run_on(settings: EvaluatorSettings, shadow_rate: float, rate: float, seconds: float) -> tuple[int, float, float, float]:
    models = {"support": ModelEvalSettings(shadow=ShadowSettings(rate=shadow_rate),
                                           scorer=ScorerSettings(kind="label", label_pattern=r"intent:\s*(\w+)",
                                                                 labels=LABELS))}

    async def call_other(served: ExchangeRecord) -> ExchangeRecord:
        return ExchangeRecord(request_id=served.request_id, model=served.model, route="teacher", version="teacher",
                              endpoint="chat", request=served.request, response_text=served.response_text,
                              prompt_tokens=24, completion_tokens=4)

    ev = Evaluator(settings, models, call_other, registry=CollectorRegistry())
    await ev.start()
    await drive(ev, rate, 1.0)  # warm-up: windows fill, the first drift comparison runs
    n, cpu, wall = await drive(ev, rate, seconds)
    t0 = time.process_time()
    await ev.stop()  # what is still queued is paid for too
    return n, cpu + (time.process_time() - t0), wall, ev.store.queue_depth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=2000.0, help="requests per second handed to the evaluator")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--shadow-rate", type=float, default=0.1)
    p.add_argument("--override", action="append", default=[], help="evaluator setting, e.g. drift.every_n=25")
    args = p.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    with tempfile.TemporaryDirectory() as tmp:
        doc: dict = {"store": {"url": f"sqlite:///{tmp}/bench.db"}}
        for o in args.override:
            apply_override(doc, o)
        settings = EvaluatorSettings.model_validate(doc)
        n_off, cpu_off, wall_off = asyncio.run(drive(None, args.rate, args.seconds))
        n_on, cpu_on, wall_on, _ = asyncio.run(run_on(settings, args.shadow_rate, args.rate, args.seconds))
    off_ms, on_ms = 1000 * cpu_off / n_off, 1000 * cpu_on / n_on
    table = Table(title=f"evaluator hot path, {args.rate:.0f} req/s x {args.seconds:.0f} s, shadow rate "
                        f"{args.shadow_rate}, cores {sorted(os.sched_getaffinity(0))}")
    for col in ("", "requests", "req/s", "CPU ms/req", "added ms/req", "ratio vs off"):
        table.add_column(col, justify="right")
    table.add_row("evaluator off", str(n_off), f"{n_off / wall_off:.0f}", f"{off_ms:.4f}", "", "1.00")
    table.add_row("evaluator on", str(n_on), f"{n_on / wall_on:.0f}", f"{on_ms:.4f}", f"{on_ms - off_ms:.4f}",
                  f"{on_ms / off_ms:.2f}")
    console.print(table)
    if args.override:
        console.print("overrides: " + ", ".join(args.override))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
