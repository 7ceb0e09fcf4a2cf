"""Retry budget: retries may be at most `ratio` of recent requests, plus a small reserve.

Each request deposits `ratio` tokens (capped), each retry withdraws one; so a failing upstream cannot be
hit with (max_attempts x traffic) and retries stop amplifying an outage.
"""
from __future__ import annotations


class RetryBudget:
    def __init__(self, ratio: float, reserve: float = 3.0, cap: float = 100.0) -> None:
        self._ratio = ratio
        self._cap = max(cap, reserve)
        self.balance = reserve

    def on_request(self) -> None:
        if self.balance < self._cap:
            self.balance += self._ratio

    def try_spend(self) -> bool:
        if self.balance >= 1.0:
            self.balance -= 1.0
            return True
        return False
