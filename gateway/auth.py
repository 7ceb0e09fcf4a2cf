"""API-key authentication: keys are stored as sha256 digests and compared in constant time."""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import AuthSettings, RateLimit
from gateway.errors import AuthenticationError


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    models: frozenset[str]  # logical model names, or {"*"}
    can_override_route: bool = False
    admin: bool = False
    rate_limit: RateLimit = field(default_factory=RateLimit)
    limited: bool = field(init=False)  # any rate limit at all: the hot path skips the limiter when not

    def __post_init__(self) -> None:
        limits = self.rate_limit
        object.__setattr__(self, "limited", limits.requests_per_minute is not None or limits.tokens_per_minute is not None)

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


_SEEN_CAP = 4096
ANONYMOUS = KeyInfo(name="anonymous", models=frozenset({"*"}))


class _HasHeaders(Protocol):
    headers: Mapping[str, str]


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The key from `Authorization: Bearer <key>` (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """`authenticate(request)` for FastAPI routes, `authenticate_header(value)` for the raw ASGI hot path."""

    def __init__(self, settings: AuthSettings) -> None:
        self.open = settings.mode == "none"
        self._keys: list[tuple[bytes, KeyInfo]] = []
        for k in settings.keys:
            digest = k.digest()
            if digest is None:
                continue  # env var unset: that key simply cannot log in
            info = KeyInfo(k.name, frozenset(k.models), k.can_override_route, k.admin, k.rate_limit)
            self._keys.append((bytes.fromhex(digest), info))
        # Header value -> key, for headers that already authenticated: hashing and comparing against every
        # key is the dearest step of a request's auth. Only valid keys get in, so the size is bounded by how
        # many spellings of valid keys clients send; it is cleared rather than grown past the cap.
        self._seen: dict[tuple[str | None, str | None], KeyInfo] = {}

    def authenticate_header(self, authorization: str | None, api_key_header: str | None = None) -> KeyInfo:
        if self.open:
            return ANONYMOUS
        seen = self._seen.get((authorization, api_key_header))
        if seen is not None:
            return seen
        token = bearer_token(authorization) or (api_key_header.strip() if api_key_header else None)
        if token is None:
            raise AuthenticationError("Missing API key: send `Authorization: Bearer <key>`.")
        digest = hashlib.sha256(token.encode()).digest()
        found: KeyInfo | None = None
        # Compare against every key so the time taken does not depend on which (if any) matched.
        for stored, info in self._keys:
            if hmac.compare_digest(stored, digest):
                found = info
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        if len(self._seen) >= _SEEN_CAP:
            self._seen.clear()
        self._seen[(authorization, api_key_header)] = found
        return found

    def authenticate(self, request: _HasHeaders | Any) -> KeyInfo:
        """Authenticate a Starlette/FastAPI request (or anything with `.headers`); raises AuthenticationError."""
        headers = request.headers
        return self.authenticate_header(headers.get("authorization"), headers.get("api-key"))
