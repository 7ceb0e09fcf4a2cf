"""Alembic environment: runs on the connection PairStore.migrate() hands in, or on -x url=... / DISTILLGATE_STORE_URL."""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from evaluator.store.engine import create_store_engine
from evaluator.store.schema import metadata

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DISTILLGATE_STORE_URL") \
        or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set DISTILLGATE_STORE_URL")
    engine = create_store_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; run against a database")
run_migrations_online()
