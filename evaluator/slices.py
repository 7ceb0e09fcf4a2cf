"""Assigning a request to one of the bounded, configured slices (a metrics label)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evaluator.settings import SliceRule

DEFAULT_SLICE = "default"


def slice_header_names(rules: list[SliceRule]) -> frozenset[str]:
    """The (lower-case) request headers assign_slice may read for these rules."""
    return frozenset(rule.header.lower() for rule in rules if rule.header)


def assign_slice(rules: list[SliceRule], headers: Mapping[str, str], body: Mapping[str, Any]) -> str:
    """First matching rule wins; values outside a rule's list never become labels (bounded cardinality)."""
    if not rules:  # the common case, on every served request
        return DEFAULT_SLICE
    metadata = body.get("metadata") if isinstance(body.get("metadata"), Mapping) else {}
    for rule in rules:
        value = None
        if rule.header:
            value = headers.get(rule.header.lower())
        if value is None and rule.metadata_key:
            raw = metadata.get(rule.metadata_key)
            value = raw if isinstance(raw, str) else None
        if value is not None and (not rule.values or value in rule.values):
            return rule.name if not rule.values else f"{rule.name}:{value}"
    return DEFAULT_SLICE
