"""Removing personal data (e-mails, phone numbers, keys, ...) from text before it is stored."""
from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"


class Redactor:
    def __init__(self, patterns: list[str]) -> None:
        self._patterns = [re.compile(p) for p in patterns]

    def text(self, value: str) -> str:
        for pattern in self._patterns:
            value = pattern.sub(REDACTED, value)
        return value

    def value(self, value: Any) -> Any:
        """Redacts every string inside a JSON-like value (request bodies), keys left as they are."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
