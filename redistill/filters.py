"""Quality filters for distillation examples; every drop is counted under a named reason."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from evaluator.records import ExchangeRecord

# Phrases that mark a teacher refusal; training a student on refusals teaches it to refuse.
REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, but|i can(?:no|')t (?:help|assist|do)|i cannot|as an ai\b|i'?m unable to|i am unable to)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class FilterSettings:
    max_completion_tokens: int
    min_teacher_mean_logprob: float | None = None


@dataclass(slots=True)
class FilterReport:
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {"kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}


def rejection_reason(
    teacher: ExchangeRecord,
    settings: FilterSettings,
    is_valid: Callable[[str], bool] | None,
) -> str | None:
    """Why this teacher answer must not be a training target, or None when it may."""
    text = teacher.response_text
    if teacher.status != 200 or not text.strip():
        return "empty_or_error"
    if teacher.finish_reason == "length":
        return "truncated"
    if REFUSAL.search(text):
        return "refusal"
    n_tokens = teacher.completion_tokens if teacher.completion_tokens is not None else len(text.split())
    if n_tokens > settings.max_completion_tokens:
        return "over_long"
    if settings.min_teacher_mean_logprob is not None and teacher.token_logprobs:
        mean = sum(teacher.token_logprobs) / len(teacher.token_logprobs)
        if mean < settings.min_teacher_mean_logprob:
            return "low_confidence"
    if is_valid is not None and not is_valid(text):
        return "invalid"
    return None


def apply_filters(
    teachers: Iterable[ExchangeRecord],
    settings: FilterSettings,
    is_valid: Callable[[str], bool] | None,
    report: FilterReport,
) -> list[int]:
    """Indices of the records that pass; the report counts the others by reason."""
    keep = []
    for i, rec in enumerate(teachers):
        reason = rejection_reason(rec, settings, is_valid)
        if reason is None:
            keep.append(i)
        else:
            report.dropped[reason] += 1
    return keep


def scorer_validator(scorer: object) -> Callable[[str], bool] | None:
    """What "invalid per the model's scorer" means: a label scorer that cannot extract a known label,
    a JSON scorer that finds no object. Free-text scorers accept anything."""
    from evaluator.scorers import INVALID_LABEL, parse_json_object

    extract = getattr(scorer, "extract", None)
    if callable(extract):
        return lambda text: extract(text) != INVALID_LABEL
    if getattr(scorer, "name", None) == "json":
        return lambda text: parse_json_object(text) is not None
    return None
