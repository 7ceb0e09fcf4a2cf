"""Reading the JSONL files people hand us (seed prompts, reviewed samples) with line-numbered errors."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson


def iter_jsonl(path: Path, error: type[Exception]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; `error` names the file and line otherwise."""
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield n, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise error(f"{path}:{n}: not JSON ({exc})") from None
