"""Putting a gated version in front of traffic: vLLM runtime LoRA loading and the shadow -> canary -> live
stages, with automatic rollback when the canary does worse than the version it would replace.

Runs inside the gateway process as a background task (no training here): ``await controller.run()``.
Registry calls are synchronous SQL, so they run in a worker thread to keep the event loop free.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from redistill.metrics import RedistillMetrics
from redistill.records import ModelVersion
from redistill.registry import ActiveVersions, Registry
from redistill.settings import PromoteSettings

log = logging.getLogger(__name__)
BASE_VERSION = "base"


class AdapterError(Exception):
    """vLLM refused a LoRA load/unload; ``status`` is its HTTP status (404 = bad path or unknown name)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"vLLM answered {status}: {message}")
        self.status = status


class VLLMAdmin:
    """vLLM's runtime LoRA endpoints (server started with --enable-lora and
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). The LoRA name is the version id."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        root = base_url.rstrip("/")
        self.api_root = root if root.endswith("/v1") else root + "/v1"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
            self._owns_session = True
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        async with self._client().post(self.api_root + path, json=body, headers=self._headers) as resp:
            if resp.status != 200:
                raise AdapterError(resp.status, (await resp.text())[:500])

    async def load(self, name: str, path: str, *, inplace: bool = False) -> None:
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if inplace:
            body["load_inplace"] = True  # hot-swap the weights behind an existing name
        await self._post("/load_lora_adapter", body)

    async def unload(self, name: str) -> None:
        await self._post("/unload_lora_adapter", {"lora_name": name})

    async def models(self) -> list[str]:
        async with self._client().get(self.api_root + "/models", headers=self._headers) as resp:
            if resp.status != 200:
                raise AdapterError(resp.status, (await resp.text())[:500])
            data = await resp.json()
        return [m["id"] for m in data.get("data", [])]

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()


class AgreementView(Protocol):
    n: int
    ratio: float | None
    lower: float | None
    upper: float | None


Agreement = Callable[[str, str], AgreementView]  # (model, version) -> evaluator AgreementSnapshot


@dataclass(frozen=True, slots=True)
class StageChange:
    model: str
    version: str
    to: str  # shadow | canary | live | rolled_back | rejected
    reason: str


class PromotionController:
    def __init__(
        self,
        registry: Registry,
        admin_for: Callable[[str], VLLMAdmin],
        agreement: Agreement,
        settings: PromoteSettings,
        models: Iterable[str],
        *,
        metrics: RedistillMetrics | None = None,
        clock: Callable[[], float] = time.time,
        interval_s: float = 5.0,
        unload_grace_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self._admin_for = admin_for
        self._agreement = agreement
        self.settings = settings
        self.models = list(models)
        self._metrics = metrics
        self._clock = clock
        self.interval_s = interval_s
        # Retired adapters stay loaded a little while: the gateway re-reads active versions every
        # registry_poll_s, and requests already routed to the old name must not 404.
        self.unload_grace_s = unload_grace_s
        self._pending_unloads: dict[tuple[str, str], float] = {}
        self._stopping = asyncio.Event()

    # -- entry points -----------------------------------------------------------------------------
    async def submit(self, version_id: str) -> ModelVersion:
        """A candidate that passed the gate: load its adapter into vLLM, then shadow (or canary)."""
        version = await asyncio.to_thread(self.registry.get, version_id)
        if version.adapter_path is None:
            raise AdapterError(400, f"{version_id} has no adapter to load")
        try:
            await self._admin_for(version.model).load(version.id, version.adapter_path)
        except (AdapterError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await asyncio.to_thread(self.registry.set_status, version_id, "failed", f"adapter load failed: {exc}")
            raise
        stage = "canary" if self.settings.skip_shadow else "shadow"
        version = await asyncio.to_thread(self.registry.set_status, version_id, stage, "gate passed, adapter loaded")
        self._count(version.model, stage)
        await self._export(version.model)
        return version

    async def rollback(self, model: str, reason: str = "manual rollback") -> ActiveVersions:
        """Reject an in-flight canary/shadow, else retire live and restore the previous version."""
        before = await asyncio.to_thread(self.registry.active, model)
        active = await asyncio.to_thread(self.registry.rollback, model, reason)
        if active.live is not None and active.live.adapter_path and (before.live is None or before.live.id != active.live.id):
            # The restored version's adapter may have been unloaded when it was retired.
            await self._admin_for(model).load(active.live.id, active.live.adapter_path, inplace=True)
        for old in (before.canary, before.shadow, before.live):
            if old is not None and old.id not in {v.id for v in (active.live, active.canary, active.shadow) if v}:
                self._schedule_unload(model, old.id)
        self._count(model, "rolled_back")
        await self._export(model)
        return active

    async def tick(self) -> list[StageChange]:
        changes: list[StageChange] = []
        for model in self.models:
            try:
                changes += await self._tick_model(model)
            except Exception:  # one model's trouble must not stop the others' promotions
                log.exception("promotion tick failed for %s", model)
        await self._run_unloads()
        return changes

    async def tick_unloads(self) -> None:
        """Unload adapters whose grace period is over (tick() does this too)."""
        await self._run_unloads()

    async def run(self) -> None:
        for model in self.models:  # version_info from the first scrape on, not only after a change
            try:
                await self._export(model)
            except Exception:
                log.exception("exporting versions for %s failed", model)
        while not self._stopping.is_set():
            await self.tick()
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval_s)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping.set()

    # -- stages -----------------------------------------------------------------------------------
    async def _tick_model(self, model: str) -> list[StageChange]:
        active = await asyncio.to_thread(self.registry.active, model)
        baseline = self._agreement(model, active.live.id if active.live else BASE_VERSION)
        now = self._clock()
        changes = []
        if active.shadow is not None:
            changes.append(await self._judge(active.shadow, baseline, self.settings.shadow_min_samples, now,
                                             on_pass="canary"))
        if active.canary is not None:
            changes.append(await self._judge(active.canary, baseline, self.settings.canary_min_samples, now,
                                             on_pass="live"))
        return [c for c in changes if c is not None]

    async def _judge(self, version: ModelVersion, baseline: AgreementView, min_samples: int, now: float,
                     *, on_pass: str) -> StageChange | None:
        snap = self._agreement(version.model, version.id)
        worse_for_sure = (snap.upper is not None and baseline.lower is not None and snap.upper < baseline.lower)
        if worse_for_sure or (snap.n >= min_samples and snap.ratio is not None
                              and baseline.ratio is not None and snap.ratio < baseline.ratio):
            reason = (f"{version.status} agreement {snap.ratio:.3f} (n={snap.n}) below the previous version's "
                      f"{baseline.ratio:.3f}")
            return await self._reject(version, reason)
        if snap.n >= min_samples and snap.ratio is not None:
            reason = f"{version.status} agreement {snap.ratio:.3f} (n={snap.n}) holds vs {baseline.ratio}"
            if on_pass == "live":
                previous = (await asyncio.to_thread(self.registry.active, version.model)).live
                await asyncio.to_thread(self.registry.promote_live, version.id, reason)
                if previous is not None:
                    self._schedule_unload(version.model, previous.id)
            else:
                await asyncio.to_thread(self.registry.set_status, version.id, "canary", reason)
            self._count(version.model, on_pass)
            await self._export(version.model)
            return StageChange(version.model, version.id, on_pass, reason)
        if now - version.updated_at > self.settings.stage_timeout_s:
            return await self._reject(version, f"{version.status}: only {snap.n} samples after "
                                               f"{self.settings.stage_timeout_s:.0f}s")
        return None

    async def _reject(self, version: ModelVersion, reason: str) -> StageChange:
        await asyncio.to_thread(self.registry.set_status, version.id, "rejected", reason)
        self._schedule_unload(version.model, version.id)
        self._count(version.model, "rolled_back")
        await self._export(version.model)
        return StageChange(version.model, version.id, "rolled_back", reason)

    # -- helpers ----------------------------------------------------------------------------------
    def _schedule_unload(self, model: str, version_id: str) -> None:
        self._pending_unloads[(model, version_id)] = self._clock() + self.unload_grace_s

    async def _run_unloads(self) -> None:
        now = self._clock()
        for (model, vid), due in list(self._pending_unloads.items()):
            if now < due:
                continue
            try:
                await self._admin_for(model).unload(vid)
            except AdapterError as exc:
                if exc.status != 404:  # 404: already gone, which is what we wanted
                    log.warning("unloading %s failed: %s", vid, exc)
                    continue
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("unloading %s failed: %s", vid, exc)
                continue
            del self._pending_unloads[(model, vid)]

    def _count(self, model: str, status: str) -> None:
        if self._metrics is not None:
            self._metrics.promotions.labels(model, status).inc()

    async def _export(self, model: str) -> None:
        if self._metrics is None:
            return
        active = await asyncio.to_thread(self.registry.active, model)
        self._metrics.set_versions(model, active.live.id if active.live else None,
                                   active.canary.id if active.canary else None)
