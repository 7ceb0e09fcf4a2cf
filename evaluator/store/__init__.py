"""Persistence for everything distillgate remembers (pairs, feedback, versions, triggers, jobs)."""
