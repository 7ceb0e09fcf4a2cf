"""Building a distillation dataset from stored shadow pairs (+ optional seed prompts sent to the teacher).

Examples keep the exact production request (messages, system prompt, params) with the teacher's text as
target, or the feedback ground truth as a hard label where a reviewer gave one.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluator.records import ExchangeRecord, ShadowPair
from evaluator.store.rows import request_hash
from redistill.dedup import dedup_indices
from redistill.filters import FilterReport, FilterSettings, apply_filters
from redistill.jsonl import iter_jsonl
from redistill.manifest import Dataset, model_datasets, write_dataset
from redistill.mix import oversample, slice_shares
from redistill.records import Example
from redistill.settings import DatasetSettings
from redistill.split import split

AskTeacher = Callable[[dict[str, Any]], Awaitable[ExchangeRecord]]
RECENT_FRACTION = 0.25  # "current traffic" = the newest quarter of the window


class DatasetError(Exception):
    pass


def prompt_text(request: Mapping[str, Any]) -> str:
    if "messages" in request:
        return "\n".join(str(m.get("content", "")) for m in request["messages"] if isinstance(m, Mapping))
    return str(request.get("prompt", ""))


def example_from(teacher: ExchangeRecord, *, slice_: str, disagreement: bool, label: str | None) -> Example:
    return Example(
        request_hash=request_hash(teacher.request),
        request_id=teacher.request_id,
        model=teacher.model,
        slice=slice_,
        endpoint=teacher.endpoint,
        request=dict(teacher.request),
        target=label if label else teacher.response_text,
        target_source="feedback" if label else "teacher",
        teacher_text=teacher.response_text,
        top_logprobs=[dict(t) for t in teacher.top_logprobs] if teacher.top_logprobs else None,
        disagreement=disagreement,
        created_at=teacher.created_at,
    )


async def teacher_seed_records(seed_file: Path, model: str, ask_teacher: AskTeacher) -> list[ExchangeRecord]:
    """Seed JSONL lines are request bodies ({"messages": [...], ...} or {"prompt": ...}), each sent once."""
    out = []
    for n, body in iter_jsonl(seed_file, DatasetError):
        if not isinstance(body, dict) or not ("messages" in body or "prompt" in body):
            raise DatasetError(f"{seed_file}:{n}: needs 'messages' or 'prompt'")
        out.append(await ask_teacher({**body, "model": model}))
    return out


@dataclass(frozen=True, slots=True)
class BuildInputs:
    model: str
    pairs: Sequence[ShadowPair]
    labels: Mapping[str, str]  # request id -> feedback ground truth
    seeds: Sequence[ExchangeRecord] = ()
    is_valid: Callable[[str], bool] | None = None


def build_examples(inputs: BuildInputs, settings: DatasetSettings) -> tuple[list[Example], dict[str, Any]]:
    """Filtered, deduplicated examples (not yet split or oversampled) and the counts behind them."""
    candidates: list[tuple[ExchangeRecord, str, bool]] = [
        (p.teacher, p.served.slice, not p.agreed) for p in sorted(inputs.pairs, key=lambda p: p.served.created_at)
    ]
    candidates += [(s, s.slice, False) for s in inputs.seeds]
    report = FilterReport()
    fs = FilterSettings(settings.max_completion_tokens, settings.min_teacher_mean_logprob)
    kept = [candidates[i] for i in apply_filters((c[0] for c in candidates), fs, inputs.is_valid, report)]
    examples = [
        example_from(t, slice_=s, disagreement=d, label=inputs.labels.get(t.request_id)) for t, s, d in kept
    ]
    # Newest first so a repeated prompt keeps its most recent teacher answer.
    examples.reverse()
    keep = dedup_indices([e.request_hash for e in examples], [prompt_text(e.request) for e in examples],
                         settings.dedup, settings.minhash_threshold)
    report.dropped["duplicate"] += len(examples) - len(keep)
    examples = [examples[i] for i in sorted(keep)][: settings.max_examples]
    examples.reverse()
    report.kept = len(examples)
    counts = {"pairs": len(inputs.pairs), "seeds": len(inputs.seeds), "feedback_labels": sum(
        1 for e in examples if e.target_source == "feedback"), "disagreements": sum(e.disagreement for e in examples)}
    return examples, {"filters": report.as_dict(), "counts": counts}


def recent_mix(pairs: Sequence[ShadowPair]) -> dict[str, float]:
    ordered = sorted(pairs, key=lambda p: p.served.created_at)
    recent = ordered[int(len(ordered) * (1 - RECENT_FRACTION)):]
    return slice_shares([p.served.slice for p in recent])


def build_dataset(inputs: BuildInputs, settings: DatasetSettings, root: Path, *, now: float | None = None) -> Dataset:
    """Write a new versioned dataset under ``root/<model>/<id>/`` and return it."""
    now = time.time() if now is None else now
    examples, info = build_examples(inputs, settings)
    if not examples:
        raise DatasetError(f"no usable examples for {inputs.model}: {info['filters']}")
    previous = model_datasets(root, inputs.model)
    previous_heldout = {e.request_hash for d in previous for e in d.heldout()}
    train, heldout = split(examples, settings.heldout_fraction, previous_heldout)
    target = recent_mix(inputs.pairs) if inputs.pairs else None
    train_weighted, factors = oversample(train, disagreement_factor=settings.disagreement_oversample, target_mix=target)
    dataset_id = time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + "-" + uuid.uuid4().hex[:6]
    info.update(
        model=inputs.model,
        dataset_id=dataset_id,
        created_at=now,
        slice_mix_train=slice_shares([e.slice for e in train_weighted]),
        slice_mix_recent_traffic=target or {},
        oversample_factors=factors,
        disagreement_oversample=settings.disagreement_oversample,
        previous_datasets=[d.hash for d in previous],
        settings=settings.model_dump(),
    )
    info["counts"].update(unique_train=len(train), previously_heldout=sum(
        1 for e in examples if e.request_hash in previous_heldout))
    return write_dataset(root / inputs.model / dataset_id, train_weighted, heldout, info)
