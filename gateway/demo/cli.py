"""`distillgate demo`: the whole loop on this machine, with a live status panel (gateway CLI plug-in)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real imports live in the handlers: `distillgate serve` must not load torch for a plug-in
    from rich.console import Console

    from gateway.demo.scenario import DemoEnv, DemoSettings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the embedded demo: distill, serve, drift, alert, re-distill, recover")
    parser.add_argument("--workdir", type=Path, default=Path("demo-out"), help="scratch dir (wiped first)")
    parser.add_argument("--report", type=Path, default=Path("demo-report.html"), help="HTML report path")
    parser.add_argument("--monitoring", choices=["auto", "prometheus", "watcher"], default="auto",
                        help="auto: Prometheus + Alertmanager when installed, else the built-in watcher")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smaller distillation and traffic (a rougher demo)")
    parser.add_argument("--train-device", default="cpu", help="torch device for distillation, e.g. cuda")
    parser.add_argument("--vllm-dtype", default="auto")
    parser.set_defaults(handler=run_demo, needs_config=False)


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    from gateway.demo.scenario import DemoSettings

    s = DemoSettings(workdir=args.workdir, report_path=args.report, monitoring=args.monitoring, seed=args.seed,
                     train_device=args.train_device, vllm_dtype=args.vllm_dtype)
    if args.quick:
        s.warmup_requests, s.recovery_requests = 80, 100
    return s


def _setup(env: DemoEnv, console: Console) -> None:
    from gateway.demo.scenario import (
        build_base_student,
        choose_monitoring,
        distill_student,
        start_gateway_server,
        start_monitoring,
        start_student_server,
        start_teacher_server,
    )

    steps = [
        ("building the tiny student (tokenizer + Llama)", build_base_student),
        ("starting the teacher stand-in", start_teacher_server),
        ("distilling the student on the teacher's answers to pre-drift tickets", distill_student),
        ("starting vLLM with runtime LoRA (40-60 s on CPU)", start_student_server),
        ("choosing monitoring", choose_monitoring),
        ("starting the gateway (shadow sampling + evaluator)", start_gateway_server),
        ("starting Prometheus + Alertmanager", start_monitoring),
    ]
    for text, step in steps:
        if step is start_monitoring and env.monitoring != "prometheus":
            console.print(f"[yellow]monitoring:[/] {env.monitoring_note}")
            continue
        t0 = time.time()
        with console.status(text + " ..."):
            step(env)
        env.timeline.phases[f"setup: {step.__name__.replace('_', ' ')}"] = time.time() - t0
        console.print(f"[green]✓[/] {text} [dim]({time.time() - t0:.0f}s)[/]")
    env.timeline.stack_ready = time.time()


def run_demo(args: argparse.Namespace, config: Any = None) -> int:
    from rich.console import Console
    from rich.live import Live

    from gateway.demo.observe import Snapshot
    from gateway.demo.processes import MissingBinaryError, ProcessStartError
    from gateway.demo.scenario import demo_env, run_traffic_stages, write_outputs
    from gateway.demo.summary import loop_table, status_panel, summary_table

    console = Console()
    for noisy in ("httpx", "httpx2", "openai", "alembic", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = settings_from_args(args)
    settings.progress = console.is_terminal
    try:
        with demo_env(settings) as env:
            _setup(env, console)
            console.print(f"gateway: {env.gateway_url}/v1  (API key {env.api_key}, model support-intent)")
            with Live(console=console, refresh_per_second=2, transient=False) as live:
                def on_status(stage: str, snap: Snapshot | None) -> None:
                    live.update(status_panel(stage, snap, env.log, env.timeline.started, env.monitoring))

                asyncio.run(run_traffic_stages(env, on_status))
            rows, report = write_outputs(env)
            console.print(summary_table(rows))
            console.print(loop_table(env.loop))
            tl = env.timeline
            console.print(f"alert: {'fired: ' + ', '.join(tl.alert_names) if tl.alert_fired else '[red]did not fire[/]'}; "
                          f"re-distilled version live: {tl.promoted_version or '[red]none[/]'}"
                          + (f" (job {tl.job_outcome})" if tl.job_outcome and not tl.promoted else ""))
            console.print(f"report: {report.resolve()}")
            return 0 if tl.promoted else 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every child process was stopped[/]")
        return 130
    except (ProcessStartError, MissingBinaryError) as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
