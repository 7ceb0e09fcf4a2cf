"""Keeps a snapshot of each model's active versions, refreshed off the hot path.

Routing reads `active(model)` (a dict lookup); a background task re-reads Registry.active(model) every
`interval_s` in a worker thread (the registry is sync SQLAlchemy). With no registry, every model serves
its base student.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("distillgate.gateway")


class RegistryPoller:
    def __init__(self, registry: Any | None, models: Iterable[str], interval_s: float) -> None:
        self.registry = registry
        self.models = list(models)
        self.interval_s = interval_s
        self.snapshot: dict[str, Any] = {}
        self._task: asyncio.Task | None = None

    def active(self, model: str) -> Any | None:
        return self.snapshot.get(model)

    def version_in(self, model: str, stage: str) -> str | None:
        """The id of `model`'s version in `stage` ("live", "canary", "shadow") of the snapshot, if any."""
        version = getattr(self.snapshot.get(model), stage, None)
        return version.id if version is not None else None

    async def refresh(self) -> None:
        if self.registry is None:
            return
        for model in self.models:
            try:
                result = await asyncio.to_thread(self.registry.active, model)
                if inspect.isawaitable(result):
                    result = await result
            except Exception:  # a registry outage keeps the last good snapshot
                log.warning("registry poll failed for model %s", model, exc_info=True)
                continue
            self.snapshot[model] = result

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh()

    async def start(self) -> None:
        await self.refresh()
        if self.registry is not None:
            self._task = asyncio.create_task(self._run(), name="distillgate-registry-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
