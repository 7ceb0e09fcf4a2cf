"""A tiny student built entirely in code (no model hub): a BPE tokenizer trained on a corpus and a
small randomly initialised Llama that vLLM can serve and PEFT can adapt.

The tokenizer is BPE over a full character alphabet with byte fallback, deliberately not byte-level
(byte-level pieces come back from vLLM as partial UTF-8 and merge top-logprob keys) and not WordLevel
(whose unseen words all become ``<unk>``, so no re-distillation could teach drifted inputs). Tokens are
literal substrings (spaces included), so ``decode([id])`` -- what vLLM reports as a top-logprob key --
is exactly the text the token stands for.
"""
from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<s>", "</s>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (UNK, PAD, BOS, EOS, *ROLE_TOKENS)

# Each turn is <|role|>content</s>; generation starts right after <|assistant|> and stops at </s>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{{ '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# GPT-2-style pieces over characters: words, numbers and punctuation runs keep one leading space
# (" billing", " 42", "?"); other whitespace runs stay separate pieces.
_SPLIT = Regex(r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")


def character_alphabet() -> list[str]:
    """Printable ASCII plus Latin-1 and common typographic marks; anything else falls back to bytes."""
    chars = set(string.printable) - set("\x0b\x0c")
    chars.update(chr(c) for c in range(0xA0, 0x100))
    chars.update("‘’“”–—…€•™")
    return sorted(chars)


def build_tokenizer(
    corpus_texts: Iterable[str],
    vocab_size: int = 1536,
    *,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a character-alphabet BPE (with byte fallback for anything outside the alphabet)."""
    bpe = models.BPE(unk_token=UNK, byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Split(_SPLIT, behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    alphabet = character_alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, len(SPECIAL_TOKENS) + len(byte_tokens) + len(alphabet) + 1),
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *byte_tokens],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_student(
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 512,
    head_init_scale: float = 10.0,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised LlamaForCausalLM plus the tokenizer to ``out_dir`` (safetensors)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    # At the default init (std 0.02) the output head caps every logit near 2.5, so no adapter on a fresh
    # student can express a confident answer (LoRA never touches lm_head); a wider head lets it.
    with torch.no_grad():
        model.lm_head.weight.mul_(head_init_scale)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Older readers (and vLLM's chat path) look for the template in its own file too.
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out


def parameter_count(model_dir: str | Path) -> int:
    """Number of parameters stored in a model dir's safetensors files (no model instantiation)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                shape = st.get_slice(name).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def read_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
