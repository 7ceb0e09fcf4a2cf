"""Turning an Example into model tensors exactly as the student is served: the tokenizer's chat template
(what vLLM applies) for chat requests, the raw prompt for completions, the target followed by EOS.

Teacher top-k logprobs are aligned to the target's tokens only when the tokenizers evidently match:
every top-k key must be a single student token and the target token must be among the top-k at nearly
every position. Otherwise the example trains with sequence-level CE only (cross-tokenizer KD would need
token-alignment heuristics we do not trust).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redistill.losses import IGNORE
from redistill.records import Example

MIN_TARGET_IN_TOPK = 0.8


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # aligned with input_ids (not shifted); IGNORE on the prompt
    topk_ids: list[list[int]] | None  # per input position, aligned like labels
    topk_logprobs: list[list[float]] | None


def prompt_text(tokenizer: Any, request: dict[str, Any]) -> str:
    if "messages" in request:
        return tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=False)
    return str(request.get("prompt", ""))


def _token_id(tokenizer: Any, vocab: dict[str, int], token: str) -> int | None:
    if token in vocab:
        return vocab[token]
    ids = tokenizer.encode(token, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def align_topk(
    tokenizer: Any, vocab: dict[str, int], target_ids: list[int], top: list[dict[str, float]]
) -> tuple[list[list[int]], list[list[float]]] | None:
    """Per target token (EOS included, which may lack an entry) its teacher top-k as ids/logprobs."""
    n_text = len(target_ids) - 1  # the last target id is EOS
    if len(top) not in (n_text, n_text + 1) or n_text == 0:
        return None
    ids_out: list[list[int]] = []
    lps_out: list[list[float]] = []
    hits = 0
    for pos, entry in enumerate(top):
        ids, lps = [], []
        for token, lp in entry.items():
            tid = _token_id(tokenizer, vocab, token)
            if tid is None:
                return None
            ids.append(tid)
            lps.append(float(lp))
        hits += target_ids[pos] in ids
        ids_out.append(ids)
        lps_out.append(lps)
    if hits / len(top) < MIN_TARGET_IN_TOPK:
        return None
    while len(ids_out) < len(target_ids):
        ids_out.append([])
        lps_out.append([])
    return ids_out, lps_out


def encode(tokenizer: Any, example: Example, max_length: int, *, use_topk: bool) -> Encoded:
    prompt_ids = tokenizer(prompt_text(tokenizer, example.request), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    aligned = None
    if use_topk and example.top_logprobs and example.target_source == "teacher":
        aligned = align_topk(tokenizer, tokenizer.get_vocab(), target_ids, example.top_logprobs)
    target_ids = target_ids[: max(1, max_length - 1)]
    # Keep the whole target; cut the prompt from the left (the instruction's end matters most).
    prompt_ids = prompt_ids[-(max_length - len(target_ids)):] if max_length > len(target_ids) else prompt_ids[-1:]
    input_ids = prompt_ids + target_ids
    labels = [IGNORE] * len(prompt_ids) + target_ids
    if aligned is None:
        return Encoded(input_ids, labels, None, None)
    ids, lps = aligned
    pad: list[list[Any]] = [[] for _ in prompt_ids]
    return Encoded(input_ids, labels, pad + ids[: len(target_ids)], pad + lps[: len(target_ids)])
