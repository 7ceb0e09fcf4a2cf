"""Versioned dataset directories: train.jsonl, heldout.jsonl and a manifest with counts and a content hash."""
from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from redistill.records import Example

TRAIN = "train.jsonl"
HELDOUT = "heldout.jsonl"
MANIFEST = "manifest.json"


def write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        for ex in examples:
            fh.write(orjson.dumps(ex.to_json(), option=orjson.OPT_SORT_KEYS) + b"\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[Example]:
    if not path.exists():
        return []
    return [Example.from_json(orjson.loads(line)) for line in path.read_bytes().splitlines() if line.strip()]


def content_hash(directory: Path) -> str:
    h = hashlib.sha256()
    for name in (TRAIN, HELDOUT):
        p = directory / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Dataset:
    directory: Path
    manifest: dict[str, Any]

    @property
    def hash(self) -> str:
        return str(self.manifest["hash"])

    def train(self) -> list[Example]:
        return read_jsonl(self.directory / TRAIN)

    def heldout(self) -> list[Example]:
        return read_jsonl(self.directory / HELDOUT)


def write_dataset(directory: Path, train: list[Example], heldout: list[Example], info: dict[str, Any]) -> Dataset:
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / TRAIN, train)
    write_jsonl(directory / HELDOUT, heldout)
    manifest = {
        **info,
        "created_at": info.get("created_at", time.time()),
        "counts": {**info.get("counts", {}), "train": len(train), "heldout": len(heldout)},
        "hash": content_hash(directory),
    }
    save_manifest(directory, manifest)
    return Dataset(directory, manifest)


def save_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    tmp.replace(directory / MANIFEST)


def load_dataset(directory: Path) -> Dataset:
    path = directory / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a dataset (no {MANIFEST})")
    return Dataset(directory, orjson.loads(path.read_bytes()))


def model_datasets(root: Path, model: str) -> list[Dataset]:
    """Every dataset built for a model, oldest first (their held-out sets are the regression suite)."""
    base = root / model
    if not base.exists():
        return []
    found = [load_dataset(d) for d in base.iterdir() if (d / MANIFEST).exists()]
    return sorted(found, key=lambda d: (d.manifest.get("created_at", 0.0), d.directory.name))
