"""The embedded demo, as steps the CLI runs in order and the end-to-end test reuses with shorter
timings: build and distill a tiny student, start the real stack (teacher stand-in, vLLM with runtime
LoRA, the gateway with shadow evaluation, Prometheus + Alertmanager or the built-in watcher), send
pre-drift traffic, drift, wait for the alert and the re-distilled version to go live, measure recovery.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.demo.configs import (
    API_KEY_ENV,
    LOGICAL_MODEL,
    WEBHOOK_TOKEN_ENV,
    GatewayPlan,
    render_demo_rules,
    write_alertmanager_config,
    write_gateway_config,
    write_prometheus_config,
)
from gateway.demo.distill import DistilledStudent, distill_initial_student, teacher_examples
from gateway.demo.observe import Observer, Snapshot
from gateway.demo.processes import (
    ManagedProcess,
    MissingBinaryError,
    find_prometheus_binaries,
    free_port,
    start_alertmanager,
    start_gateway,
    start_prometheus,
    start_teacher,
    start_vllm,
    stop_strays,
)
from gateway.demo.student import SERVED_NAME, build_demo_student
from gateway.demo.summary import LoopInputs, StageSummary, loop_rows, summarize, write_report
from gateway.demo.task import TicketGenerator
from gateway.demo.teacher import DEFAULT_NAME as TEACHER_NAME
from gateway.demo.traffic import TrafficLog, gateway_client, run_traffic

Monitoring = Literal["auto", "prometheus", "watcher"]
log = logging.getLogger("distillgate.demo")


@dataclass(slots=True)
class DemoSettings:
    workdir: Path = Path("demo-out")
    report_path: Path = Path("demo-report.html")
    seed: int = 0
    distill_examples: int = 800
    distill_epochs: int = 4  # 800 x 4 epochs: ~100 steps, ~98% on pre-drift tickets
    warmup_requests: int = 150  # pre-drift traffic
    drift: float = 0.8  # share of after-world tickets once drift starts
    recovery_requests: int = 200
    concurrency: int = 4
    rate_per_s: float | None = 15.0
    # While the job trains, traffic only has to feed the promotion stages' shadow samples; less of it
    # leaves the CPU to training (the whole demo shares two cores).
    redistill_rate_per_s: float | None = 5.0
    # Alerts hold for this long before firing, so the job's dataset holds enough drifted pairs.
    alert_for_s: float = 45.0
    shadow_rate: float = 1.0  # the teacher stand-in is free: compare every request
    agreement_threshold: float = 0.8
    alert_timeout_s: float = 300.0  # drift traffic until the alert fires
    promotion_timeout_s: float = 900.0  # then until a re-distilled version is live
    monitoring: Monitoring = "auto"
    vllm_timeout_s: float = 300.0
    train_device: str = "cpu"
    train_dtype: str = "float32"
    vllm_dtype: str = "auto"
    vllm_extra_args: tuple[str, ...] = ()
    progress: bool = True


@dataclass(slots=True)
class Timeline:
    """Wall-clock marks of the scenario's events (None: did not happen)."""

    started: float = field(default_factory=time.time)
    stack_ready: float | None = None
    drift_started: float | None = None
    alert_fired: float | None = None
    alert_names: tuple[str, ...] = ()
    trigger_accepted: float | None = None
    promoted: float | None = None
    promoted_version: str | None = None
    job_outcome: str | None = None  # rejected | failed, when the re-distillation job did not produce a version
    recovery_started: float | None = None
    finished: float | None = None
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # traffic stage -> (start, end)
    phases: dict[str, float] = field(default_factory=dict)  # setup step or traffic stage -> wall seconds


