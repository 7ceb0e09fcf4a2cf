"""Persistence for everything distillgate remembers (pairs, feedback, versions, triggers, jobs)."""
from evaluator.store.pairs import PairStore

__all__ = ["PairStore"]
