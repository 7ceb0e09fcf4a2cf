"""Converting records to table rows and back."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from evaluator.records import ExchangeRecord, ShadowPair

EXCHANGE_FIELDS = tuple(ExchangeRecord.__dataclass_fields__)


def exchange_to_row(record: ExchangeRecord) -> dict[str, Any]:
    """A shallow copy of the fields: `dataclasses.asdict` deep-copies the request body, most of the store
    writer's CPU per row, and the caller (PairStore) rebuilds the body while redacting it anyway."""
    row = {name: getattr(record, name) for name in EXCHANGE_FIELDS}
    row["token_logprobs"] = list(record.token_logprobs) if record.token_logprobs is not None else None
    row["top_logprobs"] = [dict(t) for t in record.top_logprobs] if record.top_logprobs is not None else None
    return row


def exchange_from_row(row: Mapping[str, Any], prefix: str = "") -> ExchangeRecord:
    values = {name: row[prefix + name] for name in EXCHANGE_FIELDS}
    if values["token_logprobs"] is not None:
        values["token_logprobs"] = tuple(values["token_logprobs"])
    if values["top_logprobs"] is not None:
        values["top_logprobs"] = tuple(dict(t) for t in values["top_logprobs"])
    return ExchangeRecord(**values)


def exchange_from_json(data: Mapping[str, Any]) -> ExchangeRecord:
    return exchange_from_row(data)


def request_hash(request: Mapping[str, Any]) -> str:
    """Identifies the same prompt across requests (dedup in datasets); sampling knobs are ignored."""
    key = {k: request.get(k) for k in ("messages", "prompt") if k in request}
    return hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()


def primary_score(pair: ShadowPair) -> float:
    """By convention the first entry of ``scores`` is the model's primary scorer."""
    return next(iter(pair.scores.values()), 1.0 if pair.agreed else 0.0)
