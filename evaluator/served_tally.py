"""Counts of served requests per (model, route): plain ints bumped on the event loop, read from other threads.

Every served request is counted here once (Evaluator.offer): requests, stored exchanges, prompt and
completion tokens. Nothing is reset and nothing is locked: the event loop is the only writer, and
readers (a /metrics scrape, the store's writer thread) copy the running totals, so a read is at most one
request behind and the next read catches up. Why not a counter per figure: four small updates on every
request cost more than the rest of the evaluator's hand-off (bench/gateway_overhead.py); the store's
route-count rows are differences between two reads and the spend metrics are rendered from the totals.
"""
from __future__ import annotations

Totals = dict[tuple[str, str], tuple[int, int, int, int]]  # (model, route) -> (requests, stored, prompt, completion)


class ServedTally:
    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], list[int]] = {}

    def add(self, model: str, route: str, prompt_tokens: int, completion_tokens: int) -> None:
        """One served request (event loop only)."""
        row = self._rows.get((model, route))
        if row is None:
            row = self._rows[(model, route)] = [0, 0, 0, 0]
        row[0] += 1
        row[2] += prompt_tokens
        row[3] += completion_tokens

    def add_stored(self, model: str, route: str) -> None:
        """One of the requests `add` counted had its exchange queued for the store (event loop only)."""
        self._rows[(model, route)][1] += 1

    def totals(self) -> Totals:
        """Running totals since start (any thread). `list()` copies the items in one step under the GIL, so a
        (model, route) first seen meanwhile cannot break the copy; each figure only grows."""
        return {key: (row[0], row[1], row[2], row[3]) for key, row in list(self._rows.items())}
