"""The database schema, one SQLAlchemy MetaData for every table.

The evaluator owns persistence for the whole product (the registry's tables included) so there is one
schema and one migration history; redistill.registry holds the domain logic on top of these tables.
Times are Unix seconds (float) so SQLite and Postgres compare them the same way.
"""
from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

exchanges = Table(
    "exchanges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("model", String(128), nullable=False),
    Column("route", String(16), nullable=False),
    Column("version", String(128), nullable=False),
    Column("endpoint", String(16), nullable=False),
    Column("request", JSON, nullable=False),
    Column("response_text", Text, nullable=False),
    Column("finish_reason", String(32)),
    Column("status", Integer, nullable=False, default=200),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("latency_s", Float, nullable=False, default=0.0),
    Column("ttft_s", Float),
    Column("token_logprobs", JSON),
    Column("top_logprobs", JSON),
    Column("slice", String(64), nullable=False, default="default"),
    Column("created_at", Float, nullable=False, index=True),
)

pairs = Table(
    "pairs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(128), nullable=False),
    Column("version", String(128), nullable=False),  # the student's version
    Column("slice", String(64), nullable=False, default="default"),
    Column("served_id", Integer, ForeignKey("exchanges.id"), nullable=False),
    Column("shadow_id", Integer, ForeignKey("exchanges.id"), nullable=False),
    Column("scores", JSON, nullable=False),
    Column("score", Float, nullable=False),  # the primary scorer's value
    Column("agreed", Boolean, nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_pairs_model_time", "model", "created_at"),
)
# Retention deletes and "served, not shadow" queries look pairs up by their exchanges.
Index("ix_pairs_served_id", pairs.c.served_id)
Index("ix_pairs_shadow_id", pairs.c.shadow_id)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, index=True),
    Column("model", String(128)),
    Column("label", Text),  # ground truth answer/label, usable as a hard label
    Column("rating", Float),  # 0..1
    Column("comment", Text),
    Column("key_name", String(128)),
    Column("created_at", Float, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("model", String(128), nullable=False, index=True),
    Column("base_model", Text, nullable=False),
    Column("adapter_path", Text),
    Column("dataset_manifest_hash", String(64)),
    Column("gate_report", JSON),
    Column("status", String(16), nullable=False),
    Column("parent_id", String(128)),
    Column("hyperparameters", JSON),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

version_events = Table(
    "version_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version_id", String(128), nullable=False, index=True),
    Column("model", String(128), nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("reason", Text),
    Column("created_at", Float, nullable=False),
)

triggers = Table(
    "triggers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(128), nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("metrics", JSON),
    Column("outcome", String(32)),  # job_started | skipped:<why> | duplicate
    Column("job_id", String(64)),
    Column("created_at", Float, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(128), nullable=False, index=True),
    Column("trigger_id", Integer),
    Column("runner", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # queued | running | succeeded | rejected | failed
    Column("version_id", String(128)),
    Column("error", Text),
    Column("log_path", Text),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
)

pending_shadows = Table(
    "pending_shadows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("record", JSON, nullable=False),  # a served ExchangeRecord not yet shadowed at shutdown
    Column("created_at", Float, nullable=False),
)

# Every served request counted per model/route, including those whose exchange was not stored
# (StoreSettings.served_sample_rate): reports take route rates and cost from here, unbiased by sampling.
# One row per (model, route) per counts flush; reports sum them over a time range.
route_counts = Table(
    "route_counts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(128), nullable=False),
    Column("route", String(16), nullable=False),
    Column("requests", Integer, nullable=False),
    Column("stored", Integer, nullable=False),  # how many of them have their exchange row
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("period_start", Float, nullable=False),
    Column("created_at", Float, nullable=False),  # period end
    Index("ix_route_counts_model_time", "model", "created_at"),
)
