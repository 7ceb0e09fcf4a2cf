"""Session fixtures for the real parts tests run against: a throwaway Postgres, the Prometheus and
Alertmanager binaries, and ONE vLLM server serving a tiny student for the whole test session.

Missing system binaries skip the tests that need them on a developer machine, but fail in CI
(``CI`` set), where scripts/sysdeps.sh must have installed them.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.demo.processes import (
    MissingBinaryError,
    find_prometheus_binaries,
    postgres_bin_dir,
    start_postgres,
)
from gateway.demo.student import StudentServer, start_student_server


def _missing(reason: str) -> None:
    """Skip locally, fail in CI: CI must exercise every real part."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLAlchemy URL ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`` of a fresh cluster."""
    if postgres_bin_dir() is None:
        _missing("Postgres 15 binaries not found (install postgresql-15 or run scripts/sysdeps.sh)")
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.sqlalchemy_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus_bin() -> dict[str, str]:
    """{"prometheus", "promtool", "prometheus-alertmanager", "amtool"} -> absolute path."""
    try:
        return find_prometheus_binaries()
    except MissingBinaryError as exc:
        _missing(str(exc))
        raise  # unreachable: _missing skips or fails


@pytest.fixture(scope="session")
def vllm_student(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudentServer]:
    """ONE vLLM server for the session: a tiny student built from the demo task's corpus, runtime
    LoRA on (--enable-lora --max-lora-rank 16), --max-model-len 512, eager mode."""
    with start_student_server(tmp_path_factory.mktemp("vllm-student")) as server:
        yield server
