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
