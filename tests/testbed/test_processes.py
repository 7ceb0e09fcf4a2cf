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
