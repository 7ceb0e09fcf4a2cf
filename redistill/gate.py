"""The promotion gate: a candidate must keep the teacher's quality on held-out prompts it never saw.

Scores use the model's own scorer against a reference: the feedback ground truth where a reviewer gave
one, else the teacher's answer (so the teacher scores 1.0 there). Retention = candidate / teacher.
Passes only if retention >= threshold, the candidate is at least as good as the current student on the
new held-out set, and it does not regress beyond the tolerance on any previous held-out set.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from redistill.records import Example
from redistill.settings import GateSettings


class Scorer(Protocol):
    """evaluator.scorers.Scorer's text comparison (build_scorer(ScorerSettings) returns one)."""

    def similarity(self, student: str, teacher: str) -> float: ...


Generate = Callable[[Path | None, Sequence[Example]], list[str]]


def reference(ex: Example) -> str:
    return ex.target if ex.target_source == "feedback" else ex.teacher_text


def mean_score(scorer: Scorer, outputs: Sequence[str], examples: Sequence[Example]) -> float:
    if not examples:
        return 0.0
    return sum(float(scorer.similarity(o, reference(e))) for o, e in zip(outputs, examples, strict=True)) / len(examples)


@dataclass(frozen=True, slots=True)
class HeldoutSet:
    name: str  # the dataset hash it came from
    examples: list[Example]


def evaluate_gate(
    *,
    new_heldout: Sequence[Example],
    previous: Sequence[HeldoutSet],
    candidate: Path,
    current: Path | None,
    generate: Generate,
    scorer: Scorer,
    settings: GateSettings,
) -> dict[str, Any]:
    """Full gate report (JSON-serialisable); ``report["passed"]`` is the verdict."""
    new = list(new_heldout)[: settings.max_examples]
    if not new:
        return {"passed": False, "reasons": ["empty held-out set"], "n": 0}
    cand_out = generate(candidate, new)
    cur_out = generate(current, new)
    teacher = mean_score(scorer, [e.teacher_text for e in new], new)
    cand = mean_score(scorer, cand_out, new)
    cur = mean_score(scorer, cur_out, new)
    retention = cand / teacher if teacher > 0 else 0.0
    reasons = []
    if retention < settings.retention_threshold:
        reasons.append(f"retention {retention:.3f} < {settings.retention_threshold}")
    if cand < cur:
        reasons.append(f"candidate {cand:.3f} < current student {cur:.3f} on the new held-out set")
    regressions = []
    for hs in previous:
        old = list(hs.examples)[: settings.max_examples]
        if not old:
            continue
        c = mean_score(scorer, generate(candidate, old), old)
        p = mean_score(scorer, generate(current, old), old)
        regressions.append({"dataset": hs.name, "n": len(old), "candidate": c, "current": p})
        if c < p - settings.regression_tolerance:
            reasons.append(f"regression on held-out {hs.name[:12]}: {c:.3f} < {p:.3f} - {settings.regression_tolerance}")
    samples = [{"request_hash": e.request_hash, "reference": reference(e), "candidate": o, "current": co}
               for e, o, co in list(zip(new, cand_out, cur_out, strict=True))[:20]]
    return {
        "passed": not reasons, "reasons": reasons, "n": len(new),
        "teacher_score": teacher, "candidate_score": cand, "current_score": cur, "retention": retention,
        "retention_threshold": settings.retention_threshold, "previous_heldout": regressions,
        "feedback_references": sum(1 for e in new if e.target_source == "feedback"), "samples": samples,
    }
