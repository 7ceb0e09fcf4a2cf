"""Model versions, their lineage and status, on the evaluator store's tables (one schema, one engine).

Every status change is written with a version_events row in the same transaction, so the audit trail
and the state can never disagree. Synchronous SQLAlchemy: callers on an event loop run it in a thread.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from evaluator.store.schema import model_versions, version_events
from redistill.records import ModelVersion, VersionStatus

STATUSES: tuple[VersionStatus, ...] = ("candidate", "rejected", "shadow", "canary", "live", "retired", "failed")
# Which moves are legal. live -> retired happens on promotion of the next one or on rollback;
# retired -> live only through rollback (re-activating the previous version).
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "candidate": frozenset({"shadow", "canary", "live", "rejected", "failed"}),
    "shadow": frozenset({"canary", "live", "rejected", "failed"}),
    "canary": frozenset({"live", "rejected", "failed"}),
    "live": frozenset({"retired", "rejected"}),  # rejected = rolled back, never restored later
    "retired": frozenset({"live"}),
    "rejected": frozenset(),
    "failed": frozenset(),
}


class RegistryError(Exception):
    """Base class for registry errors."""


class UnknownVersion(RegistryError):
    pass


class InvalidTransition(RegistryError):
    pass


@dataclass(frozen=True, slots=True)
class ActiveVersions:
    """What the gateway routes to: live (None = the base served model), an optional canary and shadow."""

    live: ModelVersion | None
    canary: ModelVersion | None
    canary_percent: float
    shadow: ModelVersion | None


@dataclass(frozen=True, slots=True)
class VersionEvent:
    version_id: str
    model: str
    from_status: str | None
    to_status: str
    reason: str | None
    created_at: float


def new_version_id(model: str, now: float) -> str:
    """Readable, sortable and unique; also the vLLM LoRA adapter name, so URL-safe characters only."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in model)
    return f"{safe}-{stamp}-{secrets.token_hex(3)}"


