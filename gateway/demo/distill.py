"""The demo's initial distillation: ask the teacher stand-in (over HTTP, like any teacher) to answer
pre-drift tickets with top-k logprobs, and fully fine-tune the random tiny student on its answers with
redistill.train (method=full, top-k KD). The result is the base model vLLM serves."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openai import AsyncOpenAI
from tqdm.auto import tqdm

from gateway.demo.task import Ticket
from redistill.records import Example
from redistill.settings import TrainSettings
from redistill.train import TrainResult, train

TOP_K = 5


@dataclass(frozen=True, slots=True)
class DistilledStudent:
    base_dir: Path  # the random initial weights + tokenizer
    model_dir: Path  # the distilled full model vLLM serves
    result: TrainResult


def _example(ticket: Ticket, model: str, request_id: str, text: str, top: list[dict[str, float]] | None) -> Example:
    request = ticket.request(model)
    return Example(
        request_hash=hashlib.sha256(ticket.text.encode()).hexdigest(),
        request_id=request_id,
        model=model,
        slice=ticket.product_line,
        endpoint="chat",
        request=request,
        target=text,
        target_source="teacher",
        teacher_text=text,
        top_logprobs=top,
    )


async def teacher_examples(tickets: Sequence[Ticket], *, teacher_base_url: str, teacher_model: str,
                           logical_model: str, concurrency: int = 8, progress: bool = True) -> list[Example]:
    """The teacher's answers (text + per-token top-k) to each ticket, as training examples."""
    client = AsyncOpenAI(base_url=teacher_base_url, api_key="demo", max_retries=2, timeout=60)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(tickets), desc="teacher answers", disable=not progress, dynamic_ncols=True)

    async def one(i: int, ticket: Ticket) -> Example:
        async with gate:
            resp = await client.chat.completions.create(
                model=teacher_model, messages=ticket.messages(), max_tokens=4, temperature=0.0,
                logprobs=True, top_logprobs=TOP_K,
            )
        bar.update(1)
        choice = resp.choices[0]
        top = None
        if choice.logprobs and choice.logprobs.content:
            top = [{alt.token: alt.logprob for alt in entry.top_logprobs} for entry in choice.logprobs.content]
        return _example(ticket, logical_model, f"distill-{i}", choice.message.content or "", top)

    try:
        return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(tickets))))
    finally:
        bar.close()
        await client.close()


def distill_initial_student(base_dir: Path, out_dir: Path, examples: Sequence[Example], *,
                            epochs: int = 2, learning_rate: float = 3e-3, device: str = "cpu",
                            dtype: str = "float32", progress: bool = True) -> DistilledStudent:
    """Full fine-tune of the random student on the teacher's answers (redistill.train, method=full)."""
    settings = TrainSettings(method="full", loss="auto", epochs=epochs, learning_rate=learning_rate,
                             batch_size=32, max_length=96, device=device, dtype=dtype)
    result = train(examples, base_dir, out_dir, settings, progress=progress)
    return DistilledStudent(base_dir=base_dir, model_dir=result.output_dir, result=result)
