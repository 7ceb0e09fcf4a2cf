"""The tiny student: a tokenizer that can spell anything, and a Llama that loads and runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from redistill.tinymodel import build_student, build_tokenizer, parameter_count

CORPUS = [
    "Where is my parcel? The tracking number shows no update.",
    "I was charged twice on my invoice this month.",
    "Please cancel my subscription.",
    "I cannot log in to my account.",
] * 30 + ["billing", "shipping", "account", "cancel"] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=1000)


@pytest.mark.parametrize(
    "text",
    ["Where is my parcel?", "Das Gerät ist kaputt — naïve café", "smart-thermostat firmware 2.4 🚀 日本語", "a\n\n\tb  c"],
)
def test_any_text_round_trips_without_unk(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    # Per-token decode (what vLLM reports as top-logprob keys) concatenates back to the text for
    # characters inside the alphabet.
    if text.isascii():
        assert "".join(tokenizer.decode([i]) for i in ids) == text


def test_frequent_words_become_single_tokens_with_their_space(tokenizer) -> None:
    assert tokenizer.tokenize(" parcel") == [" parcel"]
    assert tokenizer.tokenize("billing") == ["billing"]


def test_chat_template_and_special_tokens(tokenizer) -> None:
    messages = [{"role": "system", "content": "Classify."}, {"role": "user", "content": "Where is my parcel?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>Classify.</s><|user|>Where is my parcel?</s><|assistant|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|system|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_student_saves_loads_and_trains(tokenizer, tmp_path: Path) -> None:
    out = build_student(tmp_path / "student", tokenizer, seed=3)
    assert (out / "model.safetensors").exists()
    assert 150_000 < parameter_count(out) < 1_500_000
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tokenizer.eos_token_id]

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.chat_template and tok.eos_token_id == tokenizer.eos_token_id
    batch = tok(["<|user|>Where is my parcel?</s><|assistant|>shipping</s>"], return_tensors="pt", add_special_tokens=False)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2


def test_same_seed_same_weights(tokenizer, tmp_path: Path) -> None:
    a = build_student(tmp_path / "a", tokenizer, seed=1)
    b = build_student(tmp_path / "b", tokenizer, seed=1)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