class DemoStack:
    """Every process the demo starts, stopped in reverse order on close (also on Ctrl-C)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[str, ManagedProcess] = {}
        self._exit = contextlib.ExitStack()
        # Runs last: re-distillation jobs the gateway started outlive it by design (own session).
        self._exit.callback(stop_strays, str(workdir.resolve() / "gateway" / "redistill"))

    def add(self, name: str, proc: ManagedProcess) -> ManagedProcess:
        self.processes[name] = proc
        self._exit.callback(proc.stop)
        return proc

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> "DemoStack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(slots=True)
class DemoEnv:
    """What later steps need from earlier ones."""

    settings: DemoSettings
    stack: DemoStack
    api_key: str = field(default_factory=lambda: "dg-demo-" + secrets.token_hex(8))
    webhook_token: str = field(default_factory=lambda: secrets.token_hex(16))
    base_dir: Path | None = None
    student: DistilledStudent | None = None
    gateway_url: str | None = None
    prometheus_url: str | None = None
    monitoring: str = "none"
    monitoring_note: str = ""
    log: TrafficLog = field(default_factory=TrafficLog)
    timeline: Timeline = field(default_factory=Timeline)
    initial_live: str | None = None
    snapshots: list[Snapshot] = field(default_factory=list)
    loop: list[tuple[str, str]] = field(default_factory=list)  # the "loop" rows, set by write_outputs


# --- steps ------------------------------------------------------------------------------------------


def build_base_student(env: DemoEnv) -> Path:
    """Step 1: tokenizer from the task's corpus + a random tiny Llama."""
    env.base_dir = build_demo_student(env.settings.workdir / "student-base", seed=env.settings.seed)
    return env.base_dir


def start_teacher_server(env: DemoEnv) -> ManagedProcess:
    """Step 2: the teacher stand-in, speaking the student's tokens in its logprobs."""
    assert env.base_dir is not None, "build_base_student first"
    return env.stack.add("teacher", start_teacher(tokenizer_dir=env.base_dir, workdir=env.settings.workdir / "teacher"))


def distill_student(env: DemoEnv) -> DistilledStudent:
    """Step 3: teacher answers for pre-drift tickets -> full fine-tune (redistill.train, method=full)."""
    assert env.base_dir is not None
    s = env.settings
    teacher = env.stack.processes["teacher"]
    tickets = TicketGenerator(s.seed + 1, drift=0.0).tickets(s.distill_examples)
    examples = asyncio.run(teacher_examples(tickets, teacher_base_url=f"{teacher.url}/v1", teacher_model=TEACHER_NAME,
                                            logical_model=LOGICAL_MODEL, progress=s.progress))
    env.student = distill_initial_student(env.base_dir, s.workdir / "student-distilled", examples,
                                          epochs=s.distill_epochs, device=s.train_device, dtype=s.train_dtype,
                                          progress=s.progress)
    return env.student


def start_student_server(env: DemoEnv) -> ManagedProcess:
    """Step 4: vLLM serving the distilled student, runtime LoRA on (re-distilled versions load into it)."""
    assert env.student is not None
    s = env.settings
    return env.stack.add("vllm", start_vllm(
        env.student.model_dir, SERVED_NAME, enable_lora=True, max_lora_rank=16, max_model_len=512,
        dtype=s.vllm_dtype, extra_args=s.vllm_extra_args, workdir=s.workdir / "vllm", timeout=s.vllm_timeout_s,
    ))


def choose_monitoring(env: DemoEnv) -> str:
    """Prometheus + Alertmanager when installed (or required); otherwise the gateway's built-in watcher."""
    want = env.settings.monitoring
    if want == "watcher":
        env.monitoring, env.monitoring_note = "watcher", "built-in agreement watcher (asked for)"
        return env.monitoring
    try:
        find_prometheus_binaries()
        env.monitoring, env.monitoring_note = "prometheus", "Prometheus rules -> Alertmanager -> gateway webhook"
    except MissingBinaryError as exc:
        if want == "prometheus":
            raise
        env.monitoring = "watcher"
        env.monitoring_note = f"built-in agreement watcher: {exc}"
    return env.monitoring


