"""The testbed's process helpers against real processes: Postgres, process groups, readiness waits."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.demo.processes import ManagedProcess, ProcessStartError, free_port, wait_http


@pytest.mark.postgres
def test_postgres_url_accepts_sql(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (41), (1)"))
            total = conn.execute(sa.text("SELECT sum(x) FROM t")).scalar_one()
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
            conn.execute(sa.text("DROP TABLE t"))
    finally:
        engine.dispose()
    assert total == 42
    assert version.split(".")[0] in {"15", "16", "17"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The leader ignores SIGTERM and its child keeps running: stop() must still leave nothing behind.
    script = f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait"
    proc = ManagedProcess("stubborn", ["sh", "-c", script], tmp_path / "log.txt", grace_s=0.5).start()
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert proc.alive() and _alive(child)
    proc.stop()
    assert not proc.alive()
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child)


def test_wait_http_reports_an_early_exit_with_the_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "broken", [sys.executable, "-c", "import sys; print('bad flag --frobnicate'); sys.exit(3)"], tmp_path / "log.txt"
    ).start()
    with pytest.raises(ProcessStartError) as info:
        wait_http(f"http://127.0.0.1:{free_port()}/health", 30, process=proc)
    assert "exited with code 3" in str(info.value)
    assert "bad flag --frobnicate" in info.value.log_tail


def test_wait_http_succeeds_on_a_real_server(tmp_path: Path) -> None:
    port = free_port()
    with ManagedProcess(
        "http.server", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(tmp_path)],
        tmp_path / "log.txt",
    ) as proc:
        wait_http(f"http://127.0.0.1:{port}/", 30, process=proc)
        assert proc.alive()
    assert not proc.alive()


def test_wait_http_times_out_without_a_server() -> None:
    with pytest.raises(TimeoutError):
        wait_http(f"http://127.0.0.1:{free_port()}/", 0.5)


@pytest.mark.prometheus
def test_prometheus_alert_reaches_a_webhook_through_alertmanager(prometheus_bin: dict[str, str], tmp_path: Path) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from gateway.demo.processes import start_alertmanager, start_prometheus

    received: list[dict] = []
    got = threading.Event()

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            got.set()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    am_cfg = tmp_path / "am.yml"
    am_cfg.write_text(
        "route: {receiver: hook, group_wait: 0s, group_interval: 1s, repeat_interval: 1h}\n"
        f"receivers: [{{name: hook, webhook_configs: [{{url: 'http://127.0.0.1:{sink.server_port}/alerts'}}]}}]\n"
    )
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: [{name: t, rules: [{alert: AlwaysOn, expr: vector(1), for: 0s}]}]\n")
    try:
        with start_alertmanager(am_cfg, workdir=tmp_path / "am") as am:
            prom_cfg = tmp_path / "prom.yml"
            prom_cfg.write_text(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                f"rule_files: ['{rules}']\n"
                f"alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am.port}']}}]}}]}}\n"
            )
            with start_prometheus(prom_cfg, workdir=tmp_path / "prom") as prom:
                assert got.wait(60), prom.log_tail() + am.log_tail()
        assert received[0]["alerts"][0]["labels"]["alertname"] == "AlwaysOn"
        assert not prom.alive() and not am.alive()
    finally:
        sink.shutdown()


def test_stop_strays_stops_detached_processes_by_their_unique_path(tmp_path: Path) -> None:
    import subprocess

    from gateway.demo.processes import stop_strays

    marker = str(tmp_path / "jobs" / "job-1")
    detached = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", marker], start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(tmp_path / "other")],
                                 start_new_session=True)
    try:
        assert stop_strays(marker) == [detached.pid]
        assert detached.wait(timeout=10) is not None
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
