"""Route decisions: which side (student or teacher) and which student version answers a request.

Policies, applied in order: override header (keys with can_override_route only) > weighted split
(sticky when a header/body field is configured). Student traffic is then split between the live and
canary versions from the registry snapshot. Each policy is a small object so they can be tested alone.
"""
from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.auth import KeyInfo
from gateway.config import ModelSettings, Target
from gateway.errors import InvalidRequest, PermissionDenied

ROUTE_HEADER = "x-distillgate-route"
BASE_VERSION = "base"


class _Version(Protocol):
    id: str


class ActiveVersionsLike(Protocol):
    """redistill.registry.ActiveVersions, by shape (the gateway only reads these fields)."""

    live: _Version | None
    canary: _Version | None
    canary_percent: float


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: str  # "student" | "teacher"
    target: Target  # upstream + served model name of that side
    upstream_model: str  # what goes into the forwarded body's `model` (served name or LoRA adapter name)
    version: str  # student version id ("base" = no adapter) or the teacher's model name
    reason: str  # "override" | "sticky" | "weighted"


def unit_hash(value: str) -> float:
    """A stable number in [0, 1) for a sticky key (crc32: fast, stable across processes)."""
    return zlib.crc32(value.encode()) / 4294967296.0


class OverridePolicy:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def pick(self, wanted: str, key: KeyInfo) -> str:
        """The route a request asks for with ROUTE_HEADER (its value `wanted`), if its key may choose."""
        if wanted not in ("student", "teacher"):
            raise InvalidRequest(f"{ROUTE_HEADER} must be 'student' or 'teacher'", param=ROUTE_HEADER)
        if not (self.enabled and key.can_override_route):
            raise PermissionDenied(f"this API key may not choose the route with {ROUTE_HEADER}", param=ROUTE_HEADER)
        return wanted


class StickyPolicy:
    """Returns a stable unit number for requests sharing a header/body value, else None."""

    def __init__(self, header: str | None, body_field: str | None) -> None:
        self.header = header.lower() if header else None
        self.body_field = body_field

    def unit(self, headers: Mapping[str, str], body: Mapping[str, Any], salt: str = "") -> float | None:
        value = headers.get(self.header) if self.header else None
        if value is None and self.body_field:
            raw = body.get(self.body_field)
            value = raw if isinstance(raw, str) and raw else None
        return None if value is None else unit_hash(salt + value)


class CanarySplit:
    """Student traffic to the live version's adapter, canary_percent of it to the canary's."""

    def pick(self, active: ActiveVersionsLike | None, u: float) -> str:
        if active is None:
            return BASE_VERSION
        canary = active.canary
        if canary is not None and u < active.canary_percent / 100.0:
            return canary.id
        return self.live(active)

    @staticmethod
    def live(active: ActiveVersionsLike) -> str:
        """The version serving what the canary does not take (all of it when there is no canary)."""
        return active.live.id if active.live is not None else BASE_VERSION


class ModelRouter:
    def __init__(self, name: str, settings: ModelSettings, rng: Callable[[], float] = random.random) -> None:
        self.name = name
        self.settings = settings
        r = settings.routing
        self.override = OverridePolicy(r.allow_override)
        self.sticky = StickyPolicy(r.sticky.header, r.sticky.body_field) if (r.sticky.header or r.sticky.body_field) else None
        self.student_fraction = r.student_percent / 100.0  # weighted split: u < this goes to the student
        self.canary = CanarySplit()
        self._rng = rng
        self._decisions: dict[tuple[str, str, str], RouteDecision] = {}
        # The decisions nearly every request gets, by reason, without building a key.
        reasons = ("override", "sticky", "weighted")
        self._teacher = {r: self._decision("teacher", BASE_VERSION, r) for r in reasons}
        self._base_student = {r: self._decision("student", BASE_VERSION, r) for r in reasons}
        # The request headers decide() may read (the proxy decodes only the headers someone reads).
        self.header_names = frozenset({ROUTE_HEADER} | ({self.sticky.header} if self.sticky and self.sticky.header else set()))

    def _decision(self, route: str, version: str, reason: str) -> RouteDecision:
        """Decisions are immutable and few (sides x live versions x reasons): built once, then looked up."""
        key = (route, version, reason)
        found = self._decisions.get(key)
        if found is None:
            if route == "teacher":
                t = self.settings.teacher
                found = RouteDecision("teacher", t, t.model, t.model, reason)
            else:
                s = self.settings.student
                found = RouteDecision("student", s, s.model if version == BASE_VERSION else version, version, reason)
            if len(self._decisions) >= 1024:  # versions come and go over months; never grow without bound
                self._decisions.clear()
            self._decisions[key] = found
        return found

    def side(self, route: str, version: str = BASE_VERSION) -> RouteDecision:
        """The decision for a fixed side (used for fallback, cascade escalation and shadow calls)."""
        return self._decision(route, BASE_VERSION if route == "teacher" else version, "fixed")

    def decide(
        self, headers: Mapping[str, str], body: Mapping[str, Any], key: KeyInfo, active: ActiveVersionsLike | None
    ) -> RouteDecision:
        sticky_u = None
        wanted = headers.get(ROUTE_HEADER)
        if wanted is not None:
            route, reason = self.override.pick(wanted, key), "override"
        else:
            if self.sticky is not None:
                sticky_u = self.sticky.unit(headers, body)
            if sticky_u is not None:
                route, reason = ("student" if sticky_u < self.student_fraction else "teacher"), "sticky"
            else:
                route, reason = ("student" if self._rng() < self.student_fraction else "teacher"), "weighted"
        if route == "teacher":
            return self._teacher[reason]
        if active is None:  # no registry versions: the base student, nothing to draw
            return self._base_student[reason]
        if active.canary is None:  # no canary to split off: the live version, nothing to draw either
            return self._decision("student", self.canary.live(active), reason)
        u = self.sticky.unit(headers, body, "canary:") if sticky_u is not None else self._rng()
        return self._decision("student", self.canary.pick(active, u if u is not None else self._rng()), reason)
