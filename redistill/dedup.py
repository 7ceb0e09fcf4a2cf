"""Dropping duplicate and near-duplicate prompts (exact hash or MinHash LSH from datasketch)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from datasketch import MinHash, MinHashLSH

NUM_PERM = 64


def _shingles(text: str, n: int = 3) -> set[bytes]:
    words = text.lower().split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def _minhash(text: str) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch(list(_shingles(text)))
    return m


def dedup_indices(
    keys: Sequence[str], texts: Sequence[str], mode: Literal["exact", "minhash", "none"], threshold: float
) -> list[int]:
    """Indices to keep, first occurrence wins. ``keys`` are exact identities (request hashes),
    ``texts`` the prompt text compared approximately in minhash mode."""
    if mode == "none":
        return list(range(len(keys)))
    seen: set[str] = set()
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM) if mode == "minhash" else None
    keep = []
    for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
        if key in seen:
            continue
        if lsh is not None:
            mh = _minhash(text)
            if lsh.query(mh):
                continue
            lsh.insert(str(i), mh)
        seen.add(key)
        keep.append(i)
    return keep
