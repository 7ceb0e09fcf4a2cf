"""Demo traffic: tickets sent through the gateway with the official openai client, each answer checked
against the ticket's true label (which only the demo knows; the gateway only sees teacher agreement)."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import openai
from openai import AsyncOpenAI

from gateway.demo.task import Ticket


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float
    stage: str  # the scenario step that sent it (e.g. "before", "drift", "recovery")
    phase: str  # the ticket's world: before | after
    expected: str
    answer: str | None
    route: str | None
    latency_s: float
    error: str | None = None

    @property
    def correct(self) -> bool:
        return self.answer is not None and self.answer.strip().lower().startswith(self.expected)


@dataclass(slots=True)
class TrafficLog:
    """Every outcome, plus a recent window for the live status line."""

    outcomes: list[Outcome] = field(default_factory=list)
    recent: deque[Outcome] = field(default_factory=lambda: deque(maxlen=50))

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.recent.append(outcome)

    def accuracy(self, outcomes: Iterable[Outcome] | None = None) -> float | None:
        items = list(self.recent if outcomes is None else outcomes)
        return sum(o.correct for o in items) / len(items) if items else None

    def for_stage(self, stage: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.stage == stage]

    def errors(self) -> int:
        return sum(o.error is not None for o in self.outcomes)


def gateway_client(gateway_url: str, api_key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0, timeout=60)


async def send_ticket(client: AsyncOpenAI, model: str, ticket: Ticket, stage: str) -> Outcome:
    t0 = time.perf_counter()
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=ticket.messages(), max_tokens=4, temperature=0.0, extra_headers=ticket.headers(),
        )
        resp = raw.parse()
        answer = resp.choices[0].message.content or ""
        return Outcome(time.time(), stage, ticket.phase, ticket.label, answer, raw.headers.get("x-distillgate-route"),
                       time.perf_counter() - t0)
    except openai.APIError as exc:
        return Outcome(time.time(), stage, ticket.phase, ticket.label, None, None, time.perf_counter() - t0,
                       error=f"{type(exc).__name__}: {exc}"[:200])


async def run_traffic(client: AsyncOpenAI, model: str, tickets: Iterable[Ticket], *, stage: str, log: TrafficLog,
                      concurrency: int = 4, rate_per_s: float | None = None,
                      stop: Callable[[], bool] | None = None) -> int:
    """Send tickets (at most `concurrency` in flight, optionally paced); returns how many were sent.
    `stop()` is checked before each ticket, so a step can end traffic once its condition is met."""
    gate = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[None]] = set()
    sent = 0
    interval = 1.0 / rate_per_s if rate_per_s else 0.0

    async def one(ticket: Ticket) -> None:
        try:
            log.add(await send_ticket(client, model, ticket, stage))
        finally:
            gate.release()

    for ticket in tickets:
        if stop is not None and stop():
            break
        await gate.acquire()
        task = asyncio.create_task(one(ticket))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
        if interval:
            await asyncio.sleep(interval)
    if pending:
        await asyncio.gather(*pending)
    return sent