def start_gateway_server(env: DemoEnv) -> ManagedProcess:
    """Step 5: the gateway (uvicorn) with shadow sampling, the evaluator and its control API."""
    assert env.student is not None
    s = env.settings
    vllm, teacher = env.stack.processes["vllm"], env.stack.processes["teacher"]
    work = s.workdir / "gateway"
    work.mkdir(parents=True, exist_ok=True)
    plan = GatewayPlan(
        port=free_port(), student_url=f"{vllm.url}/v1", student_model=SERVED_NAME,
        teacher_url=f"{teacher.url}/v1", teacher_model=TEACHER_NAME,
        store_url=f"sqlite:///{(work / 'pairs.db').resolve()}", workdir=work.resolve(),
        shadow_rate=s.shadow_rate, agreement_threshold=s.agreement_threshold,
        watcher_enabled=env.monitoring == "watcher", watcher_for_s=s.alert_for_s,
        device=s.train_device, dtype=s.train_dtype, base_model_dir=env.student.model_dir.resolve(),
    )
    path, _ = write_gateway_config(plan, work / "gateway.yaml")
    env_vars = {API_KEY_ENV: env.api_key, WEBHOOK_TOKEN_ENV: env.webhook_token,
                # Re-distillation jobs inherit this. vLLM's CPU worker keeps a core busy; a job with two
                # torch threads then waits at every barrier for the descheduled one: measured 2.8 s per
                # step with 2 threads against 0.14 s with 1 on this 2-core machine.
                "OMP_NUM_THREADS": os.environ.get("DISTILLGATE_DEMO_JOB_THREADS", "1")}
    proc = env.stack.add("gateway", start_gateway(path, plan.port, env=env_vars, workdir=work))
    env.gateway_url = proc.url
    return proc


def start_monitoring(env: DemoEnv) -> None:
    """Step 6: Prometheus (project rules, demo-short durations) and Alertmanager -> gateway webhook."""
    if env.monitoring != "prometheus":
        return
    s = env.settings
    gw, vllm = env.stack.processes["gateway"], env.stack.processes["vllm"]
    work = s.workdir / "monitoring"
    work.mkdir(parents=True, exist_ok=True)
    am_cfg = write_alertmanager_config(work / "alertmanager.yml", gateway_port=gw.port or 0, token=env.webhook_token)
    am = env.stack.add("alertmanager", start_alertmanager(am_cfg, workdir=work / "alertmanager"))
    rules = render_demo_rules(work / "rules", agreement_threshold=s.agreement_threshold,
                              for_all=f"{s.alert_for_s:g}s")
    prom_cfg = write_prometheus_config(work / "prometheus.yml", rule_files=rules, gateway_port=gw.port or 0,
                                       vllm_port=vllm.port or 0, alertmanager_port=am.port)
    prom = env.stack.add("prometheus", start_prometheus(prom_cfg, workdir=work / "prometheus"))
    env.prometheus_url = prom.url


def start_stack(env: DemoEnv) -> None:
    """Steps 1-6 in order."""
    for step in (build_base_student, start_teacher_server, distill_student, start_student_server,
                 choose_monitoring, start_gateway_server, start_monitoring):
        t0 = time.time()
        step(env)
        env.timeline.phases[f"setup: {step.__name__.replace('_', ' ')}"] = time.time() - t0
    env.timeline.stack_ready = time.time()


# --- traffic stages -----------------------------------------------------------------------------------


StatusHook = Callable[[str, Snapshot | None], None]


async def _observe(env: DemoEnv, observer: Observer, stage: str, on_status: StatusHook | None,
                   done: asyncio.Event, interval_s: float = 1.0) -> None:
    while not done.is_set():
        snap = await observer.snapshot()
        env.snapshots.append(snap)
        _note_events(env, snap)
        if on_status is not None:
            on_status(stage, snap)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), interval_s)


def _note_events(env: DemoEnv, snap: Snapshot) -> None:
    tl = env.timeline
    if tl.drift_started is None:
        return
    if tl.alert_fired is None and snap.alerts:
        tl.alert_fired, tl.alert_names = snap.at, snap.alerts
    accepted = snap.counters.get("distillgate_redistill_triggers_total{status=accepted}", 0.0)
    if tl.trigger_accepted is None and accepted > 0:
        tl.trigger_accepted = snap.at
        if tl.alert_fired is None and env.monitoring == "watcher":
            tl.alert_fired, tl.alert_names = snap.at, ("watcher",)
    if tl.promoted is None and snap.live_version and snap.live_version != env.initial_live:
        tl.promoted, tl.promoted_version = snap.at, snap.live_version
    for status in ("rejected", "failed"):
        if snap.counters.get(f"distillgate_redistill_jobs_total{{status={status}}}", 0.0) > 0:
            tl.job_outcome = tl.job_outcome or status


