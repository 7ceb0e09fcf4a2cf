"""Start and stop the real processes the demo and the tests run against (vLLM, Prometheus,
Alertmanager, Postgres, the gateway): free ports, readiness waits, and clean shutdown.

Every child gets its own process group so that stopping it also stops what it spawned (vLLM runs an
engine-core subprocess); nothing is left running after ``stop()`` or leaving a ``with`` block.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

POSTGRES_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
PROMETHEUS_BINARIES = ("prometheus", "promtool", "prometheus-alertmanager", "amtool")


class ProcessStartError(RuntimeError):
    """A child process did not become ready; the message names the cause and ends with its log tail."""

    def __init__(self, name: str, cause: str, log_tail: str = "") -> None:
        self.name = name
        self.cause = cause
        self.log_tail = log_tail
        text = f"{name} failed to start: {cause}"
        if log_tail:
            text += f"\n--- last lines of its log ---\n{log_tail}"
        super().__init__(text)


class MissingBinaryError(FileNotFoundError):
    """A system binary the demo or a test needs is not installed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ManagedProcess:
    """A child process in its own process group, logging to a file; a context manager.

    ``stop()`` sends ``stop_signal`` to the whole group, waits ``grace_s``, then SIGKILLs the group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        grace_s: float = 15.0,
        url: str | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.grace_s = grace_s
        self.url = url
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "ManagedProcess":
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    cwd=self.cwd,
                    user=self.user,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise ProcessStartError(self.name, f"executable not found: {self.argv[0]}") from exc
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> int | None:
        """Stop the process group; returns the exit code (None if it was never started)."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self._proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait(timeout=10)
        # Children that outlived the leader (e.g. vLLM's engine core) are still in the group.
        self._signal_group(signal.SIGKILL)
        return self._proc.returncode

    def fail(self, cause: str) -> ProcessStartError:
        """Stop the process and build the error that explains why it is not usable."""
        self.stop()
        return ProcessStartError(self.name, cause, self.log_tail())

    def __enter__(self) -> "ManagedProcess":
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, url={self.url!r})"


def wait_http(
    url: str,
    timeout: float,
    *,
    process: ManagedProcess | None = None,
    expect_status: int = 200,
    interval_s: float = 0.25,
) -> None:
    """Poll ``url`` until it answers ``expect_status``.

    Raises ProcessStartError at once if ``process`` exits meanwhile, TimeoutError (or, with a process,
    ProcessStartError naming the timeout) when ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise process.fail(f"exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == expect_status:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code == expect_status:
                return
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(interval_s)
    if process is not None:
        raise process.fail(f"{url} not ready after {timeout:.0f}s (last: {last})")
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s (last: {last})")


def _workdir(path: str | Path | None, prefix: str) -> Path:
    return Path(path) if path is not None else Path(tempfile.mkdtemp(prefix=prefix))


# --- Postgres ---------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The directory holding initdb/postgres/pg_isready, or None when Postgres is not installed."""
    override = os.environ.get("DISTILLGATE_PG_BIN")
    for cand in ([override] if override else []) + list(POSTGRES_BIN_DIRS):
        if cand and (Path(cand) / "initdb").exists() and (Path(cand) / "postgres").exists():
            return Path(cand)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer(ManagedProcess):
    """A throwaway cluster; ``sqlalchemy_url`` is what the evaluator's store takes. ``stop()`` deletes it."""

    base_dir: Path

    @property
    def sqlalchemy_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> int | None:
        code = super().stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
        return code


