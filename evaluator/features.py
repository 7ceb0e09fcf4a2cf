"""Numeric features of prompts and answers that drift detection compares between windows."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from evaluator.records import ExchangeRecord
from evaluator.textnorm import words

INPUT_FEATURES = ("log_chars", "words", "mean_word_length", "digit_fraction", "upper_fraction", "punct_fraction")

_REFUSAL = re.compile(
    r"\b(i can(?:'|no)t|i am unable|i'm unable|i am not able|i'm sorry|as an ai|i won't|i will not)\b", re.IGNORECASE
)


def input_features(text: str) -> list[float]:
    # Character classes counted with map over str methods (C loops): a generator expression per class was
    # most of a drift comparison's feature time. Punctuation = neither alphanumeric nor space (disjoint).
    n = max(len(text), 1)
    toks = words(text)
    alnum, space = sum(map(str.isalnum, text)), sum(map(str.isspace, text))
    return [
        math.log1p(len(text)),
        float(len(toks)),
        sum(map(len, toks)) / len(toks) if toks else 0.0,
        sum(map(str.isdigit, text)) / n,
        sum(map(str.isupper, text)) / n,
        (len(text) - alnum - space) / n,
    ]


def input_matrix(texts: Sequence[str]) -> np.ndarray:
    return np.asarray([input_features(t) for t in texts], dtype=float).reshape(len(texts), len(INPUT_FEATURES))


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text))


def answer_length(text: str) -> float:
    return math.log1p(len(words(text)))


def mean_logprob(record: ExchangeRecord) -> float | None:
    """The model's confidence in its answer: mean generated-token logprob, when the upstream returned them."""
    if not record.token_logprobs:
        return None
    return sum(record.token_logprobs) / len(record.token_logprobs)