async def _stage(env: DemoEnv, stage: str, *, drift: float, count: int | None, until: Callable[[], bool] | None,
                 deadline_s: float | None, on_status: StatusHook | None, seed_offset: int,
                 rate_per_s: float | None = None) -> int:
    s = env.settings
    assert env.gateway_url is not None
    client = gateway_client(env.gateway_url, env.api_key)
    observer = Observer(env.gateway_url, env.api_key, LOGICAL_MODEL, env.prometheus_url)
    gen = TicketGenerator(s.seed + seed_offset, drift=drift)
    tickets = gen.tickets(count) if count is not None else iter(gen)
    t_end = time.time() + deadline_s if deadline_s else None

    def stop() -> bool:
        return (until is not None and until()) or (t_end is not None and time.time() > t_end)

    done = asyncio.Event()
    watch = asyncio.create_task(_observe(env, observer, stage, on_status, done))
    started = time.time()
    try:
        return await run_traffic(client, LOGICAL_MODEL, tickets, stage=stage, log=env.log,
                                 concurrency=s.concurrency, rate_per_s=rate_per_s or s.rate_per_s, stop=stop)
    finally:
        done.set()
        await watch
        await observer.close()
        await client.close()
        env.timeline.windows[stage] = (started, time.time())
        env.timeline.phases[f"traffic: {stage}"] = time.time() - started


async def record_initial_version(env: DemoEnv) -> str | None:
    observer = Observer(env.gateway_url or "", env.api_key, LOGICAL_MODEL, env.prometheus_url)
    try:
        env.initial_live = (await observer.snapshot()).live_version
    finally:
        await observer.close()
    return env.initial_live


async def warmup_traffic(env: DemoEnv, on_status: StatusHook | None = None) -> int:
    """Stage "before": pre-drift tickets; the student agrees with the teacher."""
    await record_initial_version(env)
    return await _stage(env, "before", drift=0.0, count=env.settings.warmup_requests, until=None, deadline_s=None,
                        on_status=on_status, seed_offset=100)


async def drift_until_alert(env: DemoEnv, on_status: StatusHook | None = None) -> bool:
    """Stage "drift": after-world tickets until an alert fires (or the trigger is accepted)."""
    env.timeline.drift_started = env.timeline.drift_started or time.time()
    tl = env.timeline
    await _stage(env, "drift", drift=env.settings.drift, count=None,
                 until=lambda: tl.alert_fired is not None or tl.trigger_accepted is not None,
                 deadline_s=env.settings.alert_timeout_s, on_status=on_status, seed_offset=200)
    return tl.alert_fired is not None or tl.trigger_accepted is not None


async def drift_until_promoted(env: DemoEnv, on_status: StatusHook | None = None) -> bool:
    """Stage "redistill": keep drifted traffic flowing (promotion stages need shadow samples) until a
    re-distilled version is live."""
    tl = env.timeline
    # Ends early when the job was rejected by the gate or failed: no version will come (cooldown).
    await _stage(env, "redistill", drift=env.settings.drift, count=None,
                 until=lambda: tl.promoted is not None or tl.job_outcome is not None,
                 deadline_s=env.settings.promotion_timeout_s, on_status=on_status, seed_offset=300,
                 rate_per_s=env.settings.redistill_rate_per_s)
    return tl.promoted is not None


async def recovery_traffic(env: DemoEnv, on_status: StatusHook | None = None) -> int:
    """Stage "recovery": drifted tickets served by the promoted version."""
    env.timeline.recovery_started = time.time()
    return await _stage(env, "recovery", drift=env.settings.drift, count=env.settings.recovery_requests, until=None,
                        deadline_s=None, on_status=on_status, seed_offset=400)


async def run_traffic_stages(env: DemoEnv, on_status: StatusHook | None = None) -> None:
    await warmup_traffic(env, on_status)
    if await drift_until_alert(env, on_status) and await drift_until_promoted(env, on_status):
        await recovery_traffic(env, on_status)
    env.timeline.finished = time.time()


