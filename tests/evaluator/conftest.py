"""Fixtures for the evaluator tests: stores on SQLite and on a fresh database of the session's Postgres."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from evaluator.records import ExchangeRecord
from evaluator.settings import StoreSettings
from evaluator.store import PairStore


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def fresh_postgres_db(server_url: str) -> str:
    """A new, empty database on the session's cluster, so tests do not see each other's rows."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return fresh_postgres_db(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[PairStore]:
    s = PairStore(store_url, StoreSettings(url=store_url, flush_interval_s=0.02))
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def make_exchange():  # noqa: ANN201 - returns the factory below
    return exchange


def exchange(request_id: str = "r1", *, route: str = "student", text_out: str = "billing", model: str = "m",
             version: str = "base", prompt: str = "my card was charged twice", slice: str = "default",
             created_at: float | None = None, **kw: object) -> ExchangeRecord:
    extra = {"created_at": created_at} if created_at is not None else {}
    return ExchangeRecord(request_id=request_id, model=model, route=route, version=version, endpoint="chat",
                          request={"model": model, "messages": [{"role": "user", "content": prompt}]},
                          response_text=text_out, slice=slice, **extra, **kw)  # type: ignore[arg-type]
