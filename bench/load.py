"""Load generation: wrk (closed loop, one thread, pinned to the load core) and an aiohttp TTFT probe.

Every measurement also samples the server's process tree, so CPU per request and memory growth come
from the same interval as the latency numbers.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from bench.proctree import sample, wait_quiet

_LUA = """
wrk.method = "POST"
wrk.body = [=[%(body)s]=]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d," ..
    "\\"max_us\\":%%d,\\"errors\\":%%d,\\"non2xx\\":%%d,\\"timeouts\\":%%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write, e.status, e.timeout))
end
"""


def chat_body(*, stream: bool, model: str = "bench", delay_ms: int = 0, gap_ms: int = 0) -> str:
    """A small chat request; directives in the prompt steer the fake upstream (see fake_upstream.py)."""
    prompt = "My card was charged twice for the same order, please help."
    if delay_ms:
        prompt += f" [[delay={delay_ms}]]"
    if gap_ms:
        prompt += f" [[gap={gap_ms}]]"
    body: dict = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body)


@dataclass
class RunResult:
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    cpu_ms_per_req: float | None
    rss_start_mb: float | None
    rss_end_mb: float | None
    root_rss_end_mb: float | None = None  # the server's own process, without children (e.g. the drift worker)
    rss_samples_mb: list[float] = field(default_factory=list)
    settle_s: float = 0.0  # how long the server kept working after the load stopped (counted in CPU/req)

    def to_dict(self) -> dict:
        return asdict(self)


class RssWatcher:
    """Samples a process tree's RSS once a second in a thread while load runs."""

    def __init__(self, pid: int | None, every_s: float = 1.0) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(round(sample(self.pid).rss_mb, 1))  # type: ignore[arg-type]

    def __enter__(self) -> "RssWatcher":
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def wrk_available() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: run `make sysdeps` (Debian package wrk)")
    return path


def run_wrk(
    url: str, body: str, *, connections: int, duration_s: float, server_pid: int | None, load_cpu: int, key: str
) -> RunResult:
    """One closed-loop wrk run. CPU is the server tree's delta from the start until it is quiet again after
    the load stops, so work a request causes later (store writes, drift, shadows) is charged to it."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA % {"body": body, "key": key})
        script = f.name
    argv = ["taskset", "-c", str(load_cpu), wrk_available(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
            "--timeout", "10s", "-s", script, url]
    before = sample(server_pid) if server_pid else None
    with RssWatcher(server_pid) as watcher:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
        settle = wait_quiet(server_pid) if server_pid else 0.0
    after = sample(server_pid) if server_pid else None
    Path(script).unlink(missing_ok=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (rc={proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    data = json.loads(line[len("BENCHJSON "):])
    n = data["requests"]
    cpu = (after.cpu_s - before.cpu_s) * 1000 / n if before and after and n else None
    return RunResult(
        requests=n,
        rps=n / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=data["errors"] + data["non2xx"] + data["timeouts"],
        cpu_ms_per_req=cpu,
        rss_start_mb=round(before.rss_mb, 1) if before else None,
        rss_end_mb=round(after.rss_mb, 1) if after else None,
        root_rss_end_mb=round(after.root_rss_mb, 1) if after else None,
        rss_samples_mb=watcher.samples,
        settle_s=round(settle, 2),
    )


@dataclass
class TtftResult:
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int

    @classmethod
    def median_of(cls, rounds: list[TtftResult]) -> TtftResult:
        """Rounds of one target combined: the median of their p50s and of their p99s, requests and errors summed."""
        return cls(sum(r.requests for r in rounds), statistics.median(r.p50_ms for r in rounds),
                   statistics.median(r.p99_ms for r in rounds), sum(r.errors for r in rounds))


async def _ttft(urls: dict[str, str], body: bytes, key: str, n: int) -> dict[str, TtftResult]:
    """Time from sending a streaming request to reading its first SSE `data:` bytes, `n` probes a target.

    Each probe visits every target in turn, the order rotated probe by probe, so all targets meet this VM at the
    same moments: measured in one block per target, the floor's added TTFT (~0.5 ms) moved by half between
    blocks a minute apart and the ratio of two such differences ranged 0.74-2.46 on the same processes."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    names = list(urls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    errors = dict.fromkeys(names, 0)

    async def one(session: aiohttp.ClientSession, name: str) -> None:
        t0 = time.perf_counter()
        try:
            async with session.post(urls[name], data=body, headers=headers) as resp:
                first = await resp.content.readany()
                if resp.status != 200 or b"data:" not in first:
                    errors[name] += 1
                else:
                    samples[name].append((time.perf_counter() - t0) * 1000)
                await resp.read()
        except aiohttp.ClientError:
            errors[name] += 1

    async with aiohttp.ClientSession() as session:
        for i in range(n):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                await one(session, name)
    return {name: _ttft_result(samples[name], errors[name]) for name in names}


def _ttft_result(samples: list[float], errors: int) -> TtftResult:
    if not samples:
        return TtftResult(0, float("nan"), float("nan"), errors)
    samples.sort()
    return TtftResult(len(samples), statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))], errors)


def measure_ttft(urls: dict[str, str], body: str, *, key: str, requests: int) -> dict[str, TtftResult]:
    return asyncio.run(_ttft(urls, body.encode(), key, requests))