def _row_to_version(row: Any) -> ModelVersion:
    return ModelVersion(
        id=row.id,
        model=row.model,
        base_model=row.base_model,
        adapter_path=row.adapter_path,
        dataset_manifest_hash=row.dataset_manifest_hash,
        gate_report=row.gate_report,
        status=row.status,
        parent_id=row.parent_id,
        hyperparameters=dict(row.hyperparameters or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class Registry:
    def __init__(self, engine: Engine, *, canary_percent: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.canary_percent = canary_percent
        self._clock = clock

    # -- writes ---------------------------------------------------------------------------------
    def register(
        self,
        *,
        model: str,
        base_model: str,
        adapter_path: str | None,
        dataset_manifest_hash: str | None,
        gate_report: Mapping[str, Any] | None,
        status: VersionStatus = "candidate",
        parent_id: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        version_id: str | None = None,
        reason: str = "registered",
    ) -> ModelVersion:
        if status not in STATUSES:
            raise InvalidTransition(f"unknown status {status!r}")
        now = self._clock()
        vid = version_id or new_version_id(model, now)
        values = dict(
            id=vid, model=model, base_model=base_model, adapter_path=adapter_path,
            dataset_manifest_hash=dataset_manifest_hash, gate_report=dict(gate_report) if gate_report else None,
            status=status, parent_id=parent_id, hyperparameters=dict(hyperparameters or {}),
            created_at=now, updated_at=now,
        )
        with self.engine.begin() as conn:
            conn.execute(insert(model_versions).values(**values))
            self._event(conn, vid, model, None, status, reason, now)
        return self.get(vid)

    def set_status(self, version_id: str, status: VersionStatus, reason: str) -> ModelVersion:
        with self.engine.begin() as conn:
            self._transition(conn, version_id, status, reason)
        return self.get(version_id)

    def promote_live(self, version_id: str, reason: str) -> ModelVersion:
        """Make a version live and retire the previous live one, atomically."""
        with self.engine.begin() as conn:
            current = self._get(conn, version_id)
            for old in self._with_status(conn, current.model, "live"):
                if old.id != version_id:
                    self._transition(conn, old.id, "retired", f"superseded by {version_id}")
            self._transition(conn, version_id, "live", reason)
        return self.get(version_id)

    def rollback(self, model: str, reason: str = "manual rollback") -> ActiveVersions:
        """Undo the newest change: reject an in-flight canary/shadow if any, else retire the live version
        and re-activate the one it replaced (no previous version = back to the base model)."""
        with self.engine.begin() as conn:
            in_flight = self._with_status(conn, model, "canary") + self._with_status(conn, model, "shadow")
            if in_flight:
                for v in in_flight:
                    self._transition(conn, v.id, "rejected", reason)
            else:
                live = self._with_status(conn, model, "live")
                for v in live:
                    self._transition(conn, v.id, "rejected", reason)
                previous = self._previous_live(conn, model, exclude={v.id for v in live})
                if previous is not None:
                    self._transition(conn, previous.id, "live", f"{reason}: restored")
        return self.active(model)

    # -- reads ----------------------------------------------------------------------------------
    def get(self, version_id: str) -> ModelVersion:
        with self.engine.connect() as conn:
            return self._get(conn, version_id)

    def list(self, model: str) -> list[ModelVersion]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(model_versions).where(model_versions.c.model == model).order_by(model_versions.c.created_at)
            ).all()
        return [_row_to_version(r) for r in rows]

    def active(self, model: str) -> ActiveVersions:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(model_versions)
                .where(model_versions.c.model == model, model_versions.c.status.in_(("live", "canary", "shadow")))
                .order_by(model_versions.c.updated_at.desc())
            ).all()
        newest: dict[str, ModelVersion] = {}
        for r in rows:
            newest.setdefault(r.status, _row_to_version(r))
        return ActiveVersions(
            live=newest.get("live"), canary=newest.get("canary"),
            canary_percent=self.canary_percent if "canary" in newest else 0.0, shadow=newest.get("shadow"),
        )

    def events(self, version_id: str | None = None, model: str | None = None) -> list[VersionEvent]:
        q = select(version_events).order_by(version_events.c.id)
        if version_id:
            q = q.where(version_events.c.version_id == version_id)
        if model:
            q = q.where(version_events.c.model == model)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [VersionEvent(r.version_id, r.model, r.from_status, r.to_status, r.reason, r.created_at) for r in rows]

    # -- internals ------------------------------------------------------------------------------
    def _get(self, conn: Connection, version_id: str) -> ModelVersion:
        row = conn.execute(select(model_versions).where(model_versions.c.id == version_id)).first()
        if row is None:
            raise UnknownVersion(f"unknown model version {version_id!r}")
        return _row_to_version(row)

    def _with_status(self, conn: Connection, model: str, status: str) -> list[ModelVersion]:
        rows = conn.execute(
            select(model_versions).where(model_versions.c.model == model, model_versions.c.status == status)
        ).all()
        return [_row_to_version(r) for r in rows]

    def _previous_live(self, conn: Connection, model: str, exclude: set[str]) -> ModelVersion | None:
        """The version most recently retired after having been live (the audit trail says which)."""
        rows = conn.execute(
            select(version_events.c.version_id)
            .where(version_events.c.model == model, version_events.c.from_status == "live",
                   version_events.c.to_status == "retired")
            .order_by(version_events.c.id.desc())
        ).all()
        for (vid,) in rows:
            if vid in exclude:
                continue
            v = self._get(conn, vid)
            if v.status == "retired":
                return v
        return None

    def _transition(self, conn: Connection, version_id: str, status: str, reason: str) -> None:
        if status not in STATUSES:
            raise InvalidTransition(f"unknown status {status!r}")
        current = self._get(conn, version_id)
        if status not in TRANSITIONS[current.status]:
            raise InvalidTransition(f"{version_id}: {current.status} -> {status} is not allowed")
        now = self._clock()
        conn.execute(
            update(model_versions).where(model_versions.c.id == version_id).values(status=status, updated_at=now)
        )
        self._event(conn, version_id, current.model, current.status, status, reason, now)

    @staticmethod
    def _event(conn: Connection, vid: str, model: str, old: str | None, new: str, reason: str, now: float) -> None:
        conn.execute(
            insert(version_events).values(
                version_id=vid, model=model, from_status=old, to_status=new, reason=reason, created_at=now
            )
        )