def start_postgres(tmpdir: str | Path | None = None, *, port: int | None = None, timeout: float = 60.0) -> PostgresServer:
    """initdb + postgres in a fresh directory under ``tmpdir`` (socket dir there too), trust auth,
    listening on 127.0.0.1:port; the directory is removed on ``stop()``.

    Postgres refuses to run as root, so as root it runs as the ``postgres`` system user and the
    directory goes under the system temp dir: pytest's 0700 tmp root would be unreachable for that user.
    """
    bindir = postgres_bin_dir()
    if bindir is None:
        raise MissingBinaryError("Postgres is not installed (no initdb); install postgresql-15 (scripts/sysdeps.sh)")
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="pg-", dir=None if as_root or tmpdir is None else tmpdir))
    user = "postgres" if as_root else None
    if user:
        shutil.chown(base, user, user)
    data = base / "data"
    port = port or free_port()
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
        capture_output=True,
        text=True,
        user=user,
        cwd=base,
    )
    if init.returncode != 0:
        raise ProcessStartError("postgres", f"initdb exited {init.returncode}", (init.stdout + init.stderr)[-4000:])
    argv = [
        str(bindir / "postgres"), "-D", str(data), "-p", str(port),
        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={base}",
        "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
    ]
    log = base / "postgres.log"
    if user:
        log.touch()
        shutil.chown(log, user, user)
    # SIGINT = "fast" shutdown: rolls back open sessions instead of waiting for them (SIGTERM waits).
    server = PostgresServer("postgres", argv, log, user=user, cwd=base, stop_signal=signal.SIGINT, port=port)
    server.base_dir = base
    server.start()
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise server.fail(f"exited with code {server.returncode}")
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
            capture_output=True,
        )
        if ready.returncode == 0:
            return server
        if time.monotonic() > deadline:
            raise server.fail(f"not accepting connections on port {port} after {timeout:.0f}s")
        time.sleep(0.2)


# --- Prometheus and Alertmanager --------------------------------------------------------------------


def find_prometheus_binaries() -> dict[str, str]:
    """Paths of prometheus, promtool, prometheus-alertmanager and amtool; raises MissingBinaryError."""
    found = {name: shutil.which(name) for name in PROMETHEUS_BINARIES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise MissingBinaryError(
            f"missing {', '.join(missing)}: install Debian packages prometheus and prometheus-alertmanager "
            "(scripts/sysdeps.sh)"
        )
    return {name: str(path) for name, path in found.items()}


def start_prometheus(
    config_path: str | Path,
    *,
    port: int | None = None,
    workdir: str | Path | None = None,
    binary: str = "prometheus",
    alert_resend_delay: str = "2s",
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> ManagedProcess:
    """Prometheus with its own TSDB dir; ``.url`` is its base URL (``/api/v1/...`` under it).

    Alerts that fire before Prometheus has discovered its Alertmanagers (~5 s after start) are only
    re-sent after ``alert_resend_delay`` (Prometheus' default: 1 minute), hence the short default.
    """
    work = _workdir(workdir, "prometheus-")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        "prometheus",
        [
            shutil.which(binary) or binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            f"--rules.alert.resend-delay={alert_resend_delay}",
            *extra_args,
        ],
        work / "prometheus.log",
        url=url,
        port=port,
    ).start()
    wait_http(f"{url}/-/ready", timeout, process=proc)
    return proc


def start_alertmanager(
    config_path: str | Path,
    *,
    port: int | None = None,
    workdir: str | Path | None = None,
    binary: str = "prometheus-alertmanager",
    timeout: float = 30.0,
) -> ManagedProcess:
    """Alertmanager without clustering; ``.url`` is its base URL."""
    work = _workdir(workdir, "alertmanager-")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    proc = ManagedProcess(
        "alertmanager",
        [
            shutil.which(binary) or binary,
            f"--config.file={config_path}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        work / "alertmanager.log",
        url=url,
        port=port,
    ).start()
    wait_http(f"{url}/-/ready", timeout, process=proc)
    return proc


# --- vLLM and the gateway ---------------------------------------------------------------------------


def start_vllm(
    model_dir: str | Path,
    served_name: str,
    *,
    port: int | None = None,
    enable_lora: bool = True,
    max_lora_rank: int = 16,
    max_loras: int = 4,
    max_model_len: int = 512,
    dtype: str = "auto",
    enforce_eager: bool = True,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    workdir: str | Path | None = None,
    timeout: float = 300.0,
    python: str = sys.executable,
) -> ManagedProcess:
    """One vLLM OpenAI-compatible server; ``.url`` is its base URL, the API is under ``/v1``.

    Device-specific settings come in through ``dtype``/``extra_args`` (e.g. ``--gpu-memory-utilization``
    on a GPU); the CPU KV-cache size is only read by the CPU backend.
    """
    work = _workdir(workdir, "vllm-")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", served_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--dtype", dtype,
        "--disable-uvicorn-access-log",
    ]
    if enforce_eager:
        argv.append("--enforce-eager")
    if enable_lora:
        argv += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras)]
    argv += list(extra_args)
    child_env = dict(os.environ)
    child_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if "VLLM_CPU_OMP_THREADS_BIND" not in child_env:
        # vLLM's CPU backend pins its worker thread to a core, and that thread does not sleep while requests
        # come in. On the kernel here (Linux 6.18) a process started or re-pinned onto that core then waited
        # until the worker left it: next to a loaded, pinned vLLM, 4 of 4 fresh `import torch` processes were
        # still stuck after 30 s, and a re-distillation job sat in its start-up for 50-190 s (once past a CI
        # run's 15 minutes). Unpinned, the kernel moves the worker aside: 10 of 10 finished (1.8-26 s). These
        # servers share a few cores with everything else, so they do not pin; threads as vLLM's binding
        # would have used (one core left for the rest).
        child_env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        child_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
    child_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    child_env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    child_env.update(env or {})
    proc = ManagedProcess("vllm", argv, work / "vllm.log", env=child_env, url=url, port=port, grace_s=20.0).start()
    wait_http(f"{url}/health", timeout, process=proc, interval_s=0.5)
    return proc


