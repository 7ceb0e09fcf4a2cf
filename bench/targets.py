"""The servers a benchmark puts load on: the fake upstream itself, the floor proxy, nginx, LiteLLM's proxy
and the distillgate gateway — each a real process on 127.0.0.1, pinned with taskset to one core."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.load import wrk_available
from gateway.demo.processes import ManagedProcess, free_port, wait_http

REPO = Path(__file__).resolve().parent.parent
BENCH_KEY = "sk-bench-0123456789abcdef"
CHAT_PATH = "/v1/chat/completions"


class TargetUnavailable(RuntimeError):
    """A target cannot run here (binary or package missing); the message says how to get it."""


@dataclass
class Target:
    name: str
    base_url: str
    process: ManagedProcess

    @property
    def url(self) -> str:
        return self.base_url + CHAT_PATH

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop()


def stop_all(running: list[Target]) -> None:
    """Stop servers in reverse start order; one that will not die must not leave the others running."""
    for target in reversed(running):
        try:
            target.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest, then say what failed
            print(f"warning: stopping {target.name} (pid {target.pid}) failed: {exc!r}", file=sys.stderr)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the callers' `finally` blocks stop every server they started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def prepare_load_run(load_cpu: int, prefix: str) -> Path:
    """What every wrk benchmark does first: check wrk, move this process (the load side) to `load_cpu`,
    stop servers cleanly on SIGTERM, and make a work directory for the servers' configs and logs."""
    wrk_available()
    os.sched_setaffinity(0, {load_cpu})
    exit_cleanly_on_sigterm()
    return Path(tempfile.mkdtemp(prefix=prefix))


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


def start_upstream(work: Path, cpu: int, *, name: str = "upstream", delay_ms: int = 0, chunks: int = 8) -> Target:
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "fake_upstream.py"), "--port", str(port),
            "--delay-ms", str(delay_ms), "--chunks", str(chunks)]
    proc = ManagedProcess(name, _pinned(cpu, argv), work / f"{name}.log", port=port, grace_s=5).start()
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", 30, process=proc, interval_s=0.1)
    return Target(name, base, proc)


def start_floor(work: Path, cpu: int, upstream: str) -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bench.floor_proxy:app", "--app-dir", str(REPO), "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--workers", "1", "--no-access-log",
            "--no-proxy-headers",  # as the gateway serves by default (server.proxy_headers: false)
            "--log-level", "warning"]
    env = {**os.environ, "FLOOR_UPSTREAM": upstream}
    proc = ManagedProcess("floor", _pinned(cpu, argv), work / "floor.log", env=env, cwd=REPO, port=port, grace_s=5).start()
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", 60, process=proc, interval_s=0.2)
    return Target("floor", base, proc)


def start_nginx(work: Path, cpu: int, upstream: str) -> Target:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        raise TargetUnavailable("nginx is not installed: run `make sysdeps` (Debian nginx-light)")
    port = free_port()
    up_host = upstream.removeprefix("http://")
    prefix = work / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        {user}
        worker_processes 1;
        error_log {prefix}/error.log warn;
        pid {prefix}/nginx.pid;
        events {{ worker_connections 4096; }}
        http {{
          access_log off;
          client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
          fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
          upstream bench_upstream {{ server {up_host}; keepalive 128; }}
          server {{
            listen 127.0.0.1:{port};
            location / {{
              proxy_pass http://bench_upstream;
              proxy_http_version 1.1;
              proxy_set_header Connection "";
              proxy_buffering off;
            }}
          }}
        }}
    """))
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
    proc = ManagedProcess("nginx", _pinned(cpu, argv), work / "nginx.log", port=port, grace_s=5).start()
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", 30, process=proc, interval_s=0.1)
    return Target("nginx", base, proc)


LITELLM_HINT = (
    "LiteLLM's proxy needs the `litellm[proxy]` extras; the `litellm-proxy` wheel that extra pins is not on this "
    "index, so install its imports directly: .venv/bin/pip install backoff fastapi-sso apscheduler rq semver "
    "expression soundfile"
)


def start_litellm(work: Path, cpu: int, upstream: str, *, timeout_s: float = 300) -> Target:
    cli = Path(sys.executable).with_name("litellm")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
    check = subprocess.run([sys.executable, "-c", "import litellm.proxy.proxy_server"], env=env,
                           capture_output=True, text=True, timeout=300)
    if not cli.exists() or check.returncode != 0:
        missing = (check.stderr.strip().splitlines() or ["litellm CLI not found"])[-1]
        raise TargetUnavailable(f"{missing}. {LITELLM_HINT}")
    port = free_port()
    cfg = work / "litellm.yaml"
    cfg.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "bench", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_base": upstream + "/v1", "api_key": "sk-upstream"}}],
        "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False},
        "general_settings": {"master_key": BENCH_KEY},
    }))
    argv = [str(cli), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = ManagedProcess("litellm", _pinned(cpu, argv), work / "litellm.log", env=env, port=port, grace_s=10).start()
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/health/liveliness", timeout_s, process=proc, interval_s=0.5)
    return Target("litellm", base, proc)


def gateway_config(port: int, student_url: str, teacher_url: str, store_dir: Path, *, shadow_rate: float) -> dict:
    """Auth on (one key), routing to the student, metrics on, shadow sampling at `shadow_rate`."""
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"mode": "keys", "keys": [{"name": "bench", "env": "DISTILLGATE_BENCH_KEY", "models": ["*"]}]},
        "upstreams": {
            "student": {"kind": "openai", "base_url": student_url + "/v1"},
            "teacher": {"kind": "openai", "base_url": teacher_url + "/v1"},
        },
        "models": {
            "bench": {
                "student": {"upstream": "student", "model": "bench-student"},
                "teacher": {"upstream": "teacher", "model": "bench-teacher"},
                "shadow": {"rate": shadow_rate},
                "scorer": {"kind": "normalized"},
            }
        },
        # A short drain keeps shutdown between benchmark phases quick; nothing here needs the backlog.
        "evaluator": {"drain_timeout_s": 2.0, "store": {"url": f"sqlite:///{store_dir}/pairs.db"}},
    }


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def start_gateway(work: Path, cpu: int, upstream: str, teacher: str, *, shadow_rate: float,
                  name: str = "gateway", overrides: dict | None = None, timeout_s: float = 300,
                  source: Path = REPO) -> Target:
    """`overrides` are merged into the generated config (e.g. to switch one evaluator feature off); `source`:
    the source tree the gateway's code is imported from (another commit's worktree, for an A/B)."""
    try:
        import gateway.cli  # noqa: F401
    except ImportError as exc:
        raise TargetUnavailable(f"gateway.cli cannot be imported yet ({exc})") from None
    port = free_port()
    store = work / f"{name}-store"
    store.mkdir(parents=True, exist_ok=True)
    cfg = work / f"{name}.yaml"
    config = _merge(gateway_config(port, upstream, teacher, store, shadow_rate=shadow_rate), overrides or {})
    cfg.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "gateway.cli", "--config", str(cfg), "serve", "--port", str(port)]
    env = {**os.environ, "DISTILLGATE_BENCH_KEY": BENCH_KEY}
    proc = ManagedProcess(name, _pinned(cpu, argv), work / f"{name}.log", env=env, cwd=source, port=port, grace_s=30).start()
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", timeout_s, process=proc, interval_s=0.5)
    return Target(name, base, proc)
