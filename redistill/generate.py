"""Greedy generation with transformers in the job process (the gate's view of a candidate)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from redistill.encode import prompt_text
from redistill.records import Example
from redistill.train import DTYPES

DEFAULT_MAX_NEW_TOKENS = 32


class LocalGenerator:
    """Loads the base student once; applies an adapter (or none = the base model) per call."""

    def __init__(self, base_dir: Path, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 16,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.base_dir = base_dir
        self.device = device
        self.dtype = DTYPES[dtype]
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        self.tokenizer.padding_side = "left"  # generation continues from the right edge
        self._base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=self.dtype).to(device).eval()

    def _model(self, adapter: Path | None) -> Any:
        if adapter is None:
            return self._base
        from peft import PeftModel

        if (adapter / "adapter_config.json").exists():
            return PeftModel.from_pretrained(self._base, str(adapter)).to(self.device).eval()
        from transformers import AutoModelForCausalLM  # a full fine-tune directory

        return AutoModelForCausalLM.from_pretrained(adapter, dtype=self.dtype).to(self.device).eval()

    @torch.no_grad()
    def generate(self, adapter: Path | None, examples: Sequence[Example]) -> list[str]:
        model = self._model(adapter)
        tok = self.tokenizer
        out: list[str] = []
        try:
            for start in range(0, len(examples), self.batch_size):
                chunk = examples[start:start + self.batch_size]
                texts = [prompt_text(tok, e.request) for e in chunk]
                enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True).to(self.device)
                limit = max(min(int(e.request.get("max_tokens") or self.max_new_tokens), self.max_new_tokens)
                            for e in chunk)
                gen = model.generate(**enc, max_new_tokens=limit, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                for row in gen[:, enc["input_ids"].shape[1]:]:
                    out.append(tok.decode(row, skip_special_tokens=True))
        finally:
            if adapter is not None and hasattr(model, "unload"):
                model.unload()  # strips the LoRA layers so the shared base stays clean for the next call
        return out
