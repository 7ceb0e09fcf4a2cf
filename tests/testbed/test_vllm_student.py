"""The session's vLLM student server, called the way users call it: with the official openai client."""
from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from gateway.demo.task import TicketGenerator

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def client(vllm_student) -> OpenAI:
    return OpenAI(base_url=vllm_student.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def messages() -> list[dict[str, str]]:
    return TicketGenerator(5).ticket("before").messages()


def test_models_lists_the_served_name(client: OpenAI, vllm_student) -> None:
    ids = [m.id for m in client.models.list().data]
    assert vllm_student.served_name in ids


def test_chat_completion_returns_top_logprobs_in_student_tokens(client: OpenAI, vllm_student, messages) -> None:
    resp = client.chat.completions.create(
        model=vllm_student.served_name, messages=messages, max_tokens=6, temperature=0.0, logprobs=True, top_logprobs=5
    )
    choice = resp.choices[0]
    content = choice.logprobs.content
    assert resp.usage.completion_tokens == len(content) > 0
    assert "".join(t.token for t in content) == choice.message.content
    tok = AutoTokenizer.from_pretrained(vllm_student.tokenizer_dir)
    vocab_pieces = {tok.decode([i]) for i in range(len(tok))}
    for entry in content:
        assert len(entry.top_logprobs) == 5
        assert all(alt.logprob <= 0.0 for alt in entry.top_logprobs)
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(max(a.logprob for a in entry.top_logprobs), abs=1e-4)
        assert {a.token for a in entry.top_logprobs} <= vocab_pieces


def test_streaming_matches_the_non_streamed_answer(client: OpenAI, vllm_student, messages) -> None:
    kwargs = dict(model=vllm_student.served_name, messages=messages, max_tokens=6, temperature=0.0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    pieces, usage = [], None
    for chunk in client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    assert "".join(pieces) == whole
    assert usage is not None and usage.completion_tokens > 0


def _train_adapter(model_dir: Path, out: Path, messages: list[dict[str, str]], answer: str, steps: int = 60) -> Path:
    """A trivial LoRA adapter that makes the student answer `answer` to `messages`."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ))
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt + answer + tok.eos_token, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    labels = ids.clone()
    labels[:, :n_prompt] = -100
    optim = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    assert loss.item() < 0.1, f"adapter did not fit: loss {loss.item():.3f}"
    peft_model.save_pretrained(out)
    return out


def test_runtime_lora_load_serve_unload(client: OpenAI, vllm_student, messages, tmp_path: Path) -> None:
    base = client.chat.completions.create(
        model=vllm_student.served_name, messages=messages, max_tokens=4, temperature=0.0
    ).choices[0].message.content
    target = "refund" if not base.startswith("refund") else "cancel"
    adapter = _train_adapter(vllm_student.model_dir, tmp_path / "adapter", messages, target)

    admin = httpx.Client(base_url=vllm_student.root_url, timeout=60)
    name = "tb-adapter-1"
    resp = admin.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)})
    assert resp.status_code == 200, resp.text
    assert name in [m.id for m in client.models.list().data]

    answer = client.chat.completions.create(model=name, messages=messages, max_tokens=4, temperature=0.0)
    assert answer.choices[0].message.content.startswith(target)
    assert answer.choices[0].finish_reason == "stop"

    resp = admin.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert resp.status_code == 200, resp.text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=name, messages=messages, max_tokens=4)
    # The base model still serves after the adapter is gone.
    again = client.chat.completions.create(model=vllm_student.served_name, messages=messages, max_tokens=4, temperature=0.0)
    assert again.choices[0].message.content == base


def test_loading_a_missing_adapter_fails_cleanly(vllm_student, tmp_path: Path) -> None:
    with httpx.Client(base_url=vllm_student.root_url, timeout=60) as admin:
        resp = admin.post("/v1/load_lora_adapter", json={"lora_name": "nope", "lora_path": str(tmp_path / "missing")})
        assert resp.status_code in (400, 404)
        assert admin.get("/health").status_code == 200
