"""The one distillgate config: a typed pydantic model loaded from YAML, with env overrides.

Env overrides: ``DISTILLGATE__SECTION__FIELD=value`` (double underscore = one level down; values are
parsed as YAML, so numbers and booleans work). Secrets never live in the file: keys reference env vars.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evaluator.settings import EvaluatorSettings, ModelEvalSettings
from redistill.settings import RedistillSettings

ENV_PREFIX = "DISTILLGATE__"


class ConfigError(Exception):
    """The config is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Strict):
    connect_s: float = Field(2.0, gt=0)
    first_byte_s: float = Field(30.0, gt=0, description="until response headers arrive")
    total_s: float = Field(120.0, gt=0)


class UpstreamSettings(_Strict):
    """An upstream server. kind=openai: any OpenAI-compatible server (vLLM, OpenAI, ...)."""

    kind: Literal["openai", "litellm"] = "openai"
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1 (kind=openai)")
    api_key_env: str | None = Field(None, description="env var holding the upstream's API key")
    litellm_model: str | None = Field(None, description="e.g. anthropic/claude-3-5-haiku (kind=litellm)")
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _needs_target(self) -> "UpstreamSettings":
        if self.kind == "openai" and not self.base_url:
            raise ValueError("base_url is required when kind is 'openai'")
        if self.kind == "litellm" and not self.litellm_model:
            raise ValueError("litellm_model is required when kind is 'litellm'")
        return self

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Target(_Strict):
    """Where one side (student or teacher) of a logical model is served."""

    upstream: str = Field(description="name of an entry under `upstreams`")
    model: str = Field(description="model name the upstream serves (vLLM --served-model-name)")


class BreakerSettings(_Strict):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    open_s: float = Field(10.0, gt=0, description="how long it stays open before a half-open probe")
    half_open_max: int = Field(1, ge=1, description="probes allowed while half-open")


class FallbackSettings(_Strict):
    enabled: bool = True
    on_status: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504])
    breaker: BreakerSettings = BreakerSettings()
    teacher_to_student: bool = Field(
        False, description="also fall back the other way: a request routed to the teacher that fails goes to the student"
    )


class RetrySettings(_Strict):
    max_attempts: int = Field(2, ge=1, description="attempts per upstream, first included")
    budget_ratio: float = Field(0.1, ge=0, le=1, description="retries allowed as a fraction of recent requests")


class StickySettings(_Strict):
    header: str | None = Field(None, description="hash this header (e.g. x-user-id) to pick the route")
    body_field: str | None = Field(None, description="or the request body's field (e.g. user)")


class CascadeSettings(_Strict):
    enabled: bool = Field(False, description="non-streaming requests routed to the student; streams are plain student streams")
    min_mean_logprob: float | None = Field(-1.0, description="escalate if mean token logprob is below")
    min_token_logprob: float | None = Field(None, description="escalate if any token logprob is below")
    validator: Literal["none", "json"] = "none"
    top_logprobs: int = Field(0, ge=0, le=20)


class RoutingSettings(_Strict):
    student_percent: float = Field(100.0, ge=0, le=100, description="weighted split; the rest goes to the teacher")
    sticky: StickySettings = StickySettings()
    allow_override: bool = Field(True, description="honour x-distillgate-route for keys allowed to override")
    fallback: FallbackSettings = FallbackSettings()
    retries: RetrySettings = RetrySettings()
    cascade: CascadeSettings = CascadeSettings()


class ModelSettings(ModelEvalSettings):
    """A logical model clients ask for, e.g. `support-intent` (shadow, scorer, slices, prices inherited)."""

    student: Target
    teacher: Target
    routing: RoutingSettings = RoutingSettings()


class RateLimit(_Strict):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


class KeySettings(_Strict):
    name: str
    sha256: str | None = Field(None, description="hex sha256 of the key (`distillgate hash-key`)")
    env: str | None = Field(None, description="or: env var holding the plain key")
    models: list[str] = Field(default_factory=lambda: ["*"])
    rate_limit: RateLimit = RateLimit()
    can_override_route: bool = False
    admin: bool = Field(False, description="may post feedback, alerts and admin calls")

    @model_validator(mode="after")
    def _one_source(self) -> "KeySettings":
        if bool(self.sha256) == bool(self.env):
            raise ValueError("set exactly one of sha256 or env")
        return self

    def digest(self) -> str | None:
        if self.sha256:
            return self.sha256.lower()
        plain = os.environ.get(self.env or "")
        return hashlib.sha256(plain.encode()).hexdigest() if plain else None


class AuthSettings(_Strict):
    mode: Literal["keys", "none"] = Field("keys", description="'none' only when explicitly set")
    keys: list[KeySettings] = Field(default_factory=list)


class AccessLogSettings(_Strict):
    enabled: bool = False
    sample_rate: float = Field(1.0, ge=0, le=1)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    body_timeout_s: float = Field(30.0, gt=0, description="how long a request body may take to arrive once its headers "
                                                          "are in; slower: 408 and the connection is closed (a client "
                                                          "trickling its body would hold a connection and a task)")
    access_log: AccessLogSettings = AccessLogSettings()
    registry_poll_s: float = Field(2.0, gt=0, description="how often routing re-reads active versions")
    proxy_headers: bool = Field(False, description="trust X-Forwarded-For/-Proto (uvicorn's proxy-headers middleware, "
                                                   "a per-request cost): only behind a proxy that sets them")
    server_header: bool = Field(False, description="send uvicorn's `server: uvicorn` response header (off: it tells "
                                                   "scanners what runs here, and uvicorn validates it on every response)")


class TracingSettings(_Strict):
    enabled: bool = False
    otlp_endpoint: str | None = Field(None, description="http://collector:4318/v1/traces; none = no exporter")
    service_name: str = "distillgate"


class DistillgateConfig(_Strict):
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    upstreams: dict[str, UpstreamSettings]
    models: dict[str, ModelSettings]
    tracing: TracingSettings = TracingSettings()
    evaluator: EvaluatorSettings = EvaluatorSettings()
    redistill: RedistillSettings = RedistillSettings()

    @model_validator(mode="after")
    def _references(self) -> "DistillgateConfig":
        for name, m in self.models.items():
            for side in ("student", "teacher"):
                up = getattr(m, side).upstream
                if up not in self.upstreams:
                    raise ValueError(f"models.{name}.{side}.upstream: unknown upstream {up!r}")
        if self.auth.mode == "keys" and not self.auth.keys:
            raise ValueError("auth.keys: empty while auth.mode is 'keys' (set mode: none to run open)")
        return self


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {'.'.join(path)} does not name a config section")
        node[path[-1]] = yaml.safe_load(raw)
    return data


def parse_config(data: dict[str, Any], environ: dict[str, str] | None = None) -> DistillgateConfig:
    data = _apply_env(dict(data or {}), dict(os.environ if environ is None else environ))
    try:
        return DistillgateConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None


def load_config(path: str | Path, environ: dict[str, str] | None = None) -> DistillgateConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    return parse_config(data, environ)
