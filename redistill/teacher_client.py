"""Asking the teacher for seed prompts from the job process (OpenAI-compatible chat/completions)."""
from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp

from evaluator.records import ExchangeRecord

TOP_LOGPROBS = 5


class TeacherError(Exception):
    pass


def _logprobs(choice: dict[str, Any]) -> tuple[tuple[float, ...] | None, tuple[dict[str, float], ...] | None]:
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None, None
    lps = tuple(float(t["logprob"]) for t in content)
    tops = tuple({a["token"]: float(a["logprob"]) for a in t.get("top_logprobs") or []} for t in content)
    return lps, tops if any(tops) else None


class TeacherClient:
    """One aiohttp session for the whole seed run; ``__call__`` matches dataset.AskTeacher."""

    def __init__(self, base_url: str, served_model: str, *, api_key: str | None, logical_model: str,
                 timeout_s: float = 120.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.served_model = served_model
        self.logical_model = logical_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def __call__(self, request: dict[str, Any]) -> ExchangeRecord:
        body = {**request, "model": self.served_model, "stream": False, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        start = time.perf_counter()
        async with self._session.post(self.url, json=body) as resp:
            if resp.status != 200:
                raise TeacherError(f"teacher answered {resp.status}: {(await resp.text())[:300]}")
            data = await resp.json()
        choice = data["choices"][0]
        lps, tops = _logprobs(choice)
        usage = data.get("usage") or {}
        return ExchangeRecord(
            request_id="seed-" + uuid.uuid4().hex[:16], model=self.logical_model, route="teacher",
            version=self.served_model, endpoint="chat", request={**request, "model": self.logical_model},
            response_text=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
            latency_s=time.perf_counter() - start, token_logprobs=lps, top_logprobs=tops, slice="seed",
        )

    async def close(self) -> None:
        await self._session.close()
