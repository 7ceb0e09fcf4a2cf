"""Human review of a dataset: a stratified sample out, reviewer verdicts back in.

`sample` writes JSONL lines {request_hash, slice, disagreement, request, target, review: null}; a reviewer
sets "review" to "accept" or "reject". `import_review` writes a NEW dataset version without the rejected
prompts (datasets stay immutable) and records the reviewer reject rate in its manifest.
"""
from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from redistill.jsonl import iter_jsonl
from redistill.manifest import Dataset, write_dataset
from redistill.records import Example

VERDICTS = ("accept", "reject")


class ReviewError(Exception):
    pass


def stratified_sample(examples: list[Example], n: int, seed: int = 0) -> list[Example]:
    """Round-robin over (slice, disagreement) strata so small strata are seen, unique prompts only."""
    strata: dict[tuple[str, bool], list[Example]] = defaultdict(list)
    seen: set[str] = set()
    for ex in examples:
        if ex.request_hash not in seen:
            seen.add(ex.request_hash)
            strata[(ex.slice, ex.disagreement)].append(ex)
    rng = random.Random(seed)
    for bucket in strata.values():
        rng.shuffle(bucket)
    out: list[Example] = []
    keys = sorted(strata)
    while len(out) < n and any(strata[k] for k in keys):
        for k in keys:
            if strata[k] and len(out) < n:
                out.append(strata[k].pop())
    return out


def write_review_file(dataset: Dataset, n: int, out: Path, seed: int = 0) -> int:
    picked = stratified_sample(dataset.train() + dataset.heldout(), n, seed)
    with out.open("wb") as fh:
        for ex in picked:
            line: dict[str, Any] = {
                "dataset": dataset.hash, "request_hash": ex.request_hash, "slice": ex.slice,
                "disagreement": ex.disagreement, "request": ex.request, "target": ex.target,
                "target_source": ex.target_source, "review": None,
            }
            fh.write(orjson.dumps(line) + b"\n")
    return len(picked)


def read_verdicts(path: Path) -> dict[str, str]:
    verdicts: dict[str, str] = {}
    for n, line in iter_jsonl(path, ReviewError):
        verdict = line.get("review") if isinstance(line, dict) else None
        if verdict is None:
            continue  # not reviewed
        if verdict not in VERDICTS or not isinstance(line.get("request_hash"), str):
            raise ReviewError(f"{path}:{n}: review must be one of {VERDICTS} with a request_hash")
        verdicts[line["request_hash"]] = verdict
    return verdicts


def import_review(dataset: Dataset, review_file: Path, out_dir: Path) -> Dataset:
    verdicts = read_verdicts(review_file)
    if not verdicts:
        raise ReviewError(f"{review_file}: no reviewed lines")
    rejected = {h for h, v in verdicts.items() if v == "reject"}
    train = [e for e in dataset.train() if e.request_hash not in rejected]
    heldout = [e for e in dataset.heldout() if e.request_hash not in rejected]
    info = {k: v for k, v in dataset.manifest.items() if k not in ("hash",)}
    info["parent_hash"] = dataset.hash
    info["dataset_id"] = out_dir.name
    info["review"] = {
        "reviewed": len(verdicts), "rejected": len(rejected),
        "reject_rate": len(rejected) / len(verdicts), "file": str(review_file),
    }
    return write_dataset(out_dir, train, heldout, info)
