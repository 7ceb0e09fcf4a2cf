"""Fixtures for the gateway tests: two real fake upstreams (student, teacher) and a config builder."""
from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fakes.gateway_thread import metric_value  # noqa: F401 - re-exported for the gateway tests
from fakes.openai_server import FakeOpenAI
from gateway.config import DistillgateConfig, parse_config

ADMIN_KEY = "sk-test-admin-0000000000000000"
USER_KEY = "sk-test-user-1111111111111111"
OTHER_KEY = "sk-test-other-222222222222222"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture
def student() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(answer="student says hi") as up:
        yield up


@pytest.fixture
def teacher() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(answer="teacher says hi") as up:
        yield up


@pytest.fixture
def make_config(student: FakeOpenAI, teacher: FakeOpenAI) -> Callable[..., DistillgateConfig]:
    """make_config(extra_dict, routing={...}) -> DistillgateConfig for model `support` (student+teacher)."""

    def build(extra: dict[str, Any] | None = None, *, routing: dict[str, Any] | None = None) -> DistillgateConfig:
        fast = {"connect_s": 1.0, "first_byte_s": 5.0, "total_s": 10.0}
        data: dict[str, Any] = {
            "upstreams": {
                "vllm": {"base_url": student.url, "timeouts": fast},
                "teacher": {"base_url": teacher.url, "timeouts": fast},
            },
            "models": {
                "support": {
                    "student": {"upstream": "vllm", "model": "student-served"},
                    "teacher": {"upstream": "teacher", "model": "teacher-served"},
                    "routing": routing or {},
                },
                "other": {
                    "student": {"upstream": "vllm", "model": "other-student"},
                    "teacher": {"upstream": "teacher", "model": "other-teacher"},
                },
            },
            "auth": {"keys": [
                {"name": "admin", "sha256": sha(ADMIN_KEY), "admin": True, "can_override_route": True},
                {"name": "user", "sha256": sha(USER_KEY), "models": ["support"]},
                {"name": "other", "sha256": sha(OTHER_KEY), "models": ["other"]},
            ]},
        }
        return parse_config(deep_merge(data, extra or {}), environ={})

    return build


def chat_body(content: str = "hello", model: str = "support", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
