"""Text normalisation shared by scorers and drift features (case, punctuation, whitespace, tokens)."""
from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


def strip_punctuation(text: str) -> str:
    return "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)


def normalize(text: str) -> str:
    """Case-folded, punctuation removed, whitespace collapsed."""
    return _SPACE.sub(" ", strip_punctuation(text.casefold())).strip()


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())