def start_gateway(
    config_path: str | Path,
    port: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    workdir: str | Path | None = None,
    timeout: float = 60.0,
    python: str = sys.executable,
) -> ManagedProcess:
    """``python -m gateway.cli --config F serve --port P``, ready when ``/healthz`` answers 200."""
    work = _workdir(workdir, "gateway-")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    child_env = dict(os.environ)
    child_env.update(env or {})
    proc = ManagedProcess(
        "gateway",
        [python, "-m", "gateway.cli", "--config", str(config_path), "serve", "--port", str(port)],
        work / "gateway.log",
        env=child_env,
        url=url,
        port=port,
    ).start()
    wait_http(f"{url}/healthz", timeout, process=proc)
    return proc


def start_teacher(
    *,
    port: int | None = None,
    served_name: str = "demo-teacher",
    tokenizer_dir: str | Path | None = None,
    latency_s: float = 0.0,
    workdir: str | Path | None = None,
    timeout: float = 30.0,
    python: str = sys.executable,
) -> ManagedProcess:
    """The demo's teacher stand-in (gateway.demo.teacher) as its own process; API under ``.url + "/v1"``."""
    work = _workdir(workdir, "teacher-")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [python, "-m", "gateway.demo.teacher", "--port", str(port), "--model-name", served_name,
            "--latency-s", str(latency_s)]
    if tokenizer_dir is not None:
        argv += ["--tokenizer", str(tokenizer_dir)]
    proc = ManagedProcess("demo-teacher", argv, work / "teacher.log", url=url, port=port).start()
    wait_http(f"{url}/health", timeout, process=proc)
    return proc


def processes_matching(cmdline_fragment: str) -> list[int]:
    """Pids (other than ours) whose command line contains ``cmdline_fragment``."""
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline_fragment in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_strays(cmdline_fragment: str, grace_s: float = 5.0) -> list[int]:
    """Stop processes whose command line contains ``cmdline_fragment`` (a path unique to one demo run).

    The gateway's local re-distillation runner starts jobs in their own session on purpose (a gateway
    restart must not kill a training run), so they survive the gateway; the demo owns them and must
    not leave them running. Returns the pids that were signalled.
    """
    pids = processes_matching(cmdline_fragment)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
    return pids
