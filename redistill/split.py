"""Deterministic held-out split by request hash: a prompt is held out forever or never."""
from __future__ import annotations

from collections.abc import Collection, Sequence

from redistill.records import Example


def is_heldout(request_hash: str, fraction: float) -> bool:
    # The hash's top 32 bits as a uniform number in [0, 1): stable across runs, machines and versions.
    return int(request_hash[:8], 16) / 0x1_0000_0000 < fraction


def split(
    examples: Sequence[Example], fraction: float, previous_heldout: Collection[str] = ()
) -> tuple[list[Example], list[Example]]:
    """(train, heldout). Prompts held out by any earlier dataset are never trained on either."""
    train, heldout = [], []
    for ex in examples:
        if is_heldout(ex.request_hash, fraction):
            heldout.append(ex)
        elif ex.request_hash not in previous_heldout:
            train.append(ex)
    return train, heldout
