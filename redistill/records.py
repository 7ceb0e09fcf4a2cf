"""Records the re-distillation loop hands across boundaries."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

TriggerSource = Literal["alertmanager", "watcher", "schedule", "manual"]
VersionStatus = Literal["candidate", "rejected", "shadow", "canary", "live", "retired", "failed"]


@dataclass(frozen=True, slots=True)
class Trigger:
    source: TriggerSource
    model: str
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    id: str
    model: str  # logical model
    base_model: str  # path or served name of the base student
    adapter_path: str | None
    dataset_manifest_hash: str | None
    gate_report: dict[str, Any] | None
    status: VersionStatus
    parent_id: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


ExampleTarget = Literal["teacher", "feedback"]


@dataclass(frozen=True, slots=True)
class Example:
    """One training/held-out example: the exact production request and what the student should answer."""

    request_hash: str  # split key: the same prompt always lands on the same side
    request_id: str
    model: str
    slice: str
    endpoint: str  # "chat" | "completions", as served
    request: dict[str, Any]  # the request body as the client sent it (messages, system prompt, params)
    target: str  # the teacher's text, or the feedback ground truth when there is one
    target_source: ExampleTarget
    teacher_text: str
    top_logprobs: list[dict[str, float]] | None = None  # the teacher's per-token top-k, when stored
    disagreement: bool = False  # the live student disagreed with the teacher on this request
    created_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Example":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