def write_outputs(env: DemoEnv) -> tuple[list[StageSummary], Path]:
    """The summary rows, the evaluator's report of the pair store, and demo-report.html."""
    s = env.settings
    rows = summarize(env.log)
    try:
        evaluator_report = _evaluator_report(env)
    except Exception as exc:  # a secondary report must not cost the run its summary
        log.warning("evaluator report failed: %s: %s", type(exc).__name__, exc)
        evaluator_report = None
    tl = env.timeline
    marks = {"drift": tl.drift_started, "alert": tl.alert_fired, "live": tl.promoted}
    facts = {
        "monitoring": env.monitoring_note or env.monitoring,
        "student": f"{env.student.model_dir if env.student else '—'}",
        "initial distillation": (f"{env.student.result.steps} steps, loss {env.student.result.loss}, "
                                 f"best val loss {env.student.result.best_val_loss:.4f}")
        if env.student and env.student.result.best_val_loss is not None else "—",
        "alert": f"{', '.join(tl.alert_names)} after {tl.alert_fired - tl.drift_started:.0f}s of drift"
        if tl.alert_fired and tl.drift_started else "did not fire",
        "promoted version": f"{tl.promoted_version} after {tl.promoted - tl.drift_started:.0f}s of drift"
        if tl.promoted and tl.promoted_version and tl.drift_started else f"none (job {tl.job_outcome or 'unfinished'})",
    }
    env.loop = loop_rows(LoopInputs(
        snapshots=env.snapshots, windows=tl.windows, phases=tl.phases, drift_started=tl.drift_started,
        alert_fired=tl.alert_fired, trigger_accepted=tl.trigger_accepted, promoted=tl.promoted,
        versions=_final_versions(env), promoted_version=tl.promoted_version))
    facts.update(env.loop)
    path = write_report(s.report_path, rows=rows, outcomes=env.log.outcomes, snapshots=env.snapshots, marks=marks,
                        facts=facts, evaluator_report=evaluator_report)
    return rows, path


def _final_versions(env: DemoEnv) -> tuple[dict[str, Any], ...]:
    """One versions call while the stack is up (gate reports); the last snapshot's list when it fails."""
    last = env.snapshots[-1].versions if env.snapshots else ()

    async def fetch() -> tuple[dict[str, Any], ...]:
        observer = Observer(env.gateway_url or "", env.api_key, LOGICAL_MODEL, None)
        try:
            return (await observer.versions())[2]
        finally:
            await observer.close()

    if not env.gateway_url:
        return last
    try:
        return asyncio.run(fetch()) or last
    except Exception as exc:  # a missing gate report must not cost the run its summary
        log.warning("versions call failed: %s: %s", type(exc).__name__, exc)
        return last


def _evaluator_report(env: DemoEnv) -> Path | None:
    """evaluator.report over the gateway's pair store (None when there is nothing to read)."""
    cfg_path = env.settings.workdir / "gateway" / "gateway.yaml"
    if not cfg_path.exists():
        return None
    from evaluator.report import build_report
    from evaluator.report_html import render_html
    from evaluator.store import PairStore
    from gateway.config import load_config

    config = load_config(cfg_path, environ={})
    store = PairStore(config.evaluator.store.url, config.evaluator.store)
    try:
        now = time.time()
        report = build_report(store, config.models, config.evaluator, since=env.timeline.started - 60, until=now)
    finally:
        store.close()
    out = env.settings.report_path.with_name("demo-evaluator-report.html")
    out.write_text(render_html(report))
    return out


@contextlib.contextmanager
def demo_env(settings: DemoSettings, *, clean: bool = True) -> Iterator[DemoEnv]:
    """A fresh work dir and a stack that is torn down however the block ends (Ctrl-C included)."""
    if clean and settings.workdir.exists():
        shutil.rmtree(settings.workdir)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with DemoStack(settings.workdir) as stack:
        yield DemoEnv(settings=settings, stack=stack)


def run_scenario(settings: DemoSettings, on_status: StatusHook | None = None) -> tuple[DemoEnv, list[StageSummary], Path]:
    """Every step, start to finish, children stopped on return (for tests: pass short settings)."""
    with demo_env(settings) as env:
        start_stack(env)
        asyncio.run(run_traffic_stages(env, on_status))
        rows, report = write_outputs(env)
        return env, rows, report
